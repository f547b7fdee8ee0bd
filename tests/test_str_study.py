"""The STR study: learned sparsity against a NumPy oracle, matched baselines, rerun, bad input."""

import jax
import numpy as np
import pytest

from experiments.configs import str_lenet_digits
from ltjax.core import masking, rng
from ltjax.engine import executor as executor_lib
from ltjax.io import checkpoint, results
from ltjax.methods import soft_threshold
from ltjax.studies import soft_threshold as str_study
from ltjax.studies.spec import RunSpec


def _config(**overrides):
    config = str_lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (32, 16)}
    config.recipe.total_steps = config.training_steps = "2ep"
    config.eval_every = "2ep"
    config.checkpoint_every = "1ep"
    config.s_inits = (-4.0,)
    config.weight_decays = (1e-4, 2e-2)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_str_study_sparsity_baselines_and_rerun(tmp_path, sealed):
    config = _config()
    sealed_config = sealed(config, str_study.SoftThresholdSpec)
    str_study.run_soft_threshold(sealed_config, tmp_path, progress=False)
    first = (tmp_path / "results.csv").read_text()
    rows = results.read_csv(tmp_path / "results.csv")
    assert {r["method"] for r in rows} == {"dense", "str", "oneshot"}

    # Oracle: the learned sparsity is the share of exact zeros of sign(W) relu(|W| - sigmoid(s)).
    run_spec = RunSpec.from_config(config, progress=False)
    dataset, recipe, executor = run_spec.dataset, run_spec.recipe, run_spec.executor
    selection = masking.prunable(executor.abstract_params)
    str_executor = executor_lib.Executor(
        executor.model, dataset, recipe,
        reparam=soft_threshold.str_reparam(selection, s_init=-4.0))
    keys = rng.replicate_keys(config.seed, 2)
    like = str_executor.init(rng.init_and_noise(keys)[0][np.array([0, 1, 0, 1])])
    with checkpoint.Checkpointer(tmp_path / "checkpoints" / "str_00") as ckpt:
        state, _, meta = ckpt.restore(ckpt.steps()[-1], like_state=like)
    trainable = jax.device_get(state.params)
    str_rows = [r for r in rows if r["method"] == "str"]
    for m, tag in enumerate(meta["members"]):
        zeros = total = 0
        for layer in ("Dense_0", "Dense_1", "Dense_2"):
            w = np.asarray(trainable["params"][layer]["kernel"][m], np.float64)
            s = float(trainable["thresholds"][layer]["kernel"][m])
            zeros += int(np.sum(np.abs(w) <= 1.0 / (1.0 + np.exp(-s))))
            total += w.size
        (row,) = [r for r in str_rows if float(r["weight_decay"]) == tag["weight_decay"]
                  and int(r["replicate"]) == tag["replicate"]]
        assert float(row["sparsity"]) == pytest.approx(zeros / total, abs=2 / total)
        # The one-shot baseline keeps as many weights as the STR member (exact counts).
        (base,) = [r for r in rows if r["method"] == "oneshot"
                   and float(r["weight_decay"]) == tag["weight_decay"]
                   and int(r["replicate"]) == tag["replicate"]]
        assert float(base["sparsity"]) == pytest.approx(float(row["sparsity"]), abs=1.01 / total)
    assert any(float(r["sparsity"]) > 0 for r in str_rows)
    layers = results.read_csv(tmp_path / "layer_densities.csv")
    assert len(layers) == 3 * len(str_rows)
    assert (tmp_path / "plots" / "str.png").exists()

    str_study.run_soft_threshold(sealed_config, tmp_path, progress=False)  # finished: restores
    assert (tmp_path / "results.csv").read_text() == first


@pytest.mark.parametrize("overrides, match", [
    ({"s_inits": ()}, "config.s_inits"),
    ({"s_inits": (float("nan"),)}, "config.s_inits"),
    ({"weight_decays": (1e-4, -1e-3)}, "config.weight_decays"),
    ({"weight_decays": ("a",)}, "must be numbers"),
    ({"scope": "local"}, "config.scope"),  # the one-shot baseline's, checked before training
])
def test_bad_config_is_refused_before_any_work(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        str_study.run_soft_threshold(_config(**overrides), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
