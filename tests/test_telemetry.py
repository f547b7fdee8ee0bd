"""Telemetry of training (Frankle, Schwab & Morcos 2020) against NumPy and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax.methods import telemetry


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


def test_sparse_members_are_measured_over_their_kept_weights_only():
    """With masks, pruned positions (here holding garbage in both trees) change nothing."""
    a, b = _params(0), _params(1)
    gen = np.random.default_rng(0)
    masks = {"Dense_0": {"bias": np.ones(5, bool), "kernel": gen.random((4, 5)) < 0.5},
             "Dense_1": {"kernel": gen.random((5, 3)) < 0.5}}
    ka, kb = _kernels(a), _kernels(b)
    kept = {n: masks[n]["kernel"] for n in ka}
    flat_a = np.concatenate([ka[n][kept[n]] for n in ka])
    flat_b = np.concatenate([kb[n][kept[n]] for n in kb])
    out = telemetry.snapshot(a, b, b, masks=masks)
    assert float(out["sign_change_init"]["global"]) == pytest.approx(
        np.mean(np.sign(flat_a) != np.sign(flat_b)))
    assert float(out["sign_change_init"]["Dense_1/kernel"]) == pytest.approx(
        np.mean(np.sign(ka["Dense_1"][kept["Dense_1"]]) != np.sign(kb["Dense_1"][kept["Dense_1"]])))
    assert float(out["l2_init"]["global"]) == pytest.approx(np.linalg.norm(flat_a - flat_b),
                                                            rel=1e-5)
    assert float(out["cosine_init"]["global"]) == pytest.approx(
        flat_a @ flat_b / np.linalg.norm(flat_a) / np.linalg.norm(flat_b), rel=1e-5)
    assert float(out["mean_magnitude"]["Dense_0/kernel"]) == pytest.approx(
        np.mean(np.abs(ka["Dense_0"][kept["Dense_0"]])), rel=1e-6)
    assert float(out["grad_norm"]["global"]) == pytest.approx(np.linalg.norm(flat_b), rel=1e-5)
    final = telemetry.versus_final(a, b, masks=masks)
    assert float(final["l2_final"]["global"]) == pytest.approx(np.linalg.norm(flat_a - flat_b),
                                                               rel=1e-5)
    # Without masks every weight counts (the dense measure differs here).
    assert float(telemetry.l2_distance(a, b)["global"]) > float(out["l2_init"]["global"]) * 1.1


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


def test_hessian_top_eigenvalue_on_the_telemetry_schedule(tmp_path, sealed):
    """The dense study logs the sharpness at ``telemetry.hessian_steps`` (Frankle et al. 2020,
    Figure 3): rows against a dense ``jax.hessian`` + ``numpy.linalg.eigh`` oracle."""
    from experiments import configs
    from experiments.configs import lenet_digits
    from ltjax.core import rng
    from ltjax.engine import train
    from ltjax.io import data, results
    from ltjax.studies import common, dense

    config = lenet_digits.get_config("quick")
    config.model, config.model_kwargs = "mlp", {"widths": (6,)}
    config.training_steps, config.eval_every, config.checkpoint_every = "12it", "12it", "12it"
    config.eval_train = False
    configs.add_telemetry(config)
    config.telemetry.update(dense_every="6it", dense_until="12it", every="6it", batch_size=32,
                            tracked=2, hessian_steps=("0it", "6it", "1ep"),
                            hessian_iterations=200)
    dense.run_dense(sealed(config, dense.DenseSpec), tmp_path / "run", progress=False)
    rows = [r for r in results.read_csv(tmp_path / "run" / "telemetry.csv")
            if r["quantity"] == "hessian_top_eigenvalue"]
    # 1ep (18 steps) is past the end (12): skipped. One global row per member and step.
    assert sorted((int(r["step"]), r["replicate"], r["layer"]) for r in rows) == [
        (0, "0", "global"), (0, "1", "global"), (6, "0", "global"), (6, "1", "global")]

    dataset = common.build_dataset(config)
    executor = common.build_executor(config, common.build_model(config, dataset), dataset,
                                     common.build_recipe(config, dataset))
    start = executor.init(rng.init_and_noise(rng.replicate_keys(config.seed, 2))[0])
    params = jax.tree.map(lambda v: v[1], start.params)  # replicate 1 at step 0
    x = data.normalize(dataset.train.x[:32], dataset.mean, dataset.std)
    y = jnp.asarray(dataset.train.y[:32], jnp.int32)
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def loss(w):
        return train.cross_entropy(train.logits(executor.model, unravel(w), {}, x), y).mean()

    eigenvalues = np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(flat), np.float64))
    top = eigenvalues[np.argmax(np.abs(eigenvalues))]
    (got,) = [float(r["value"]) for r in rows if (r["step"], r["replicate"]) == ("0", "1")]
    assert got == pytest.approx(top, rel=1e-3)

    # Bad settings are refused before the workdir is written.
    for field, value in (("hessian_steps", ("-3it",)), ("hessian_steps", ("soon",)),
                         ("hessian_iterations", 0)):
        bad = lenet_digits.get_config("quick")
        configs.add_telemetry(bad)
        setattr(bad.telemetry, field, value)
        with pytest.raises(ValueError, match=f"config.telemetry.{field}"):
            dense.run_dense(bad, tmp_path / "bad", progress=False)
        assert not (tmp_path / "bad").exists()
