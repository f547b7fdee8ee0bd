"""The grokking-tickets study end to end from its ``:quick`` config.

The table is checked against the segments' own evaluations in
``metrics.jsonl`` (read here independently of the study), the masks' kept
counts against the exact target, the memorised ticket's source step against
the dense run's curve, and a rerun against the first (nothing trains again).
"""

import json

import jax
import numpy as np
import pytest
from conftest import sealed_after_spec

from experiments.configs import grokking_tickets_transformer
from ltjax import models
from ltjax.core import masking, topk
from ltjax.io import results
from ltjax.studies import grokking_tickets


def _first(records, split, threshold):
    steps = sorted(r["step"] for r in records if r["split"] == split
                   and r["accuracy"] >= threshold)
    return steps[0] if steps else None


def _member(records, row):
    if row["arm"] == "dense":
        return [r for r in records if r.get("arm") == "dense"
                and r["replicate"] == row["replicate"]]
    return [r for r in records if r.get("stage") == "tickets" and r["arm"] == row["arm"]
            and r["target_density"] == row["density"] and r["replicate"] == row["replicate"]]


def _value(text):
    return None if text in ("", None) else float(text)


END = 200  # the quick config's 300 steps cut to 200


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("grok")
    config = grokking_tickets_transformer.get_config("quick")
    config.training_steps = f"{END}it"  # the dense nets memorise by step 140
    with sealed_after_spec(config, grokking_tickets.GrokkingSpec) as sealed:
        summary = grokking_tickets.run_grokking_tickets(sealed, workdir, progress=False)
    return config, workdir, summary


def test_table_matches_the_segments_own_evaluations(quick_run):
    config, workdir, _ = quick_run
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rows = results.read_csv(workdir / "results.csv")
    num = config.num_replicates
    assert [(r["arm"], _value(r["density"])) for r in rows[::num]] == [
        ("dense", 1.0), ("generalised", 0.4), ("memorised", 0.4), ("random", 0.4)]
    assert len(rows) == 4 * num
    for row in rows:
        row = {**row, "density": _value(row["density"]), "replicate": int(row["replicate"])}
        mine = _member(records, row)
        assert {r["step"] for r in mine} == set(range(0, END + 1, 20))
        assert _value(row["steps_to_train_100"]) == _first(mine, "train", 1.0)
        assert _value(row["steps_to_test_95"]) == _first(mine, "test", 0.95)
        assert int(row["reached_test_95"]) == (_first(mine, "test", 0.95) is not None)
        final = [r for r in mine if r["step"] == END and r["split"] == "test"]
        assert _value(row["final_test_accuracy"]) == pytest.approx(final[0]["accuracy"],
                                                                   abs=1e-6)


def test_masks_keep_exactly_the_target_count_and_the_memorised_source_step(quick_run):
    config, workdir, summary = quick_run
    rows = results.read_csv(workdir / "results.csv")
    model = models.create(config.model, num_classes=23, **config.model_kwargs)
    params = models.init(model, jax.random.key(0), (3,))[0]
    selection = masking.prunable(params)
    total = masking.num_prunable(params, selection)
    exact = topk.count(total, 0.4, rounding="half_even") / total
    for row in rows:
        want = 1.0 if row["arm"] == "dense" else exact
        assert _value(row["actual_density"]) == want, row
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    dense = {int(r["replicate"]): _value(r["steps_to_train_100"]) for r in rows
             if r["arm"] == "dense"}
    assert summary["memorised_steps"] == [dense[r] for r in range(config.num_replicates)]
    for row in (r for r in rows if r["arm"] == "memorised"):
        step, rep = _value(row["source_step"]), int(row["replicate"])
        assert step == dense[rep] is not None
        # The re-trained memorising weights are the dense run's own at that step.
        source = [r for r in records if r.get("arm") == "memorised_source"
                  and r["replicate"] == rep and r["step"] == step and r["split"] == "train"]
        at = [r for r in records if r.get("arm") == "dense" and r["replicate"] == rep
              and r["step"] == step and r["split"] == "train"]
        assert source[0]["accuracy"] == pytest.approx(at[0]["accuracy"], abs=1e-6) == 1.0
    for row in (r for r in rows if r["arm"] == "generalised"):
        assert _value(row["source_step"]) == END


def test_rerun_skips_training(quick_run, on_training):
    config, workdir, summary = quick_run
    log = (workdir / "metrics.jsonl").read_text()
    table = (workdir / "results.csv").read_text()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run trained again")

    on_training(refuse)
    again = grokking_tickets.run_grokking_tickets(config, workdir, progress=False)
    assert (workdir / "metrics.jsonl").read_text() == log
    assert (workdir / "results.csv").read_text() == table
    assert again == summary
    assert (workdir / "plots" / "grokking_tickets.png").stat().st_size > 0


def test_bad_config_is_refused_before_the_workdir(tmp_path):
    config = grokking_tickets_transformer.get_config("quick")
    config.densities = (1.5,)
    with pytest.raises(ValueError, match="densities"):
        grokking_tickets.run_grokking_tickets(config, tmp_path / "w", progress=False)
    config = grokking_tickets_transformer.get_config("quick")
    config.dataset = "digits"
    with pytest.raises(ValueError, match="modular arithmetic"):
        grokking_tickets.run_grokking_tickets(config, tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()


def test_one_hot_pairs_encode_a_and_b_and_drop_the_equals_token():
    from ltjax.io import data
    from ltjax.studies import grokking_tickets

    tokens = data.modular_arithmetic(op="add", p=5, train_share=0.4, seed=0)
    coded = grokking_tickets.one_hot_pairs(tokens)
    for before, after in ((tokens.train, coded.train), (tokens.test, coded.test)):
        x = np.asarray(before.x)
        want = np.zeros((len(x), 10), np.float32)
        want[np.arange(len(x)), x[:, 0]] = 1.0
        want[np.arange(len(x)), 5 + x[:, 1]] = 1.0
        np.testing.assert_array_equal(np.asarray(after.x), want)
        np.testing.assert_array_equal(np.asarray(after.y), np.asarray(before.y))
