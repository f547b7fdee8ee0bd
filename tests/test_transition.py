"""The instability transition: the parts' composition, the tables against their sources."""

import itertools
import shutil

import ml_collections
import numpy as np
import pytest

from experiments.configs import transition_lenet_digits
from ltjax.io import results
from ltjax.studies import imp_runs, transition


def _config(**overrides):
    config = transition_lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (32,)}
    config.training_steps = "3ep"
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _final_copies(folder, end):
    """Every copy's final test accuracy, from the study's own log: ``{(k, member): acc}``."""
    return {(r["k"], r["replicate"]): r["accuracy"]
            for r in results.MetricsLog(folder / "metrics.jsonl").read()
            if r["branch"] == "copies" and r["step"] == end and r["split"] == "test"}


def test_transition_end_to_end(tmp_path, drawn, sealed):
    config = _config()
    summary = transition.run_transition(sealed(config, transition.TransitionSpec), tmp_path,
                                        progress=False)
    end, copies = 3 * (1437 // 60), config.num_copies  # 3 epochs of digits at batch 60

    # Each part ran in its own folder with its own study: the dense sweep, one IMP run per
    # k (rewound to that k, with the random pruning control), the two subnetwork sweeps.
    for k_text in config.imp_rewind_steps:
        imp_config = results.read_json(tmp_path / f"imp_{k_text}" / "config.json")
        assert imp_config["rewind_step"] == k_text
        assert imp_config["controls"] == ["random_layerwise"]
        assert "num_copies" not in imp_config and "matching_within" not in imp_config
    sub = results.read_json(tmp_path / "random_subnetworks" / "config.json")
    assert sub["imp_branch"] == "random_layerwise" and sub["imp_level"] == 2
    assert sub["imp_workdir"] == "0it={workdir}/../imp_0it,23it={workdir}/../imp_1ep"
    assert imp_runs.imp_workdirs(ml_collections.ConfigDict(sub), [0, 23], 23,
                                  tmp_path / "random_subnetworks") == {
        0: str(tmp_path / "imp_0it"), 23: str(tmp_path / "imp_1ep")}

    # The tables are the parts' own results, by kind.
    for kind, folder in (("dense", "dense"), ("imp", "imp_subnetworks"),
                         ("random", "random_subnetworks")):
        assert (results.read_csv(tmp_path / f"{kind}_results.csv")
                == results.read_csv(tmp_path / folder / "results.csv"))

    # accuracy.csv: every trained copy's final test accuracy, against the dense accuracy
    # (the dense copies trained from k = 0), with the subnetworks' instability per replicate.
    dense_finals = _final_copies(tmp_path / "dense", end)
    dense = np.mean([acc for (k, _), acc in dense_finals.items() if k == 0])
    assert summary["dense_accuracy"] == pytest.approx(dense, abs=1e-12)
    per_copy = results.read_csv(tmp_path / "accuracy.csv")  # tidy: one row per copy
    means = results.read_csv(tmp_path / "accuracy_summary.csv")
    assert len(per_copy) == 2 * 2 * config.num_replicates * copies  # kinds x k x S x C
    for kind, folder in (("imp", "imp_subnetworks"), ("random", "random_subnetworks")):
        finals = _final_copies(tmp_path / folder, end)
        pairs = [r for r in results.read_csv(tmp_path / folder / "results.csv")
                 if r["split"] == "test"]
        imp_rows = {k: results.read_csv(tmp_path / f"imp_{t}" / "results.csv")
                    for k, t in ((0, "0it"), (23, "1ep"))}
        mine = [r for r in per_copy if r["kind"] == kind]
        assert len(mine) == len(finals)
        for r in mine:
            k, rep, c = int(r["k"]), int(r["replicate"]), int(r["copy"])
            accuracy = finals[k, rep * copies + c]
            assert float(r["test_accuracy"]) == pytest.approx(accuracy, abs=1e-7)
            assert r["matching"] == str(accuracy >= dense - config.matching_within)
            barrier = np.mean([float(p["instability"]) for p in pairs
                               if (int(p["k"]), int(p["replicate"])) == (k, rep)])
            assert float(r["instability"]) == pytest.approx(barrier, abs=1e-7)
            # The subnetwork is the IMP run's level-2 member of that branch, at its density.
            branch = {"imp": "imp", "random": "random_layerwise"}[kind]
            density = [x["density"] for x in imp_rows[k] if x["level"] == "2"
                       and x["branch"] == branch and x["replicate"] == str(rep)]
            assert float(r["density"]) == pytest.approx(float(density[0]), abs=1e-6)
        for k in (0, 23):
            got = [r for r in means if (r["kind"], r["k"], r["stat"]) == (kind, str(k), "mean")]
            values = [float(r["test_accuracy"]) for r in mine if r["k"] == str(k)]
            assert float(got[0]["test_accuracy"]) == pytest.approx(np.mean(values), abs=1e-9)
            assert summary["accuracy"][kind][k] == pytest.approx(np.mean(values), abs=1e-9)

    # mask_distance.csv: the level-2 IMP masks of the runs rewound to 0 and to 23, by NumPy.
    like = {"Dense_0": {"kernel": np.ones((1, 64, 32), bool), "bias": np.ones((1, 32), bool)},
            "Dense_1": {"kernel": np.ones((1, 32, 10), bool), "bias": np.ones((1, 10), bool)}}
    masks = [imp_runs.load_imp_masks(tmp_path / f"imp_{t}", 2, like) for t in ("0it", "1ep")]
    distances = results.read_csv(tmp_path / "mask_distance.csv")
    assert len(distances) == config.num_replicates
    for row in distances:
        rep = int(row["replicate"])
        a = np.concatenate([np.asarray(m[layer]["kernel"][rep]).ravel()
                            for m, layer in itertools.product(masks[:1], ("Dense_0", "Dense_1"))])
        b = np.concatenate([np.asarray(m[layer]["kernel"][rep]).ravel()
                            for m, layer in itertools.product(masks[1:], ("Dense_0", "Dense_1"))])
        assert (row["k_a"], row["k_b"]) == ("0", "23")
        assert float(row["hamming"]) == np.sum(a != b)
        assert float(row["hamming_share"]) == pytest.approx(np.sum(a != b) / a.size)
        assert float(row["iou"]) == pytest.approx(np.sum(a & b) / np.sum(a | b))
    assert any(float(row["hamming"]) > 0 for row in distances)  # rewinding changes the mask

    # The figure draws the tables' numbers.
    lines = drawn["transition.png"]
    for kind in ("dense", "imp", "random"):
        means = summary["instability"][kind]
        np.testing.assert_allclose(lines[0, kind][1], [100 * means[k] for k in sorted(means)],
                                   rtol=1e-6)
    np.testing.assert_allclose(lines[1, "imp"][1], [100 * summary["accuracy"]["imp"][k]
                                                    for k in (0, 23)], rtol=1e-6)

    # Run again: every part is finished and read back, the same summary and tables.
    before = {name: (tmp_path / name).read_bytes() for name in (
        "accuracy.csv", "mask_distance.csv", "dense_results.csv", "imp_results.csv")}
    assert transition.run_transition(config, tmp_path, progress=False) == summary
    assert before == {name: (tmp_path / name).read_bytes() for name in before}

    # Moved elsewhere, the workdir resumes as finished: its parts name their IMP runs
    # relative to themselves, not by absolute path.
    moved = tmp_path.parent / f"{tmp_path.name}_moved"
    shutil.copytree(tmp_path, moved)
    shutil.rmtree(tmp_path)
    assert transition.run_transition(config, moved, progress=False) == summary
    assert before == {name: (moved / name).read_bytes() for name in before}


@pytest.mark.parametrize("overrides, message", [
    ({"matching_within": 0.0}, "matching_within must be an accuracy share"),
    ({"levels": 0}, "levels must be an int >= 1"),
    ({"imp_rewind_steps": ()}, "imp_rewind_steps must list"),
    ({"imp_rewind_steps": ("0it", "3ep")}, r"'3ep' \(69 steps\) must be in \[0, training_steps"),
    ({"imp_rewind_steps": ("0it", "0ep")}, "k = 0 steps twice"),
    ({"imp_workdir": "runs/imp"}, "makes its own IMP runs"),
    ({"num_copies": 1}, "num_copies must be >= 2"),
    ({"sgd_noise": "loud"}, "sgd_noise"),
])
def test_bad_config_is_refused_before_any_folder(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        transition.run_transition(_config(**overrides), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
