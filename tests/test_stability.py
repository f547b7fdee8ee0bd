"""Instability study: copies share the init and differ in data order; end to end on digits."""

import itertools

import jax
import numpy as np
import pytest

from experiments.configs import imp_lenet_digits, stability_lenet_digits
from ltjax import averaging, data, results, rng
from ltjax.studies import imp, stability


def _config(**overrides):
    config = stability_lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (32,)}
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_copies_share_init_and_differ_in_data_order():
    keys = rng.replicate_keys(0, 2)
    copy_keys = stability.copy_noise_keys(keys, 3)
    assert copy_keys.shape == (6,)
    raw = jax.random.key_data(copy_keys)
    assert len({tuple(np.asarray(k)) for k in raw}) == 6
    # Copy c of replicate r does not depend on how many copies or replicates there are.
    more = stability.copy_noise_keys(rng.replicate_keys(0, 3), 4)
    np.testing.assert_array_equal(jax.random.key_data(more[4 + 1]), raw[3 + 1])
    orders = [data.batch_indices(rng.stream(k, "order"), 0, num_steps=3, num_examples=100,
                                 batch_size=10) for k in copy_keys[:3]]
    for a, b in itertools.combinations(orders, 2):
        assert not np.array_equal(a, b)
    stacked = {"w": np.arange(4.0).reshape(2, 2)}
    repeated = stability._repeat(stacked, 3)
    np.testing.assert_array_equal(repeated["w"][:3], np.tile(stacked["w"][0], (3, 1)))
    np.testing.assert_array_equal(repeated["w"][3:], np.tile(stacked["w"][1], (3, 1)))


def test_stability_run_end_to_end(tmp_path):
    config = _config()
    summary = stability.run_stability(config, tmp_path, progress=False)
    rows = [r for r in results.read_csv(tmp_path / "results.csv")
            if r["replicate"] not in ("mean", "std")]
    # 2 rewind steps x 2 replicates x 1 pair x 2 splits
    assert len(rows) == 2 * 2 * 1 * 2
    assert {r["k"] for r in rows} == {"0", "18"}  # 1ep = 1137 // 60 steps
    records = [r for r in results.MetricsLog(tmp_path / "metrics.jsonl").read()
               if r["branch"] == "path"]
    for row in rows:
        path = sorted((r for r in records if str(r["k"]) == row["k"]
                       and str(r["replicate"]) == row["replicate"] and r["split"] == row["split"]),
                      key=lambda r: r["alpha"])
        alphas = [r["alpha"] for r in path]
        assert alphas == pytest.approx(list(np.linspace(0, 1, 5)))
        errors = [1 - r["accuracy"] for r in path]
        expected = max(errors) - (errors[0] + errors[-1]) / 2
        assert float(row["instability"]) == pytest.approx(expected, abs=1e-6)
        assert float(row["instability"]) == pytest.approx(
            float(averaging.error_barrier(alphas, errors)[0]), abs=1e-9)
        assert row["stable"] in ("True", "False")
    # Copies were trained from the parent's step, to the end.
    copies = [r for r in results.MetricsLog(tmp_path / "metrics.jsonl").read()
              if r["branch"] == "copies" and r["k"] == 18]
    assert min(r["step"] for r in copies) == 18
    assert {r["replicate"] for r in copies} == {0, 1, 2, 3}
    for name in ("error_vs_alpha.png", "instability_vs_k.png"):
        assert (tmp_path / "plots" / name).exists()
    assert len(summary["rows"]) == 4  # mean rows: 2 k x 2 splits
    again = stability.run_stability(config, tmp_path, progress=False)
    assert again == summary


def test_stability_of_imp_subnetworks(tmp_path):
    imp_config = imp_lenet_digits.get_config("quick")
    imp_config.model = "mlp"
    imp_config.model_kwargs = {"widths": (32,)}
    imp_config.levels = 1
    imp_config.controls = ()
    imp_config.pruning.layer_rates = ""
    imp.run_imp(imp_config, tmp_path / "imp", progress=False)
    config = _config(imp_workdir=str(tmp_path / "imp"), imp_level=1, rewind_steps=("0it",))
    stability.run_stability(config, tmp_path / "lmc", progress=False)
    copies = [r for r in results.MetricsLog(tmp_path / "lmc" / "metrics.jsonl").read()
              if r["branch"] == "copies"]
    kept = (2048 - 410) + (320 - 64)  # layerwise 20 %: ceil per layer
    densities = {r["density"] for r in copies}
    assert len(densities) == 1
    assert densities.pop() == pytest.approx(kept / (2048 + 320))
    with pytest.raises(ValueError, match="imp_level=4 does not exist"):
        stability.run_stability(_config(imp_workdir=str(tmp_path / "imp"), imp_level=4),
                                tmp_path / "lmc4", progress=False)
    with pytest.raises(ValueError, match="seed"):
        stability.run_stability(_config(imp_workdir=str(tmp_path / "imp"), imp_level=1, seed=5),
                                tmp_path / "lmc5", progress=False)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="rewind_steps"):
        stability.run_stability(_config(rewind_steps=("10ep",)), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="num_copies"):
        stability.run_stability(_config(num_copies=1), tmp_path / "b", progress=False)
