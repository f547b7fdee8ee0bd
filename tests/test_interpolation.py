"""Interpolation and barriers: exact endpoints, closed forms, hand-computed curves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax.core import interpolation, masking


def _tree(seed):
    gen = np.random.default_rng(seed)
    return {"Dense_0": {"kernel": jnp.asarray(gen.normal(size=(5, 3)), jnp.float32),
                        "bias": jnp.asarray(gen.normal(size=(3,)), jnp.float32)},
            "step": jnp.asarray(7, jnp.int32)}


def test_lerp_endpoints_are_exact():
    a, b = _tree(0), _tree(1)
    for alpha, end in ((0.0, a), (1.0, b)):
        got = interpolation.lerp(alpha, a, b)
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(end), strict=True):
            np.testing.assert_array_equal(x, y)
    mid = interpolation.lerp(0.3, a, b)
    np.testing.assert_allclose(mid["Dense_0"]["kernel"],
                               0.7 * np.asarray(a["Dense_0"]["kernel"])
                               + 0.3 * np.asarray(b["Dense_0"]["kernel"]), rtol=1e-6)
    assert mid["step"] == 7


def test_same_mask_stays_masked():
    a, b = _tree(0), _tree(1)
    masks = jax.tree.map(lambda x: jnp.arange(x.size).reshape(x.shape) % 2 == 0, a)
    path = interpolation.interpolate(jnp.linspace(0, 1, 7), masking.apply(a, masks),
                                 masking.apply(b, masks))
    kernel = np.asarray(path["Dense_0"]["kernel"])
    assert kernel.shape == (7, 5, 3)
    assert np.all(kernel[:, ~np.asarray(masks["Dense_0"]["kernel"])] == 0.0)


def test_barriers_match_hand_computed_curves():
    alphas = np.linspace(0, 1, 5)
    errors = np.array([0.02, 0.05, 0.12, 0.06, 0.04])
    height, at = interpolation.error_barrier(alphas, errors)
    assert height == pytest.approx(0.12 - 0.03)
    assert at == 0.5
    losses = np.array([1.0, 2.0, 2.5, 2.0, 3.0])
    height, at = interpolation.loss_barrier(alphas, losses)
    # chord: 1.0, 1.5, 2.0, 2.5, 3.0 -> gaps 0, 0.5, 0.5, -0.5, 0 -> first max at 0.25
    assert height == pytest.approx(0.5)
    assert at == 0.25
    batched, _ = interpolation.error_barrier(alphas, np.stack([errors, errors * 2]))
    np.testing.assert_allclose(batched, [0.09, 0.18])
    # The repository's form: max loss 3.0 at alpha 1 minus the ends' mean 2.0.
    height, at = interpolation.loss_barrier(alphas, losses, baseline="mean_ends")
    assert height == pytest.approx(1.0)
    assert at == 1.0


def test_two_loss_barriers_agree_on_equal_ends_and_differ_by_the_planted_gap():
    alphas = np.linspace(0, 1, 11)
    bump = 0.7 * np.sin(np.pi * alphas)  # peaks 0.7 at alpha 0.5
    equal_ends = 1.0 + bump
    chord, _ = interpolation.barrier(alphas, equal_ends, baseline="chord")
    mean_ends, _ = interpolation.barrier(alphas, equal_ends, baseline="mean_ends")
    assert chord == pytest.approx(0.7) and mean_ends == pytest.approx(0.7)
    # A straight path between losses 0.2 and 1.0: no barrier against the chord,
    # half the endpoints' gap (0.4, at alpha 1) against their mean.
    line = 0.2 + 0.8 * alphas
    assert interpolation.barrier(alphas, line, baseline="chord")[0] == pytest.approx(0.0)
    height, at = interpolation.barrier(alphas, line, baseline="mean_ends")
    assert (height, at) == (pytest.approx(0.4), 1.0)
    with pytest.raises(ValueError, match="baseline must be one of"):
        interpolation.barrier(alphas, line, baseline="mean")


def test_identical_endpoints_have_zero_barrier():
    a = _tree(0)
    alphas = np.linspace(0, 1, 30)

    def error_of(t):  # any deterministic function of the weights
        return float(jnp.tanh(jnp.sum(t["Dense_0"]["kernel"])) ** 2)

    curve = [error_of(interpolation.lerp(x, a, a)) for x in alphas]
    assert interpolation.error_barrier(alphas, curve)[0] == 0.0
    assert interpolation.loss_barrier(alphas, curve)[0] == pytest.approx(0.0, abs=1e-7)


def test_evaluate_path_chunks_agree_and_recompute_is_applied():
    a, b = _tree(0), _tree(1)
    alphas = np.linspace(0, 1, 9)

    def evaluate(stacked):
        return {"norm": jnp.sum(stacked["Dense_0"]["kernel"] ** 2, axis=(1, 2))}

    whole = interpolation.evaluate_path(evaluate, a, b, alphas)
    chunked = interpolation.evaluate_path(evaluate, a, b, alphas, chunk_size=4)
    np.testing.assert_allclose(whole["norm"], chunked["norm"], rtol=1e-6)
    expected = [float(jnp.sum(interpolation.lerp(x, a, b)["Dense_0"]["kernel"] ** 2))
                for x in alphas]
    np.testing.assert_allclose(whole["norm"], expected, rtol=1e-5)
    doubled = interpolation.evaluate_path(
        evaluate, a, b, alphas,
        recompute_fn=lambda t: jax.tree.map(lambda x: x * 2 if x.dtype == jnp.float32 else x, t))
    np.testing.assert_allclose(doubled["norm"], 4 * whole["norm"], rtol=1e-5)


def test_bad_inputs():
    a, b = _tree(0), _tree(1)
    with pytest.raises(ValueError, match="alpha"):
        interpolation.lerp(1.5, a, b)
    with pytest.raises(ValueError, match="alphas"):
        interpolation.interpolate(jnp.array([-0.1, 0.5]), a, b)
    with pytest.raises(ValueError, match="tree_b"):
        interpolation.lerp(0.5, a, {"Dense_0": a["Dense_0"]})
    wrong = jax.tree.map(lambda x: x, b)
    wrong["Dense_0"]["kernel"] = jnp.zeros((5, 4))
    with pytest.raises(ValueError, match="kernel"):
        interpolation.lerp(0.5, a, wrong)
    with pytest.raises(ValueError, match="increase from 0 to 1"):
        interpolation.error_barrier([0.2, 1.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="len"):
        interpolation.loss_barrier([0.0, 1.0], [0.1, 0.2, 0.3])
