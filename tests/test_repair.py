"""REPAIR: the affine math (ltjax.core.repair) and the forward passes (ltjax.models.repair)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ltjax import models
from ltjax.core import interpolation, repair


def test_channel_stats_match_numpy():
    z = np.random.default_rng(0).normal(size=(6, 3, 3, 4)).astype(np.float32) * [1, 2, 3, 0]
    stats = repair.channel_stats(z)
    flat = z.reshape(-1, 4)
    np.testing.assert_allclose(stats["mean"], flat.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["std"], flat.std(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="z must be"):
        repair.channel_stats(jnp.ones(3))


def test_affine_correction_maps_stats_onto_target():
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(2.0, 3.0, size=(500, 5)), jnp.float32)
    target = {"mean": jnp.arange(5.0), "std": jnp.linspace(0.5, 2.0, 5)}
    scale, shift = repair.affine_correction(repair.channel_stats(z), target, eps=0.0)
    corrected = repair.channel_stats(repair.apply_affine(z, scale, shift))
    chex.assert_trees_all_close(corrected, target, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="target must be a dict"):
        repair.affine_correction(repair.channel_stats(z), {"mean": target["mean"]})


def test_target_stats_interpolates_and_checks_alpha():
    a = {"L": {"mean": jnp.zeros(2), "std": jnp.ones(2)}}
    b = {"L": {"mean": jnp.ones(2), "std": 3 * jnp.ones(2)}}
    out = repair.target_stats(0.25, a, b)
    np.testing.assert_allclose(out["L"]["mean"], [0.25, 0.25])
    np.testing.assert_allclose(out["L"]["std"], [1.5, 1.5])
    with pytest.raises(ValueError, match="alpha must lie in"):
        repair.target_stats(1.5, a, b)
    with pytest.raises(ValueError, match="same layers"):
        repair.target_stats(0.5, a, {"M": b["L"]})


def test_fold_affine_dense_conv_and_norm_layers():
    rng = np.random.default_rng(2)
    scale = jnp.asarray(rng.uniform(0.5, 2, 3), jnp.float32)
    shift = jnp.asarray(rng.normal(size=3), jnp.float32)
    dense = {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
             "bias": jnp.asarray(rng.normal(size=3), jnp.float32)}
    x = jnp.asarray(rng.normal(size=(7, 4)), jnp.float32)
    folded = jax.tree.map(np.asarray, repair.fold_affine(dense, scale, shift))
    xs, kernel, bias = np.asarray(x), np.asarray(dense["kernel"]), np.asarray(dense["bias"])
    np.testing.assert_allclose(xs @ folded["kernel"] + folded["bias"],
                               (xs @ kernel + bias) * np.asarray(scale) + np.asarray(shift),
                               rtol=1e-5, atol=1e-5)
    conv = {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 3)), jnp.float32),
            "bias": jnp.zeros(3)}
    np.testing.assert_allclose(repair.fold_affine(conv, scale, shift)["kernel"],
                               np.asarray(conv["kernel"]) * np.asarray(scale), rtol=1e-6)
    norm = {"scale": jnp.ones(3), "bias": jnp.zeros(3)}
    out = repair.fold_affine(norm, scale, shift)
    np.testing.assert_allclose(out["scale"], scale)
    np.testing.assert_allclose(out["bias"], shift)
    masked = {"kernel": jnp.array([[0.0, 1.0, 0.0]]), "bias": jnp.zeros(3)}
    assert repair.fold_affine(masked, scale, shift)["kernel"][0, 0] == 0.0  # pruned stays 0
    with pytest.raises(ValueError, match="conv1 has no 'bias'"):
        repair.fold_affine({"kernel": conv["kernel"]}, scale, shift, name="conv1")
    with pytest.raises(ValueError, match="channels"):
        repair.fold_affine(dense, scale[:2], shift[:2])
    params = {"Block_0": {"bn1": norm, "conv1": {"kernel": conv["kernel"]}}, "fc": dense}
    new = repair.fold(params, {"Block_0/bn1": (scale, shift)})
    np.testing.assert_allclose(new["Block_0"]["bn1"]["scale"], scale)
    assert new["fc"]["kernel"] is params["fc"]["kernel"]  # untouched leaves are shared
    assert params["Block_0"]["bn1"]["scale"] is norm["scale"]  # the input is not mutated
    with pytest.raises(ValueError, match="layer 'Block_9/bn1' is not in params"):
        repair.fold(params, {"Block_9/bn1": (scale, shift)})


_SMALL = {"mlp": (models.MLP(widths=(16, 12)), (8, 8, 1)),
          "resnet": (models.ResNet(depth=8, width=4), (8, 8, 1))}  # ResNet-8: every BN kind


_lerp = jax.jit(interpolation.lerp)  # one compile per tree, not one per leaf op


def _random_like(shapes, rng, *, positive=False):
    """NumPy random leaves (no jitted initialisers: fast to set up)."""
    def one(leaf):
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)
        return jnp.asarray(np.abs(value) + 0.5 if positive else value, jnp.float32)
    return jax.tree.map(one, shapes)


def _pair(name):
    model, shape = _SMALL[name]
    params_shape, stats_shape = jax.eval_shape(
        lambda: models.init(model, jax.random.key(0), shape))
    rng = np.random.default_rng(3)
    out = []
    for _ in range(2):
        variables = {"params": _random_like(params_shape, rng)}
        if stats_shape:  # running statistics, as after training (variances positive)
            variables["batch_stats"] = _random_like(stats_shape, rng, positive=True)
        out.append(variables)
    x = jax.random.normal(jax.random.key(7), (48, *shape))
    return model, out[0], out[1], x


@pytest.mark.parametrize("name", sorted(_SMALL))
def test_repair_invariants(name):
    model, va, vb, x = _pair(name)
    layers = models.repair_layers(model, va["params"])
    if name == "resnet":
        assert layers == ("bn_init", "Block_0/bn1", "Block_0/bn2", "Block_1/bn1", "Block_1/bn2",
                          "Block_1/shortcut_bn", "Block_2/bn1", "Block_2/bn2",
                          "Block_2/shortcut_bn")
    sa = models.output_stats(model, va, x)
    sb = models.output_stats(model, vb, x)
    assert sorted(sa) == sorted(layers)
    # At alpha = 0 and 1 the target is the endpoint's own statistics: nothing changes.
    for alpha, end in ((0.0, va), (1.0, vb)):
        point = _lerp(alpha, va, vb)
        fixed = models.repair(model, point, x, repair.target_stats(alpha, sa, sb), eps=0.0)
        chex.assert_trees_all_close(fixed, end["params"], atol=2e-4, rtol=2e-4)
    # At the midpoint, every corrected layer's channels have the target statistics,
    # measured after all corrections (upstream ones included).
    mid = _lerp(0.5, va, vb)
    target = repair.target_stats(0.5, sa, sb)
    before = models.output_stats(model, mid, x)
    fixed = models.repair(model, mid, x, target, eps=0.0)
    after = models.output_stats(model, {**mid, "params": fixed}, x)
    chex.assert_trees_all_close(after, target, atol=2e-4, rtol=2e-3)
    gap = max(float(jnp.max(jnp.abs(before[k]["std"] - target[k]["std"]))) for k in target)
    assert gap > 1e-2  # the interpolated net was really off target
    # repair_fn is the same, for every point of a stacked path chunk.
    fn = models.repair_fn(model, x, eps=0.0)
    stats_tree = lambda v: v.get("batch_stats", {})  # noqa: E731
    path = jax.jit(interpolation.interpolate)(jnp.array([0.5, 1.0]),
                                          (va["params"], stats_tree(va), sa),
                                          (vb["params"], stats_tree(vb), sb))
    params, batch_stats = fn(path)
    chex.assert_trees_all_close(jax.tree.map(lambda p: p[0], params), fixed, atol=1e-5)
    chex.assert_trees_all_close(jax.tree.map(lambda p: p[1], params), vb["params"], atol=2e-4,
                                rtol=2e-4)
    assert batch_stats is path[1]


def test_repair_errors_name_the_layer():
    model, va, _, x = _pair("mlp")
    stats = models.output_stats(model, va, x)
    with pytest.raises(ValueError, match=r"\['Dense_7'\]"):
        models.repair(model, va, x, {**stats, "Dense_7": stats["Dense_0"]})
    with pytest.raises(ValueError, match="Dense_9"):
        models.output_stats(model, va, x, layers=("Dense_9",))
    with pytest.raises(TypeError, match="no REPAIR layers for Dense"):
        models.repair_layers(nn.Dense(3), va["params"])
