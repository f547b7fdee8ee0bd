"""Edge-popup supermasks: exact top-k, the straight-through gradient, frozen weights, the study."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import supermask_lenet_digits
from ltjax import checkpoint, masking, results, rng, supermasks, tree
from ltjax import executor as executor_lib
from ltjax.studies import common, supermask


def _np_top_k(values, kept):
    flat = np.asarray(values).reshape(-1)
    order = np.lexsort((np.arange(flat.size), -flat))  # largest first, ties by lower index
    mask = np.zeros(flat.size, bool)
    mask[order[:kept]] = True
    return mask.reshape(np.shape(values))


@pytest.mark.parametrize("seed", [0, 1])
def test_top_k_mask_is_exact_with_ties_against_numpy(seed):
    rng_np = np.random.default_rng(seed)
    values = rng_np.choice(np.array([0.0, 1e-30, 0.25, 0.5, 3.0, 7e5], np.float32), (37, 11))
    values = np.where(rng_np.random(values.shape) < 0.5, values,
                      rng_np.random(values.shape).astype(np.float32))
    fn = jax.jit(supermasks.top_k_mask)
    for kept in (0, 1, 5, 100, 203, 406, 407):
        got = np.asarray(fn(jnp.asarray(values), kept))
        assert got.sum() == kept
        np.testing.assert_array_equal(got, _np_top_k(values, kept))


def test_kept_count_is_decimal_exact():
    assert supermasks.kept_count(100, 0.3) == 30
    assert supermasks.kept_count(10, 0.9) == 9
    assert supermasks.kept_count(3, 0.5) == 2
    assert supermasks.kept_count(235200, 0.1) == 23520
    with pytest.raises(ValueError, match="density"):
        supermasks.kept_count(10, 0.0)


def _params(key):
    k0, k1 = jax.random.split(key)
    return {"Dense_0": {"kernel": jax.random.normal(k0, (12, 8))},
            "Dense_1": {"bias": jnp.zeros(3), "kernel": jax.random.normal(k1, (8, 3))}}


def test_signed_constant_scores_and_straight_through_gradient():
    params = _params(jax.random.key(0))
    selection = masking.prunable(params)
    r = supermasks.edge_popup(selection, density=0.5)
    scores, frozen = r.init(params, jax.random.key(1))
    for name, fan_in in (("Dense_0", 12), ("Dense_1", 8)):
        w = np.asarray(frozen["weights"][name]["kernel"])
        np.testing.assert_array_equal(np.abs(w), np.float32(np.sqrt(2.0 / fan_in)))
        np.testing.assert_array_equal(np.sign(w), np.sign(np.asarray(params[name]["kernel"])))
        s = np.asarray(scores[name]["kernel"])
        assert np.abs(s).max() <= 1 / np.sqrt(fan_in) and np.abs(s).max() > 0.5 / np.sqrt(fan_in)
    assert int(frozen["kept"]["Dense_0"]["kernel"]) == 48
    np.testing.assert_array_equal(np.asarray(frozen["weights"]["Dense_1"]["bias"]), 0.0)

    def loss(p):
        return sum(jnp.sum(jnp.sin(3.0 * x) * (i + 2)) for i, x in enumerate(jax.tree.leaves(p)))

    effective = r.apply(scores, frozen, None, train=True)
    g = jax.grad(loss)(effective)
    grads = jax.grad(lambda s: loss(r.apply(s, frozen, None, train=True)))(scores)
    for name in ("Dense_0", "Dense_1"):
        s = np.asarray(scores[name]["kernel"])
        w = np.asarray(frozen["weights"][name]["kernel"])
        want = np.sign(s) * w * np.asarray(g[name]["kernel"])
        np.testing.assert_allclose(np.asarray(grads[name]["kernel"]), want, rtol=1e-6, atol=1e-7)
        mask = _np_top_k(np.abs(s), int(frozen["kept"][name]["kernel"]))
        np.testing.assert_array_equal(np.asarray(effective[name]["kernel"]), np.where(mask, w, 0))
    np.testing.assert_array_equal(np.asarray(grads["Dense_1"]["bias"]), 0.0)


def _config(**overrides):
    config = supermask_lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (32, 16), "use_bias": False}
    config.recipe.total_steps = config.training_steps = "2ep"
    config.eval_every = "2ep"
    config.checkpoint_every = "1ep"
    config.densities = (0.2, 0.6)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_study_trains_scores_only_with_exact_masks_and_reruns(tmp_path):
    config = _config()
    supermask.run_supermask(config, tmp_path, progress=False)
    first = (tmp_path / "results.csv").read_text()
    rows = [r for r in results.read_csv(tmp_path / "results.csv")
            if r["replicate"] not in ("mean", "std")]
    assert len(rows) == 2 * 2 * 2

    _, dataset, recipe, executor = common.setup(config, tmp_path)
    selection = masking.prunable(executor.abstract_params)
    ep = executor_lib.Executor(executor.model, dataset, recipe, reparam=supermasks.edge_popup(
        selection, weight_init="kaiming_normal"))
    init_keys = rng.init_and_noise(rng.replicate_keys(config.seed, 2))[0]
    start = ep.init(init_keys[np.array([0, 1] * 4)])
    with checkpoint.Checkpointer(tmp_path / "checkpoints" / "edge_popup") as ckpt:
        final, _, meta = ckpt.restore(ckpt.steps()[-1], like_state=start)
    final, start = jax.device_get(final), jax.device_get(start)
    x = np.asarray(dataset.test.x, np.float64).reshape(len(dataset.test.y), -1)
    x = (x - np.asarray(dataset.mean, np.float64).reshape(-1)) / np.asarray(
        dataset.std, np.float64).reshape(-1)
    for m, tag in enumerate(meta["members"]):
        init = tree.index(start.frozen["weights"], m)
        weights = tree.index(final.frozen["weights"], m)
        want = (supermasks.signed_constant(init, selection)
                if tag["weight_init"] == "signed_constant" else init)
        for a, b in zip(jax.tree.leaves(weights), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # frozen, bitwise
        scores = tree.index(final.params, m)
        assert not np.array_equal(np.asarray(scores["Dense_0"]["kernel"]),
                                  np.asarray(tree.index(start.params, m)["Dense_0"]["kernel"]))
        # The network is W * top-k(|S|) with exactly ceil(density * n) kept per layer.
        h = x
        for layer in ("Dense_0", "Dense_1", "Dense_2"):
            s = np.asarray(scores[layer]["kernel"])
            kept = int(np.ceil(round(tag["density"] * s.size, 6)))
            mask = _np_top_k(np.abs(s), kept)
            assert mask.sum() == kept
            h = h @ np.where(mask, np.asarray(weights[layer]["kernel"], np.float64), 0.0)
            if layer != "Dense_2":
                h = np.maximum(h, 0)
        (row,) = [r for r in rows if float(r["density"]) == tag["density"]
                  and r["weight_init"] == tag["weight_init"]
                  and int(r["replicate"]) == tag["replicate"]]
        accuracy = np.mean(h.argmax(1) == np.asarray(dataset.test.y))
        assert float(row["test_accuracy"]) == pytest.approx(accuracy, abs=1.5 / len(h))
    assert (tmp_path / "plots" / "supermask.png").exists()

    supermask.run_supermask(config, tmp_path, progress=False)  # finished: same file
    assert (tmp_path / "results.csv").read_text() == first


@pytest.mark.parametrize("overrides, match", [
    ({"densities": (0.0, 0.5)}, "config.densities"),
    ({"densities": (0.5, 0.5)}, "repeats"),
    ({"weight_inits": ("xavier",)}, "config.weight_inits"),
])
def test_bad_config_is_refused_before_any_work(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        supermask.run_supermask(_config(**overrides), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
