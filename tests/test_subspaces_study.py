"""The subspaces study: paths, ensemble, barrier and cos^2 against a NumPy forward pass; rerun."""

import jax
import numpy as np
import pytest

from experiments.configs import subspaces_mlp_digits
from ltjax import models
from ltjax.core import rng
from ltjax.engine import executor as executor_lib
from ltjax.io import checkpoint, results
from ltjax.methods import subspaces
from ltjax.studies import subspaces as study
from ltjax.studies.spec import RunSpec


def _config(**overrides):
    config = subspaces_mlp_digits.get_config("quick")
    config.model_kwargs.widths = (16,)
    config.training_steps = "2ep"
    config.eval_every = "2ep"
    config.checkpoint_every = "1ep"
    config.arms = ("standard", "line_layerwise@1")
    config.num_alphas = 3
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _np_logits(params, x):
    h = x.reshape(x.shape[0], -1).astype(np.float64)
    h = np.maximum(h @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"], 0)
    return h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]


def test_subspaces_study_against_numpy_and_rerun(tmp_path, sealed):
    config = _config()
    sealed_config = sealed(config, study.SubspacesSpec)
    study.run_subspaces(sealed_config, tmp_path, progress=False)
    names = ("results.csv", "summary.csv", "paths.csv", "paths_summary.csv")
    first = {n: (tmp_path / n).read_text() for n in names}
    rows = results.read_csv(tmp_path / "results.csv")
    summary = results.read_csv(tmp_path / "paths.csv")
    assert {r["variant"] for r in rows} == {"standard", "independent", "line_layerwise"}

    # Restore the trained line and evaluate its points with a NumPy forward pass.
    run_spec = RunSpec.from_config(config, progress=False)
    dataset, recipe, executor = run_spec.dataset, run_spec.recipe, run_spec.executor
    reparam = subspaces.subspace_reparam(
        lambda k: models.init(executor.model, k, dataset.input_shape)[0], kind="line",
        layerwise=True, beta=1.0)
    line = executor_lib.Executor(executor.model, dataset, recipe, reparam=reparam)
    init_keys = rng.init_and_noise(rng.replicate_keys(config.seed, 2))[0]
    with checkpoint.Checkpointer(tmp_path / "checkpoints" / "line_layerwise_beta1") as ckpt:
        state, _, _ = ckpt.restore(ckpt.steps()[-1], like_state=line.init(init_keys))
    trainable = jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(state.params))
    x = (np.asarray(dataset.test.x, np.float64) - np.asarray(dataset.mean, np.float64)) / (
        np.asarray(dataset.std, np.float64))
    y = np.asarray(dataset.test.y)
    for r in range(2):
        p0 = jax.tree.map(lambda t, r=r: t[r], trainable["point_0"])
        p1 = jax.tree.map(lambda t, r=r: t[r], trainable["point_1"])
        mine = sorted((row for row in rows if row["variant"] == "line_layerwise"
                       and int(row["replicate"]) == r), key=lambda row: float(row["alpha"]))
        errors = []
        for row in mine:
            a = float(row["alpha"])
            logits = _np_logits(jax.tree.map(lambda u, v, a=a: (1 - a) * u + a * v, p0, p1), x)
            accuracy = np.mean(logits.argmax(1) == y)
            assert float(row["test_accuracy"]) == pytest.approx(accuracy, abs=1.5 / len(y))
            errors.append(1 - float(row["test_accuracy"]))
        (info,) = [s for s in summary if s["variant"] == "line_layerwise"
                   and int(s["replicate"]) == r]
        assert float(info["error_barrier"]) == pytest.approx(
            max(errors) - (errors[0] + errors[-1]) / 2, abs=1e-9)
        ensemble = np.mean((_np_logits(p0, x) + _np_logits(p1, x)).argmax(1) == y)
        assert float(info["ensemble_accuracy"]) == pytest.approx(ensemble, abs=1.5 / len(y))
        k0 = np.concatenate([p0["Dense_0"]["kernel"].ravel(), p0["Dense_1"]["kernel"].ravel()])
        k1 = np.concatenate([p1["Dense_0"]["kernel"].ravel(), p1["Dense_1"]["kernel"].ravel()])
        cos2 = np.dot(k0, k1) ** 2 / (np.dot(k0, k0) * np.dot(k1, k1))
        assert float(info["cos_squared"]) == pytest.approx(cos2, rel=1e-4, abs=1e-9)
    # The subspace's point_0 starts from the standard net's init (same key).
    fresh = line.init(init_keys)
    standard = executor.init(init_keys)
    for a, b in zip(jax.tree.leaves(fresh.params["point_0"]), jax.tree.leaves(standard.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (tmp_path / "plots" / "subspaces.png").exists()

    study.run_subspaces(sealed_config, tmp_path, progress=False)  # finished: restores, same files
    assert {n: (tmp_path / n).read_text() for n in first} == first


@pytest.mark.parametrize("overrides, match", [
    ({"arms": ()}, "config.arms"),
    ({"arms": ("standard", "plane@1")}, "config.arms"),
    ({"arms": ("line@-1",)}, "beta"),
    ({"arms": ("line@1", "line@1.0")}, "repeats"),
    ({"num_alphas": 4}, "num_alphas"),
    ({"arms": ("simplex@1",), "simplex_points": 1}, "num_points"),
])
def test_bad_config_is_refused_before_any_work(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        study.run_subspaces(_config(**overrides), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_batchnorm_statistics_are_reset_over_one_augmented_training_pass(tmp_path, monkeypatch):
    """The reference's utils.update_bn: every point's statistics from one full augmented pass."""
    calls = []
    original = executor_lib.Executor.recomputed_batch_stats

    def spy(self, params, batch_stats, **kwargs):
        calls.append(kwargs)
        return original(self, params, batch_stats, **kwargs)

    monkeypatch.setattr(executor_lib.Executor, "recomputed_batch_stats", spy)
    config = _config(model="mlp_bn", training_steps="1ep", checkpoint_every="1ep",
                     eval_every="1ep", arms=("line@1",), num_replicates=1)
    config.model_kwargs = {"widths": (8,)}
    study.run_subspaces(config, tmp_path, progress=False)
    assert calls and all(c == {"num_batches": None, "augment": True} for c in calls)
