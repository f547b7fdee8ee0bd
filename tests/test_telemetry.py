"""Telemetry of training (Frankle, Schwab & Morcos 2020) against NumPy and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import telemetry


def _params(seed):
    k = jax.random.split(jax.random.key(seed), 3)
    return {"Dense_0": {"bias": jax.random.normal(k[0], (5,)),
                        "kernel": jax.random.normal(k[1], (4, 5))},
            "Dense_1": {"kernel": jax.random.normal(k[2], (5, 3))}}


def _kernels(p):
    return {n: np.asarray(p[n]["kernel"], np.float64) for n in ("Dense_0", "Dense_1")}


def test_sign_change_distance_cosine_magnitude_against_numpy():
    a, b = _params(0), _params(1)
    ka, kb = _kernels(a), _kernels(b)
    flat_a = np.concatenate([v.ravel() for v in ka.values()])
    flat_b = np.concatenate([v.ravel() for v in kb.values()])
    signs = telemetry.sign_change_share(a, b)
    assert float(signs["global"]) == pytest.approx(np.mean(np.sign(flat_a) != np.sign(flat_b)))
    assert float(telemetry.sign_change_share(a, a)["global"]) == 0.0
    assert float(telemetry.sign_change_share(a, jax.tree.map(lambda x: -x, a))["global"]) == 1.0
    dist = telemetry.l2_distance(a, b)
    assert float(dist["Dense_0/kernel"]) == pytest.approx(
        np.linalg.norm(ka["Dense_0"] - kb["Dense_0"]), rel=1e-5)
    assert float(dist["global"]) == pytest.approx(np.linalg.norm(flat_a - flat_b), rel=1e-5)
    cos = telemetry.cosine_similarity(a, b)
    assert float(cos["global"]) == pytest.approx(
        flat_a @ flat_b / np.linalg.norm(flat_a) / np.linalg.norm(flat_b), rel=1e-5)
    assert float(telemetry.cosine_similarity(a, a)["Dense_1/kernel"]) == pytest.approx(1.0)
    mag = telemetry.mean_magnitude(a)
    assert float(mag["global"]) == pytest.approx(np.mean(np.abs(flat_a)), rel=1e-6)
    assert "Dense_0/bias" not in mag  # kernels only by default


def test_tracked_weights_are_fixed_and_distinct():
    a = _params(0)
    indices = telemetry.tracked_indices(a, jax.random.key(3), count=10)
    assert len(set(indices)) == 10
    assert indices == telemetry.tracked_indices(a, jax.random.key(3), count=10)
    values = telemetry.tracked_values(a, indices)
    for (name, i), v in zip(indices, values, strict=True):
        layer = name.split("/")[0]
        assert float(v) == float(np.asarray(a[layer]["kernel"]).reshape(-1)[i])
    with pytest.raises(ValueError, match="count"):
        telemetry.tracked_indices(a, jax.random.key(3), count=36)


def test_hessian_top_eigenvalue_of_a_quadratic_is_its_largest_eigenvalue():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    eigenvalues = np.array([5.0, 2.0, 1.0, 0.5, -0.3, 0.1])
    matrix = jnp.asarray(q @ np.diag(eigenvalues) @ q.T, jnp.float32)

    def loss(p):
        w = jnp.concatenate([p["a"], p["b"].reshape(-1)])
        return 0.5 * w @ matrix @ w

    params = {"a": jnp.ones(2), "b": jnp.zeros((2, 2))}
    top = jax.jit(lambda p, k: telemetry.hessian_top_eigenvalue(loss, p, k, iterations=60))(
        params, jax.random.key(0))
    assert float(top) == pytest.approx(5.0, rel=1e-4)
    hv = telemetry.hessian_vector_product(loss, params, {"a": jnp.array([1.0, 0.0]),
                                                         "b": jnp.zeros((2, 2))})
    np.testing.assert_allclose(np.asarray(hv["a"]), np.asarray(matrix)[:2, 0], rtol=1e-5)
