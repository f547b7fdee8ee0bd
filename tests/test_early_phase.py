"""The early-phase perturbation study: the unperturbed ticket is IMP's, closed-form noise, rerun."""

import jax
import numpy as np
import pytest

from experiments.configs import early_phase_lenet_digits
from ltjax.core import masking
from ltjax.io import results
from ltjax.studies import common, early_phase, imp_runs
from ltjax.studies.spec import RunSpec


def _rows(path):
    """The replicate rows of a results CSV with numbers parsed."""
    out = []
    for row in results.read_csv(path):
        out.append({key: (value if key in ("perturbation", "branch") else float(value))
                    for key, value in row.items()})
    return out


def _config(**overrides):
    config = early_phase_lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (32, 16)}
    config.training_steps = "2ep"
    config.eval_every = "2ep"
    config.checkpoint_every = "1ep"
    config.imp_level = 1
    config.perturbations = ("none", "reinit", "shuffle_layer_same_sign", "gaussian@1")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_early_phase_study_against_imp_rewound_to_each_k_and_closed_forms(tmp_path, sealed):
    # Glorot init: sigma_l is the model's own init std, sqrt(2 / (fan_in + fan_out)), not He's.
    # Level 2: the level-1 masks come from the same dense run whatever k, level 2's do not.
    config = _config(imp_level=2, model_kwargs={"widths": (32, 16),
                                                "kernel_init": "glorot_normal"})
    sealed_config = sealed(config, early_phase.EarlyPhaseSpec)  # read once, by the spec
    early_phase.run_early_phase(sealed_config, tmp_path, progress=False)
    first = (tmp_path / "results.csv").read_text()
    rows = _rows(tmp_path / "results.csv")
    assert {(r["k"], r["perturbation"]) for r in rows} == {
        (k, p) for k in (0, 10) for p in config.perturbations}

    # The unperturbed member at k is the ticket of the IMP run rewound to k, trained alike;
    # the two runs' level-2 masks differ (Frankle et al. 2020: the ticket at k is k's own).
    run_spec = RunSpec.from_config(config, progress=False)
    executor = run_spec.executor
    like = executor.shard(masking.ones_like(executor.init(
        jax.random.split(jax.random.key(0), 2)).params))
    masks = {k: jax.device_get(imp_runs.load_imp_masks(tmp_path / f"imp_{text}", 2, like))
             for k, text in ((0, "0it"), (10, "10it"))}
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(masks[0]), jax.tree.leaves(masks[10]), strict=True))
    ticket_accuracy = {}
    for k, text in ((0, "0it"), (10, "10it")):
        imp_rows = [r for r in _rows(tmp_path / f"imp_{text}" / "results.csv")
                    if r["level"] == 2 and r["branch"] == "imp"]
        assert len(imp_rows) == 2
        for r in imp_rows:
            (mine,) = [x for x in rows if x["k"] == k and x["perturbation"] == "none"
                       and x["replicate"] == r["replicate"]]
            assert mine["test_accuracy"] == r["test_accuracy"]
            assert mine["density"] == pytest.approx(r["density"], abs=1e-6)
            ticket_accuracy[k, r["replicate"]] = r["test_accuracy"]

    # Each member's accuracy is its last logged evaluation; the drop is from IMP's ticket.
    logged = {(r["k"], r["perturbation"], r["replicate"]): r["accuracy"]
              for r in sorted(results.MetricsLog(tmp_path / "metrics.jsonl").read(),
                              key=lambda r: r["step"])
              if r.get("branch") == "perturbed" and r["split"] == "test"}
    for row in rows:
        key = (int(row["k"]), row["perturbation"], int(row["replicate"]))
        assert row["test_accuracy"] == logged[key]
        assert row["test_accuracy_drop"] == pytest.approx(
            ticket_accuracy[key[0], key[2]] - logged[key], abs=1e-12)

    # Gaussian noise at n = 1: the pooled std of sigma_l * eps over the kept weights, with
    # sigma_l the Glorot std of the layer (He's would be 22-27 % larger here).
    for k in (0, 10):
        for rep in range(2):
            kept = {n: int(np.asarray(masks[k][n]["kernel"][rep]).sum()) for n in masks[k]}
            fans = {n: masks[k][n]["kernel"].shape[1:] for n in masks[k]}
            total = sum(kept.values())
            expected = np.sqrt(sum(kept[n] * 2.0 / sum(fans[n]) for n in kept) / total)
            (row,) = [x for x in rows if x["k"] == k and x["perturbation"] == "gaussian@1"
                      and x["replicate"] == rep]
            assert row["effective_std"] == pytest.approx(expected, rel=5 / np.sqrt(2 * total))
            (ticket,) = [x for x in rows if x["k"] == k and x["perturbation"] == "none"
                         and x["replicate"] == rep]
            assert ticket["effective_std"] == 0.0
    assert (tmp_path / "plots" / "perturbations.png").exists()

    early_phase.run_early_phase(sealed_config, tmp_path, progress=False)  # finished: same files
    assert (tmp_path / "results.csv").read_text() == first


def test_one_imp_run_at_every_k_needs_imp_mask_at_any_k(tmp_path, sealed):
    """An IMP run rewound to 0 used at k = 10 is refused unless asked for by name."""
    imp_dir = tmp_path / "study" / "imp_0it"
    config = _config(perturbations=("none",), rewind_steps=("0it",))
    early_phase.run_early_phase(config, tmp_path / "study", progress=False)
    with pytest.raises(ValueError, match="imp_mask_at_any_k"):
        early_phase.run_early_phase(_config(rewind_steps=("0it", "10it"),
                                            imp_workdir=str(imp_dir)),
                                    tmp_path / "any_k", progress=False)
    assert not (tmp_path / "any_k").exists()
    config = _config(perturbations=("none",), rewind_steps=("0it", "10it"),
                     imp_workdir=str(imp_dir), imp_mask_at_any_k=True)
    early_phase.run_early_phase(sealed(config, early_phase.EarlyPhaseSpec), tmp_path / "any_k",
                                progress=False)
    rows = _rows(tmp_path / "any_k" / "results.csv")
    assert sorted(r["k"] for r in rows) == [0, 0, 10, 10]
    assert not (tmp_path / "any_k" / "imp_10it").exists()


@pytest.mark.parametrize("overrides, match", [
    ({"perturbations": ("none", "melt")}, "unknown perturbation"),
    ({"perturbations": ("reinit",)}, "'none'"),
    ({"perturbations": ("none", "flip_signs@1.5")}, "share"),
    ({"perturbations": ("none", "gaussian@-1")}, "scale"),
    ({"rewind_steps": ("0it", "2ep")}, "rewind_steps"),
    ({"imp_level": 0}, "imp_level"),
    ({"imp_workdir": "/nonexistent/imp"}, "imp_workdir"),
])
def test_bad_config_is_refused_before_any_work(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        early_phase.run_early_phase(_config(**overrides), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_telemetry_of_the_dense_early_phase_and_the_perturbed_members(tmp_path, monkeypatch,
                                                                      sealed):
    from experiments.configs import add_telemetry

    config = _config(perturbations=("none", "gaussian@1"))
    add_telemetry(config)
    config.telemetry.update(dense_every="5it", dense_until="20it", every="10it", tracked=3,
                            hessian_steps=("0it",), hessian_iterations=3)
    seen = {}
    original = common.train_segment

    def spy(executor, *, state, tags, **kwargs):
        out = original(executor, state=state, tags=tags, **kwargs)
        if "k" in tags:  # the study's segments, not its IMP run's
            seen[tags["branch"], tags["k"]] = (jax.device_get(state), jax.device_get(out[0]))
        return out

    monkeypatch.setattr(common, "train_segment", spy)
    early_phase.run_early_phase(sealed(config, early_phase.EarlyPhaseSpec), tmp_path,
                                progress=False)
    rows = results.read_csv(tmp_path / "telemetry.csv")
    end = 2 * (1437 // 60)  # 46 steps; the schedule: 0, 5, ..., 20, 30, 40, 46

    def value(branch, quantity, step, replicate, k="", perturbation="", layer="global"):
        (row,) = [r for r in rows if (r["branch"], r["k"], r["perturbation"], r["step"],
                                      r["replicate"], r["layer"], r["quantity"]) == (
            branch, str(k), perturbation, str(step), str(replicate), layer, quantity)]
        return float(row["value"])

    # The dense parent: one trajectory from init to the last k (10), each step once.
    parent = [r for r in rows if r["branch"] == "parent" and r["quantity"] == "l2_init"
              and r["layer"] == "global" and r["replicate"] == "0"]
    assert sorted(int(r["step"]) for r in parent) == [0, 5, 10]
    init, at_10 = seen["parent", 10][0].params, seen["parent", 10][1].params
    for rep in range(2):
        kernels = [(np.asarray(at_10[n]["kernel"][rep]), np.asarray(init[n]["kernel"][rep]))
                   for n in sorted(init)]
        expected = np.sqrt(sum(np.sum((w - w0) ** 2) for w, w0 in kernels))
        assert value("parent", "l2_init", 10, rep) == pytest.approx(expected, rel=1e-5)
        changed = sum(np.sum(np.sign(w) != np.sign(w0)) for w, w0 in kernels)
        assert value("parent", "sign_change_init", 10, rep) == pytest.approx(
            changed / sum(w.size for w, _ in kernels), abs=1e-7)
        assert value("parent", "l2_init", 0, rep) == 0.0

    # The members: from their start at k (distance 0 there) to their own final weights.
    for k in (0, 10):
        steps = sorted({int(r["step"]) for r in rows if r["branch"] == "perturbed"
                        and r["k"] == str(k) and r["quantity"] == "l2_init"})
        assert steps == [s for s in (0, 5, 10, 15, 20, 30, 40, 46) if s >= k]
        for name in ("none", "gaussian@1"):
            for rep in range(2):
                assert value("perturbed", "l2_init", k, rep, k, name) == 0.0
                assert value("perturbed", "sign_change_init", k, rep, k, name) == 0.0
                assert value("perturbed", "l2_final", end, rep, k, name) == 0.0
                assert value("perturbed", "l2_final", k, rep, k, name) > 0.0
    # A sparse member is measured over its kept weights (the pruned zeros do not dilute it).
    like = jax.tree.map(lambda x: np.ones((1, *x.shape[1:]), bool), seen["parent", 10][0].params)
    masks = imp_runs.load_imp_masks(tmp_path / "imp_10it", 1, like)
    start = seen["perturbed", 10][0].params
    for member, (name, rep) in enumerate([("none", 0), ("none", 1)]):
        kept = np.concatenate([np.abs(np.asarray(start[n]["kernel"][member]))[
            np.asarray(masks[n]["kernel"][rep])] for n in sorted(start)])
        assert value("perturbed", "mean_magnitude", 10, rep, 10, name) == pytest.approx(
            kept.mean(), rel=1e-5)
    assert not list((tmp_path / "telemetry_snapshots").rglob("*.npz"))  # removed after use
    assert (tmp_path / "plots" / "telemetry.png").exists()
