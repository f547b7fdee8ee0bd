"""The IMP study end to end on digits: levels, controls, outputs, resume after a kill."""

import math

import jax
import numpy as np
import pytest

from experiments.configs import imp_lenet_digits
from ltjax.core import rng, tree
from ltjax.engine import executor as executor_lib
from ltjax.io import data, results
from ltjax.studies import common, imp, imp_runs
from ltjax.studies.spec import RunSpec


def _config(**overrides):
    config = imp_lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (64, 32)}
    config.controls = ("reinit", "oneshot")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _check_fresh_noise(config, seen) -> None:
    """Level 0 continues the dense run's noise; every (level >= 1, branch) has its own."""
    base = rng.init_and_noise(rng.replicate_keys(config.seed, 2))[1]
    keys = {}  # (level, branch) -> [S, 2] raw keys
    for tags, member_tags, raw in seen:
        for m, t in enumerate(member_tags or ()):
            keys.setdefault((tags["level"], t["branch"]), []).append(raw[m])
    keys = {k: np.stack(v) for k, v in keys.items()}
    assert sorted(keys) == sorted([(0, "imp")] + [(lv, b) for lv in (1, 2) for b in (
        "imp", "reinit", "random_layerwise", "random_global", "oneshot")])
    np.testing.assert_array_equal(keys[0, "imp"], np.asarray(jax.random.key_data(base)))
    raws = [tuple(v.ravel()) for v in keys.values()]
    assert len(set(raws)) == len(raws)

    def order(raw_key):  # the first epoch's batches of a member's noise key
        key = jax.random.wrap_key_data(np.asarray(raw_key, np.uint32))
        return np.asarray(data.batch_indices(rng.stream(key, "order"), 0, num_steps=18,
                                             num_examples=1137, batch_size=60))

    for (level, branch), raw in keys.items():
        if level:
            assert not np.array_equal(order(raw[0]), order(keys[0, "imp"][0])), (level, branch)
    # Replicate 0's keys do not depend on S; 'paired' hands every level the replicates' own.
    one = imp.level_noise_keys(rng.init_and_noise(rng.replicate_keys(config.seed, 1))[1], 2,
                               "reinit", "fresh")
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(one))[0], keys[2, "reinit"][0])
    assert imp.level_noise_keys(base, 2, "reinit", "paired") is base


class _Killed(Exception):
    pass


def test_imp_levels_controls_and_outputs(tmp_path, drawn, monkeypatch, sealed):
    seen = []
    original = common.train_segment

    def spy(executor, *, noise_keys, tags, member_tags=None, **kwargs):
        seen.append((tags, member_tags, np.asarray(jax.random.key_data(noise_keys))))
        return original(executor, noise_keys=noise_keys, tags=tags, member_tags=member_tags,
                        **kwargs)

    monkeypatch.setattr(common, "train_segment", spy)
    # sgd_noise='fresh' here ('paired', the default, runs in the other IMP tests).
    # small_dense (its own programs per level) runs in the learning-rate sweep test.
    config = _config(controls=imp.CONTROLS[:-1], rewind_step="1ep", sgd_noise="fresh")
    summary = imp.run_imp(sealed(config, imp.ImpSpec), tmp_path, progress=False)
    _check_fresh_noise(config, seen)
    rows = results.read_csv(tmp_path / "results.csv")
    per_rep = list(rows)
    branches = {(int(r["level"]), r["branch"]) for r in per_rep}
    assert branches == {(0, "imp")} | {(lv, b) for lv in (1, 2)
                                       for b in ("imp",) + imp.CONTROLS[:-1]}
    assert {r["replicate"] for r in per_rep} == {"0", "1"}
    # Layerwise 20 % per level, output layer 10 %: exact kept counts.
    sizes = {"Dense_0": 64 * 64, "Dense_1": 64 * 32, "Dense_2": 32 * 10}
    kept = dict(sizes)
    for level in (1, 2):
        for name in kept:
            rate = 0.1 if name == "Dense_2" else 0.2
            kept[name] -= math.ceil(rate * kept[name])
        expected = sum(kept.values()) / sum(sizes.values())
        for branch in ("imp", "reinit", "random_layerwise", "random_global", "oneshot"):
            dens = {float(r["density"]) for r in per_rep
                    if int(r["level"]) == level and r["branch"] == branch}
            assert len(dens) == 1, (level, branch)
            assert dens.pop() == pytest.approx(expected, abs=1e-6), (level, branch)
    num_test = 360  # digits' test split
    for row in per_rep:
        assert row["early_stop_step"] != ""
        # An accuracy is a count of the test examples: no padding or batch averaging.
        correct = float(row["test_accuracy"]) * num_test
        assert correct == pytest.approx(round(correct), abs=1e-3)
    dense = [float(r["test_accuracy"]) for r in per_rep if r["level"] == "0"]
    assert min(dense) > 0.5  # 4 epochs of digits learn well above chance (0.1)
    # The plot draws each branch's mean accuracy at its density, controls from the dense point.
    for branch in ("imp", "reinit"):
        xs, ys = drawn["accuracy_vs_density.png"][0, branch]
        mine = [r for r in per_rep if r["branch"] == branch or r["level"] == "0"]
        expected = {float(r["density"]): [] for r in mine}
        for r in mine:
            expected[float(r["density"])].append(float(r["test_accuracy"]))
        order = sorted(expected)
        np.testing.assert_allclose(sorted(xs), [100 * d for d in order], rtol=1e-6)
        by_x = dict(zip(xs, ys, strict=True))
        np.testing.assert_allclose([by_x[x] for x in sorted(xs)],
                                   [100 * np.mean(expected[d]) for d in order], rtol=1e-5)
    assert len(summary["rows"]) == len(branches)
    # Pretraining to the rewind step was recorded once.
    records = results.MetricsLog(tmp_path / "metrics.jsonl").read()
    assert {r["step"] for r in records if r["branch"] == "pretrain"} == {0, 18}  # 1137 // 60
    assert min(r["step"] for r in records if r["branch"] == "imp") == 18


def test_killed_imp_resumes_to_the_same_results(tmp_path, monkeypatch, on_training):
    config = _config()
    imp.run_imp(config, tmp_path / "straight", progress=False)

    calls = []

    def dies(call):
        calls.append(1)
        if len(calls) == 4:  # level 1's second interval (its first is checkpointed)
            raise _Killed

    on_training(dies)
    with pytest.raises(_Killed):
        imp.run_imp(config, tmp_path / "resumed", progress=False)
    resumed_calls = []
    on_training(lambda call: resumed_calls.append(1))
    imp.run_imp(config, tmp_path / "resumed", progress=False)
    straight_rows = results.read_csv(tmp_path / "straight" / "results.csv")
    assert results.read_csv(tmp_path / "resumed" / "results.csv") == straight_rows
    assert (results.MetricsLog(tmp_path / "resumed" / "metrics.jsonl").read()
            == results.MetricsLog(tmp_path / "straight" / "metrics.jsonl").read())
    # Finished work was not trained again: one segment per level (the ticket and its
    # controls are the members of one program), 2 calls each, 3 of 6 done before the kill.
    assert len(resumed_calls) == 2 * 3 - 3

    # Re-running a finished workdir builds no executor program (it restores each level's
    # final checkpoint onto abstract shapes) and rewrites the same results.
    def no_programs(self, key, build):
        raise AssertionError(f"a finished run built the program {key}")

    monkeypatch.setattr(executor_lib.Executor, "_program", no_programs)
    imp.run_imp(config, tmp_path / "straight", progress=False)
    assert results.read_csv(tmp_path / "straight" / "results.csv") == straight_rows


def test_imp_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="controls"):
        imp.run_imp(_config(controls=("lottery",)), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="rewind_step"):
        imp.run_imp(_config(rewind_step="10ep"), tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists()
    bad = _config()
    bad.pruning.fraction = 1.0
    with pytest.raises(ValueError, match="fraction"):
        imp.run_imp(bad, tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="sgd_noise must be one of"):
        imp.run_imp(_config(sgd_noise="random"), tmp_path / "f", progress=False)
    assert not (tmp_path / "f").exists()
    # A layer_rates pattern that matches no layer fails before any training.
    bad = _config(model_kwargs={"widths": (16,)})
    bad.pruning.layer_rates = "Dense_2:0.1"  # the default '@output' would name Dense_1
    with pytest.raises(ValueError, match="layer_rates pattern 'Dense_2' matches no prunable"):
        imp.run_imp(bad, tmp_path / "e", progress=False)
    assert not (tmp_path / "e").exists()
    with pytest.raises(ValueError, match="small_dense control needs an MLP model, got 'conv2'; "
                       "drop it with --config.controls=reinit"):
        imp.run_imp(_config(model="conv2", model_kwargs={}, controls=("reinit", "small_dense")),
                    tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()


def test_small_dense_widths_match_target():
    widths = imp.small_dense_widths((300, 100), input_size=784, num_classes=10, target=53240)
    count = 784 * widths[0] + widths[0] * widths[1] + widths[1] * 10
    assert abs(count - 53240) / 53240 < 0.01
    np.testing.assert_allclose(widths[0] / widths[1], 3.0, rtol=0.1)


def _level_states(config, workdir):
    """``{(level, lr, replicate): (params, masks)}`` of the ticket members of a swept run."""
    run_spec = RunSpec.from_config(config, progress=False)
    executor = run_spec.executor
    end = common.steps(config.training_steps, executor.steps_per_epoch)
    log = results.MetricsLog(workdir / "metrics.jsonl")
    names = {0: ["imp"], 1: ["imp", "reinit"]}
    out = {}
    for level in (0, 1):
        tags = [{"branch": n, "learning_rate": lr, "replicate": r} for n in names[level]
                for lr in (1.2e-3, 1.2e-2) for r in range(2)]
        state, masks, _ = common.finished_segment(
            executor, workdir / "checkpoints" / f"level_{level:02d}", end=end, log=log,
            member_tags=tags)
        for m, t in enumerate(tags):
            if t["branch"] == "imp":
                out[level, t["learning_rate"], t["replicate"]] = jax.device_get(
                    (tree.index(state.params, m), tree.index(masks, m)))
    return out


def _magnitude_pruned(masks, params):
    """Whether every kernel's mask keeps exactly its largest-magnitude weights of ``params``."""
    for name in params:
        w, m = np.abs(np.asarray(params[name]["kernel"])), np.asarray(masks[name]["kernel"])
        if not m.all() and w[m].min() < w[~m].max():
            return False
    return True


def test_learning_rate_sweep_members_classes_and_weight_correlation(tmp_path):
    from ltjax.methods import sanity

    base = dict(levels=1, controls=("reinit", "small_dense"))
    imp.run_imp(_config(**base), tmp_path / "plain", progress=False)
    config = _config(**base, ticket_learning_rates=(1.2e-2, 1.2e-3))
    imp.run_imp(config, tmp_path / "sweep", progress=False)
    rows = results.read_csv(tmp_path / "sweep" / "results.csv")
    plain = results.read_csv(tmp_path / "plain" / "results.csv")
    groups = {(r["level"], r["branch"], r["learning_rate"]) for r in rows}
    assert groups == {("0", "imp", "0.0012"), ("0", "imp", "0.012"), ("1", "imp", "0.0012"),
                      ("1", "imp", "0.012"), ("1", "reinit", "0.0012"), ("1", "reinit", "0.012"),
                      ("1", "small_dense", "")}
    # The recipe's learning-rate members are the plain run's members (masks from them).
    for r in plain:
        twin = [s for s in rows if (s["level"], s["branch"], s["replicate"]) ==
                (r["level"], r["branch"], r["replicate"])
                and s["learning_rate"] in ("0.0012", "")]
        assert len(twin) == 1
        assert float(twin[0]["density"]) == float(r["density"])
        assert float(twin[0]["test_loss"]) == pytest.approx(float(r["test_loss"]), rel=1e-4)
    for r in rows:
        if r["branch"] != "small_dense":
            assert 0.0 < float(r["weight_correlation"]) <= 1.0
    # Training moves weights less at the smaller learning rate (Liu et al. 2021's finding).
    dense = {lr: np.mean([float(r["weight_correlation"]) for r in rows if r["level"] == "0"
                          and r["learning_rate"] == lr]) for lr in ("0.0012", "0.012")}
    assert dense["0.0012"] > dense["0.012"]

    # The verdict is Ma et al.'s classification of exactly these accuracies.
    def acc(level, branch, lr):
        return np.array([float(r["test_accuracy"]) for r in rows if (
            r["level"], r["branch"], r["learning_rate"]) == (level, branch, lr)])

    sweep = {float(lr): {"dense": acc("0", "imp", lr), "ticket": acc("1", "imp", lr),
                         "reinit": acc("1", "reinit", lr)} for lr in ("0.0012", "0.012")}
    density = float(next(r["density"] for r in rows if r["level"] == "1"))
    # The small dense MLP has about as many weights as the level's ticket keeps.
    small = {float(r["density"]) for r in rows if r["branch"] == "small_dense"}
    assert len(small) == 1 and small.pop() == pytest.approx(density, rel=0.1)
    expected = sanity.classify_ticket(sweep, small_dense=acc("1", "small_dense", ""),
                                      sparsity=1 - density)
    (verdict,) = results.read_csv(tmp_path / "sweep" / "ticket_classes.csv")
    assert verdict["label"] == expected.label
    assert {k: verdict[k] == "True" for k in sanity.CONDITIONS} == expected.conditions

    # Each rate's ticket is pruned from that rate's own dense net (Ma et al. 2021's pipeline at
    # each rate); ticket_masks='recipe_rate' retrains the recipe rate's masks at every rate.
    recipe_config = _config(**base, ticket_learning_rates=(1.2e-2, 1.2e-3),
                            ticket_masks="recipe_rate")
    imp.run_imp(recipe_config, tmp_path / "recipe", progress=False)
    own = _level_states(config, tmp_path / "sweep")
    theirs = _level_states(recipe_config, tmp_path / "recipe")
    for lr in (1.2e-3, 1.2e-2):
        for r in range(2):
            assert _magnitude_pruned(own[1, lr, r][1], own[0, lr, r][0])
            assert _magnitude_pruned(theirs[1, lr, r][1], theirs[0, 1.2e-3, r][0])
            np.testing.assert_equal(theirs[1, lr, r][1], theirs[1, 1.2e-3, r][1])
    assert not _magnitude_pruned(own[1, 1.2e-2, 0][1], own[0, 1.2e-3, 0][0])
    like = jax.tree.map(lambda x: x[None], own[1, 1.2e-3, 0][1])
    for lr in (None, 1.2e-2):  # a study reading the run gets the recipe rate's tickets
        loaded = imp_runs.load_imp_masks(tmp_path / "sweep", 1, like, learning_rate=lr)
        np.testing.assert_equal(jax.tree.map(lambda x: x[1], loaded),
                                own[1, lr or 1.2e-3, 1][1])

    with pytest.raises(ValueError, match="must include the recipe"):
        imp.run_imp(_config(**base, ticket_learning_rates=(0.1,)), tmp_path / "a",
                    progress=False)
    with pytest.raises(ValueError, match="ticket_masks"):
        imp.run_imp(_config(**base, ticket_learning_rates=(1.2e-3,), ticket_masks="mine"),
                    tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="small_dense"):
        imp.run_imp(_config(levels=1, controls=("reinit",), ticket_learning_rates=(1.2e-3,)),
                    tmp_path / "b", progress=False)


def test_the_loading_line_says_the_split_and_compiles_only_before_the_run_finished(
        tmp_path, capsys):
    config = _config(levels=0, controls=(), training_steps="1ep", eval_every="1ep",
                     checkpoint_every="1ep")
    imp.run_imp(config, tmp_path, progress=True)
    first = capsys.readouterr().out
    assert "(1137 training examples, 300 held out for validation)" in first
    assert "compile" in first
    imp.run_imp(config, tmp_path, progress=True)  # finished: restored, nothing compiles
    again = capsys.readouterr().out
    assert "held out for validation" in again and "compile" not in again
