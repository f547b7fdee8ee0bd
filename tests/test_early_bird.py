"""Early-Bird tickets: masks, distances and the FIFO rule by hand, the L1 step, the study."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import early_bird_mlp_digits
from ltjax import models
from ltjax.core import masking, rng
from ltjax.engine import executor as executor_lib
from ltjax.engine import optim
from ltjax.io import checkpoint, results
from ltjax.methods import early_bird
from ltjax.studies import common
from ltjax.studies import early_bird as study
from ltjax.studies.spec import RunSpec


def test_channel_keep_prunes_exact_counts_with_ties_by_position():
    gammas = np.array([0.5, -0.1, 0.1, 0.9, 0.1, 0.0])
    np.testing.assert_array_equal(early_bird.channel_keep(gammas, 0.5),
                                  [True, False, False, True, True, False])
    for ratio in (0.1, 0.3, 0.7, 0.99):
        keep = early_bird.channel_keep(np.random.default_rng(0).random(1000), ratio)
        assert (~keep).sum() == int(1000 * ratio)
    with pytest.raises(ValueError, match="ratio"):
        early_bird.channel_keep(gammas, 1.0)


def test_distances_and_the_fifo_rule_on_hand_made_sequences():
    a = np.array([True] * 10)
    b = a.copy()
    b[0] = False                                  # distance exactly 0.1 from a
    b2 = a.copy()
    b2[:2] = False                                # distance 0.2 from a
    c = a.copy()
    c[:5] = False
    assert early_bird.mask_distance(a, a) == 0.0
    assert early_bird.mask_distance(a, ~a) == 1.0
    assert early_bird.mask_distance(a, b) == 0.1  # 1/10, correctly rounded: the float 0.1
    assert early_bird.emergence_epoch([a, a, a, a]) is None          # window not full
    assert early_bird.emergence_epoch([a, a, a, a, a]) == 4
    assert early_bird.emergence_epoch([c, a, a, a, a]) is None       # c still in the window
    assert early_bird.emergence_epoch([c, a, a, a, a, a]) == 5
    # The reference (main.py:EarlyBird.early_bird_emerge) fails only on a distance > 0.1:
    # a distance of exactly 0.1 has emerged.
    assert early_bird.emergence_epoch([b, a, a, a, a]) == 4
    assert early_bird.emergence_epoch([a, a, a, a, b]) == 4
    assert early_bird.emergence_epoch([b2, a, a, a, a]) is None      # 0.2 > 0.1
    assert early_bird.emergence_epoch([b2, a, a, a, a], threshold=0.2) == 4
    assert early_bird.emergence_epoch([b, a, a, a, a], threshold=0.09) is None
    assert early_bird.emergence_epoch([b, a, a, a, a, a], threshold=0.0) == 5  # identical
    assert early_bird.emergence_epoch([c, c, a, a], window=2) == 1


def _mlp_bn(widths=(6, 5), num_classes=3):
    return models.create("mlp_bn", widths=widths, num_classes=num_classes)


def test_channel_masked_net_equals_the_net_with_those_channels_zeroed():
    model = _mlp_bn()
    params, stats = models.init(model, jax.random.key(0), (4,))
    params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(1), x.shape),
                          params)
    stats = jax.tree.map(lambda x: x + 0.5, stats)
    keep = np.array([True, False, True, True, False, True, False, False, True, True, True])
    masks = early_bird.masks_from_channels(params, keep)
    assert int(sum(np.sum(~np.asarray(m)) for m in jax.tree.leaves(masks))) == 2 * (~keep).sum()
    x = jax.random.normal(jax.random.key(2), (7, 4))
    got = model.apply({"params": masking.apply(params, masks), "batch_stats": stats}, x,
                      train=False)
    h = np.asarray(x, np.float64)
    offset = 0
    for i, width in enumerate((6, 5)):
        d, bn, st = params[f"Dense_{i}"], params[f"BatchNorm_{i}"], stats[f"BatchNorm_{i}"]
        h = h @ np.asarray(d["kernel"]) + np.asarray(d["bias"])
        h = (h - np.asarray(st["mean"])) / np.sqrt(np.asarray(st["var"]) + 1e-5)
        h = h * np.asarray(bn["scale"]) + np.asarray(bn["bias"])
        h = np.maximum(h, 0) * keep[offset:offset + width]  # the pruned channels zeroed
        offset += width
    want = h @ np.asarray(params["Dense_2"]["kernel"]) + np.asarray(params["Dense_2"]["bias"])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_one_sgd_step_adds_the_l1_subgradient(digits):
    model = _mlp_bn(widths=(8,), num_classes=10)
    recipe = optim.Recipe(optimizer="sgd", learning_rate=0.5, batch_size=32)
    keys = rng.init_and_noise(rng.replicate_keys(0, 1))
    gammas = []
    for reparam in (None, early_bird.slimming(0.01)):
        executor = executor_lib.Executor(model, digits, recipe, reparam=reparam)
        state, _ = executor.train(executor.init(keys[0]), None, keys[1], num_steps=1)
        gammas.append(np.asarray(state.params["BatchNorm_0"]["scale"][0], np.float64))
    # gamma' = gamma - lr (g + s sign(gamma)), gamma = 1 at init: the two runs differ by lr * s.
    np.testing.assert_allclose(gammas[1] - gammas[0], -0.5 * 0.01, rtol=1e-4)


@pytest.fixture(scope="module")
def digits():
    from ltjax.io import data
    return data.load("digits")


def _config(**overrides):
    config = early_bird_mlp_digits.get_config("quick")
    config.model_kwargs.widths = (16, 16)
    config.training_steps = "6ep"
    config.eval_every = "6ep"
    config.recipe.lr_drops = ("4ep",)
    config.ratios = (0.5,)
    config.window = 3
    config.threshold = 0.2
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_study_masks_emergence_retrain_and_rerun(tmp_path, sealed):
    config = _config()
    study.run_early_bird(sealed(config, study.EarlyBirdSpec), tmp_path, progress=False)
    first = {n: (tmp_path / n).read_text() for n in ("results.csv", "mask_distance.csv")}
    rows = results.read_csv(tmp_path / "results.csv")
    run_spec = RunSpec.from_config(config, progress=False)
    dataset, recipe, executor = run_spec.dataset, run_spec.recipe, run_spec.executor
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("gammas_*")) == [
        f"gammas_{e:04d}" for e in range(7)]

    def never():
        raise AssertionError("the study did not checkpoint these gammas")

    stored = {e: common.computed_once(tmp_path, f"gammas_{e:04d}", never,
                                      like=jax.ShapeDtypeStruct((2, 32), np.float32))
              for e in range(7)}
    gammas = {(e, rep): stored[e][rep] for e in range(7) for rep in range(2)}
    # Epoch 0 is the init's |gamma|, the last epoch the search's final weights'.
    slim_search = executor_lib.Executor(executor.model, dataset, recipe,
                                        reparam=early_bird.slimming(config.slimming))
    init = slim_search.init(rng.init_and_noise(rng.replicate_keys(config.seed, 2))[0])
    with checkpoint.Checkpointer(tmp_path / "checkpoints" / "search") as ckpt:
        searched, _, _ = ckpt.restore(ckpt.steps()[-1], like_state=init)
    for rep in range(2):
        for e, state in ((0, init), (6, searched)):
            expected = np.concatenate([np.abs(np.asarray(
                state.params[f"BatchNorm_{i}"]["scale"][rep])) for i in range(2)])
            np.testing.assert_array_equal(np.abs(gammas[(e, rep)]), expected)
    keeps = {}
    for rep in range(2):
        # An independent FIFO: prune the floor(N p) smallest |gamma|, ties by index.
        history = []
        for e in range(7):
            g = np.abs(gammas[(e, rep)])
            order = sorted(range(g.size), key=lambda i: (g[i], i))
            keep = np.ones(g.size, bool)
            keep[order[: int(g.size * 0.5)]] = False
            history.append(keep)
        eb = next((e for e in range(2, 7) if all(
            np.mean(history[e] != history[j]) <= 0.2 for j in (e - 1, e - 2))), None)
        (row,) = [r for r in rows if int(r["replicate"]) == rep]
        assert (row["eb_epoch"] == "" and eb is None) or int(row["eb_epoch"]) == eb
        keeps[rep] = history[eb if eb is not None else 6]
        assert float(row["kept_channels"]) == pytest.approx(keeps[rep].mean())
        assert float(row["overlap_with_final_mask"]) == pytest.approx(
            np.mean(keeps[rep] == history[6]))
    # The retrained tickets hold their pruned channels' gamma and beta at exactly zero.
    slim = executor_lib.Executor(executor.model, dataset, recipe,
                                 reparam=early_bird.slimming(config.slimming))
    like = slim.init(rng.replicate_keys(0, 2))
    like_masks = jax.tree.map(lambda x: jnp.ones(x.shape, bool), like.params)
    with checkpoint.Checkpointer(tmp_path / "checkpoints" / "retrain") as ckpt:
        final, masks, _ = ckpt.restore(ckpt.steps()[-1], like_state=like, like_masks=like_masks)
    for rep in range(2):
        scales = np.concatenate([np.asarray(final.params[f"BatchNorm_{i}"]["scale"][rep])
                                 for i in range(2)])
        biases = np.concatenate([np.asarray(final.params[f"BatchNorm_{i}"]["bias"][rep])
                                 for i in range(2)])
        assert (scales[~keeps[rep]] == 0).all() and (biases[~keeps[rep]] == 0).all()
        assert (scales[keeps[rep]] != 0).all()
    study.run_early_bird(config, tmp_path, progress=False)  # finished: same files
    assert {n: (tmp_path / n).read_text() for n in first} == first


def test_resumed_retrain_trains_the_remaining_steps_at_the_schedules_rates(tmp_path, monkeypatch,
                                                                        on_training):
    # Every training call (host side: its members' step and length) and, inside it, every
    # learning rate the step function computes (a debug callback on optim.learning_rate_at).
    calls, current = [], {}
    real_rate = optim.learning_rate_at

    def train(call):
        steps = np.asarray(jax.device_get(call.state.step)).reshape(-1)
        current["pairs"] = pairs = set()
        calls.append((call.masks is not None, steps, call.num_steps, pairs))

    def rate(recipe, step, peak=None):
        lr = real_rate(recipe, step, peak)
        jax.debug.callback(lambda s, v: current["pairs"].update(zip(
            np.asarray(s).reshape(-1).tolist(), np.asarray(v).reshape(-1).tolist(), strict=True)),
            step, lr)
        return lr

    on_training(train)
    monkeypatch.setattr(optim, "learning_rate_at", rate)
    config = _config(retrain="resume_schedule", ratios=(0.3, 0.5))
    study.run_early_bird(config, tmp_path, progress=False)
    per_epoch = len(common.build_dataset(config).train) // config.recipe.batch_size
    end, drop = 6 * per_epoch, 4 * per_epoch
    rows = results.read_csv(tmp_path / "results.csv")
    starts = sorted(int(r["eb_epoch"]) * per_epoch if r["eb_epoch"] != "" else 0 for r in rows)
    assert any(starts), "no ticket emerged: the test would not see a resumed schedule"
    retrain = [c for c in calls if c[0]]
    # Counting steps: each ticket trains exactly the steps from its Early-Bird epoch to the end.
    trained = sorted(s for _, steps, n, _ in retrain for first in steps
                     for s in range(int(first), int(first) + n))
    assert trained == sorted(s for start in starts for s in range(start, end))
    # The rates: the schedule's closed form (the peak, x0.1 from epoch 4) at exactly those steps.
    peak = config.recipe.learning_rate
    for _, steps, n, pairs in retrain:
        assert {s for s, _ in pairs} == set(range(int(steps[0]), int(steps[0]) + n))
        for s, lr in pairs:
            assert lr == pytest.approx(peak * (0.1 if s >= drop else 1.0), rel=1e-6)


def test_retrain_start_epoch_and_an_unknown_mode():
    assert study.retrain_start_epoch(6, "resume_schedule") == 6
    assert study.retrain_start_epoch(None, "resume_schedule") == 0
    assert study.retrain_start_epoch(6, "scratch") == 0
    with pytest.raises(ValueError, match="mode"):
        study.retrain_start_epoch(6, "continue")


@pytest.mark.parametrize("overrides, match", [
    ({"ratios": (0.0,)}, "config.ratios"),
    ({"ratios": (0.3, 0.3)}, "config.ratios"),
    ({"window": 1}, "config.window"),
    ({"slimming": -1.0}, "strength"),
    ({"retrain": "continue"}, "config.retrain"),
    ({"threshold": 1.5}, "config.threshold"),
    ({"model": "mlp", "model_kwargs": {"widths": (8,)}}, "BatchNorm"),
])
def test_bad_config_is_refused_before_any_work(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        study.run_early_bird(_config(**overrides), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
