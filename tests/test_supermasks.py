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


_NP_CRITERIA = {
    "large_final": lambda i, f: np.abs(f),
    "small_final": lambda i, f: -np.abs(f),
    "large_init": lambda i, f: np.abs(i),
    "small_init": lambda i, f: -np.abs(i),
    "magnitude_increase": lambda i, f: np.abs(f) - np.abs(i),
    "movement": lambda i, f: np.abs(f - i),
    "large_final_same_sign": lambda i, f: np.where(np.sign(i) == np.sign(f), np.abs(f), 0),
    "large_final_diff_sign": lambda i, f: np.where(np.sign(i) != np.sign(f), np.abs(f), 0),
    "magnitude_increase_same_sign": lambda i, f: np.where(np.sign(i) == np.sign(f),
                                                          np.abs(f) - np.abs(i), 0),
    "magnitude_increase_diff_sign": lambda i, f: np.where(np.sign(i) != np.sign(f),
                                                          np.abs(f) - np.abs(i), 0),
}


@pytest.mark.parametrize("criterion", sorted(supermasks.MASK_CRITERIA))
def test_zhou_criteria_keep_each_layers_top_scores(criterion):
    init, final = _params(jax.random.key(0)), _params(jax.random.key(1))
    selection = masking.prunable(init)
    masks = supermasks.criterion_masks(criterion, init, final, selection, density=0.25)
    for name in ("Dense_0", "Dense_1"):
        i, f = (np.asarray(t[name]["kernel"], np.float64) for t in (init, final))
        scores = _NP_CRITERIA[criterion](i, f)
        kept = round(0.25 * scores.size)
        mask = np.asarray(masks[name]["kernel"])
        assert mask.sum() == kept
        assert scores[mask].min() >= scores[~mask].max()
    assert np.asarray(masks["Dense_1"]["bias"]).all()


def test_zhou_study_evaluates_the_masked_untrained_init(tmp_path):
    from experiments.configs import imp_lenet_digits
    from ltjax.studies import imp

    imp_config = imp_lenet_digits.get_config("quick")
    imp_config.model, imp_config.model_kwargs = "mlp", {"widths": (16,)}
    imp_config.levels, imp_config.controls = 0, ()
    imp.run_imp(imp_config, tmp_path / "imp", progress=False)
    config = imp_lenet_digits.get_config("quick")
    config.model, config.model_kwargs = "mlp", {"widths": (16,)}
    config.imp_workdir = str(tmp_path / "imp")
    config.criteria = ("large_final_same_sign",)
    config.densities = (0.3,)
    config.weight_inits = ("init", "signed_constant")
    supermask.run_zhou(config, tmp_path / "zhou", progress=False)
    rows = [r for r in results.read_csv(tmp_path / "zhou" / "results.csv")
            if r["replicate"] not in ("mean", "std")]
    _, dataset, _, executor = common.setup(config, tmp_path / "zhou")
    init_keys = rng.init_and_noise(rng.replicate_keys(config.seed, 2))[0]
    start = executor.init(init_keys)
    with checkpoint.Checkpointer(tmp_path / "imp" / "checkpoints" / "level_00") as ckpt:
        final, _, _ = ckpt.restore(ckpt.steps()[-1], like_state=start)
    x = np.asarray(dataset.test.x, np.float64).reshape(len(dataset.test.y), -1)
    x = (x - np.asarray(dataset.mean, np.float64).reshape(-1)) / np.asarray(
        dataset.std, np.float64).reshape(-1)
    for rep in range(2):
        init = jax.tree.map(lambda t, r=rep: np.asarray(t[r], np.float64), start.params)
        trained = jax.tree.map(lambda t, r=rep: np.asarray(t[r], np.float64), final.params)
        for weight_init in ("init", "signed_constant"):
            h = x
            for layer in ("Dense_0", "Dense_1"):
                i, f = init[layer]["kernel"], trained[layer]["kernel"]
                score = np.where(np.sign(i) == np.sign(f), np.abs(f), 0.0).ravel()
                keep = np.zeros(score.size, bool)
                keep[np.argsort(-score, kind="stable")[: round(0.3 * score.size)]] = True
                w = i if weight_init == "init" else np.sign(i) * np.sqrt(2 / i.shape[0])
                h = h @ np.where(keep.reshape(i.shape), w, 0.0) + init[layer]["bias"]
                if layer == "Dense_0":
                    h = np.maximum(h, 0)
            (row,) = [r for r in rows if r["method"] == "zhou" and int(r["replicate"]) == rep
                      and r["weight_init"] == weight_init]
            accuracy = np.mean(h.argmax(1) == np.asarray(dataset.test.y))
            assert float(row["test_accuracy"]) == pytest.approx(accuracy, abs=1.5 / len(h))
