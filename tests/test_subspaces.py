"""Subspaces (Wortsman et al. 2021): points, draws, cos^2 and gradients against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax.core import rng
from ltjax.methods import subspaces


def _params(key, scale=1.0):
    k0, k1, k2 = jax.random.split(key, 3)
    return {"Dense_0": {"bias": jax.random.normal(k0, (3,)) * scale,
                        "kernel": jax.random.normal(k1, (4, 3)) * scale},
            "Dense_1": {"kernel": jax.random.normal(k2, (3, 2)) * scale}}


def _points(names, seed=0):
    return {name: _params(jax.random.key(seed + i)) for i, name in enumerate(names)}


def _leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("kind", ["line", "curve"])
def test_alpha_zero_and_one_are_the_endpoints_exactly(kind):
    points = _points(subspaces.point_names(kind))
    for alpha, name in ((0.0, "point_0"), (1.0, "point_1")):
        got = subspaces.subspace_point(points, alpha, kind=kind)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(points[name]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_line_and_bezier_points_against_numpy():
    points = _points(("point_0", "point_1", "control"))
    w0, w1, wc = (_leaves(points[n]) for n in ("point_0", "point_1", "control"))
    mid = _leaves(subspaces.subspace_point(points, 0.5, kind="curve"))
    for m, a, b, c in zip(mid, w0, w1, wc, strict=True):
        np.testing.assert_allclose(m, a / 4 + c / 2 + b / 4, rtol=1e-6, atol=1e-7)
    line = {k: points[k] for k in ("point_0", "point_1")}
    at = _leaves(subspaces.subspace_point(line, 0.3, kind="line"))
    for m, a, b in zip(at, w0, w1, strict=True):
        np.testing.assert_allclose(m, 0.7 * a + 0.3 * b, rtol=1e-6, atol=1e-7)
    a = 0.8
    at = _leaves(subspaces.subspace_point(points, a, kind="curve"))
    for m, p0, p1, c in zip(at, w0, w1, wc, strict=True):
        np.testing.assert_allclose(m, (1 - a) ** 2 * p0 + 2 * a * (1 - a) * c + a ** 2 * p1,
                                   rtol=1e-5, atol=1e-6)


def test_simplex_point_and_dirichlet_draws():
    points = _points(subspaces.point_names("simplex", 3))
    weights = np.array([0.2, 0.5, 0.3], np.float32)
    got = _leaves(subspaces.subspace_point(points, weights, kind="simplex"))
    ws = [_leaves(points[f"point_{i}"]) for i in range(3)]
    for k, g in enumerate(got):
        np.testing.assert_allclose(g, sum(w * ws[i][k] for i, w in enumerate(weights)),
                                   rtol=1e-6, atol=1e-7)
    draws = np.asarray(subspaces.dirichlet_weights(jax.random.key(1), 4, (20000,)), np.float64)
    assert draws.shape == (20000, 4) and (draws >= 0).all()
    np.testing.assert_allclose(draws.sum(axis=1), 1.0, atol=1e-6)
    # Dirichlet(1,1,1,1): each coordinate has mean 1/4 and variance (1/4)(3/4)/5.
    np.testing.assert_allclose(draws.mean(axis=0), 0.25, atol=4 * np.sqrt(0.0375 / 20000))
    np.testing.assert_allclose(draws.var(axis=0), 0.0375, rtol=0.05)


def test_cos_squared_identical_orthogonal_scale_invariant_and_numpy():
    a = _params(jax.random.key(0))
    assert float(subspaces.cos_squared(a, a)) == pytest.approx(1.0, abs=1e-6)
    scaled = jax.tree.map(lambda x: -3.0 * x, a)
    assert float(subspaces.cos_squared(a, scaled)) == pytest.approx(1.0, abs=1e-6)
    # Orthogonal: disjoint supports over the kernels (biases are not regularised).
    zeros = jax.tree.map(jnp.zeros_like, a)
    u = {**zeros, "Dense_0": {"bias": jnp.ones(3), "kernel": a["Dense_0"]["kernel"]}}
    v = {**zeros, "Dense_1": a["Dense_1"], "Dense_0": {"bias": jnp.ones(3),
                                                       "kernel": jnp.zeros((4, 3))}}
    assert float(subspaces.cos_squared(u, v)) == 0.0
    b = _params(jax.random.key(5))
    ka = np.concatenate([np.ravel(a["Dense_0"]["kernel"]), np.ravel(a["Dense_1"]["kernel"])])
    kb = np.concatenate([np.ravel(b["Dense_0"]["kernel"]), np.ravel(b["Dense_1"]["kernel"])])
    want = np.dot(ka, kb) ** 2 / (np.dot(ka, ka) * np.dot(kb, kb))
    assert float(subspaces.cos_squared(a, b)) == pytest.approx(want, rel=1e-5)
    assert float(subspaces.cos_squared(jax.tree.map(lambda x: 7.0 * x, a), b)) == pytest.approx(
        want, rel=1e-5)


def _loss(params):
    return sum(jnp.sum(jnp.sin(x) * (i + 1)) for i, x in enumerate(jax.tree.leaves(params)))


@pytest.mark.parametrize("kind", ["line", "curve"])
def test_point_gradients_are_the_coefficients_times_the_gradient(kind):
    names = subspaces.point_names(kind)
    r = subspaces.subspace_reparam(lambda k: _params(k), kind=kind)
    trainable, frozen = r.init(_params(jax.random.key(0)), jax.random.key(9))
    key = jax.random.key(3)
    coeffs = np.asarray(subspaces.sample_coefficients(rng.stream(key, "alpha"), kind))[0]
    point = r.apply(trainable, frozen, key, train=True)
    g = _leaves(jax.grad(_loss)(point))
    grads = jax.grad(lambda t: _loss(r.apply(t, frozen, key, train=True)))(trainable)
    for i, name in enumerate(names):
        for got, want in zip(_leaves(grads[name]), g, strict=True):
            np.testing.assert_allclose(got, coeffs[i] * want, rtol=1e-6, atol=1e-7)
    # Evaluation is deterministic, at the midpoint.
    mid = r.apply(trainable, frozen, None, train=False)
    want = subspaces.subspace_point(trainable, 0.5, kind=kind)
    for a, b in zip(jax.tree.leaves(mid), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_keeps_point_0_and_draws_independent_points():
    params = _params(jax.random.key(0))
    r = subspaces.subspace_reparam(lambda k: _params(k), kind="simplex", num_points=4)
    trainable, _ = r.init(params, jax.random.key(1))
    assert sorted(trainable) == ["point_0", "point_1", "point_2", "point_3"]
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(trainable["point_0"]),
                                                     _leaves(params), strict=True))
    firsts = {float(np.ravel(trainable[n]["Dense_1"]["kernel"])[0]) for n in trainable}
    assert len(firsts) == 4


@pytest.mark.parametrize("kind", ["line", "simplex"])
def test_layerwise_draws_share_one_alpha_within_a_module(kind):
    names = subspaces.point_names(kind)
    zeros = jax.tree.map(jnp.zeros_like, _params(jax.random.key(0)))
    # point_i = i everywhere, so the mixed value of a leaf is sum_i i * c_i: its module's draw.
    trainable = {n: jax.tree.map(lambda x, i=i: x + i, zeros) for i, n in enumerate(names)}
    for layerwise in (True, False):
        r = subspaces.subspace_reparam(lambda k: zeros, kind=kind, layerwise=layerwise)
        values = set()
        for seed in range(3):
            mixed = r.apply(trainable, {}, jax.random.key(seed), train=True)
            d0_bias, d0_kernel = (np.asarray(mixed["Dense_0"][k]) for k in ("bias", "kernel"))
            d1 = np.asarray(mixed["Dense_1"]["kernel"])
            assert np.ptp(d0_bias) == np.ptp(d0_kernel) == np.ptp(d1) == 0.0  # one value a leaf
            assert d0_bias.flat[0] == d0_kernel.flat[0]  # one draw per module
            assert (d0_kernel.flat[0] != d1.flat[0]) == layerwise
            values.add(float(d1.flat[0]))
        assert len(values) == 3  # a fresh draw per step key


def test_penalty_is_beta_cos_squared_of_a_random_pair():
    line = subspaces.subspace_reparam(lambda k: _params(k), kind="line", beta=2.0)
    points = _points(("point_0", "point_1"))
    want = 2.0 * float(subspaces.cos_squared(points["point_0"], points["point_1"]))
    assert float(line.penalty(points, jax.random.key(0))) == pytest.approx(want, rel=1e-6)
    assert subspaces.subspace_reparam(lambda k: _params(k), kind="line").penalty is None
    curve = subspaces.subspace_reparam(lambda k: _params(k), kind="curve", beta=1.0)
    points = _points(("point_0", "point_1", "control"))
    pairs = {float(subspaces.cos_squared(points[a], points[b])) for a, b in
             (("point_0", "point_1"), ("point_0", "control"), ("point_1", "control"))}
    seen = {float(curve.penalty(points, jax.random.key(s))) for s in range(20)}
    assert all(min(abs(s - p) for p in pairs) < 1e-6 for s in seen) and len(seen) > 1


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "plane"}, "kind"),
    ({"kind": "line", "num_points": 3}, "num_points"),
    ({"kind": "simplex", "num_points": 1}, "num_points"),
    ({"beta": -1.0}, "beta"),
    ({"beta": float("nan")}, "beta"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        subspaces.subspace_reparam(lambda k: _params(k), **kwargs)
    with pytest.raises(ValueError, match="init_fn"):
        subspaces.subspace_reparam(None)
