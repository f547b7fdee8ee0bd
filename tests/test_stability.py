"""Instability study: copies share the init and differ in data order; end to end on digits."""

import itertools

import jax
import numpy as np
import pytest

from experiments.configs import imp_lenet_digits, stability_lenet_digits
from ltjax.core import rng
from ltjax.io import data, results
from ltjax.studies import common, imp, imp_runs, stability


def _config(**overrides):
    config = stability_lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (32,)}
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_copy_noise_keys_differ_and_do_not_depend_on_counts():
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


def test_stability_run_end_to_end(tmp_path, monkeypatch, drawn, sealed):
    config = _config()
    seen = _capture_segments(monkeypatch, keep_all=True)
    summary = stability.run_stability(sealed(config, stability.StabilitySpec), tmp_path,
                                      progress=False)
    rows = results.read_csv(tmp_path / "results.csv")
    # 2 rewind steps x 2 replicates x 1 pair x 2 splits
    assert len(rows) == 2 * 2 * 1 * 2
    assert {r["k"] for r in rows} == {"0", "18"}  # 1ep = 1137 // 60 steps
    records = results.MetricsLog(tmp_path / "metrics.jsonl").read()
    path_records = [r for r in records if r["branch"] == "path"]
    for row in rows:
        path = sorted((r for r in path_records if str(r["k"]) == row["k"]
                       and str(r["replicate"]) == row["replicate"] and r["split"] == row["split"]),
                      key=lambda r: r["alpha"])
        alphas = [r["alpha"] for r in path]
        assert alphas == pytest.approx(list(np.linspace(0, 1, 5)))
        errors = [1 - r["accuracy"] for r in path]
        expected = max(errors) - (errors[0] + errors[-1]) / 2
        assert float(row["instability"]) == pytest.approx(expected, abs=1e-6)
        assert row["stable"] == str(float(row["instability"]) < 0.02)
        # The path's ends are the copies themselves: their test accuracy as the
        # training loop evaluated it (another program) at the last step.
        if row["split"] == "test":
            rep = int(row["replicate"])
            finals = {r["replicate"]: r["accuracy"] for r in records
                      if r["branch"] == "copies" and str(r["k"]) == row["k"]
                      and r["step"] == 72 and r["split"] == "test"}
            assert path[0]["accuracy"] == pytest.approx(finals[2 * rep], abs=1e-6)
            assert path[-1]["accuracy"] == pytest.approx(finals[2 * rep + 1], abs=1e-6)
    # Copies were trained from the parent's step, to the end.
    copies = [r for r in records if r["branch"] == "copies" and r["k"] == 18]
    assert min(r["step"] for r in copies) == 18
    assert {r["replicate"] for r in copies} == {0, 1, 2, 3}
    # The copies of an initialisation are identical at step k (the whole state:
    # weights, optimiser, step), and are the parent's state at k.
    for k in (0, 18):
        parent, start = seen["parent", k][1], seen["copies", k][0]
        for leaf, leaf_k in zip(jax.tree.leaves(start), jax.tree.leaves(parent), strict=True):
            np.testing.assert_array_equal(np.asarray(leaf), np.repeat(np.asarray(leaf_k), 2, 0))
    # The plots draw the study's numbers.
    means = {(r["k"], r["split"]): r["instability"] for r in
             results.read_csv(tmp_path / "summary.csv") if r["stat"] == "mean"}
    for split in ("train", "test"):
        ys = drawn["instability_vs_k.png"][0, split][1]
        np.testing.assert_allclose(ys, [100 * float(means[k, split]) for k in ("0", "18")],
                                   rtol=1e-6)
    ys = drawn["error_vs_alpha.png"][1, "k = 18"][1]  # the test panel
    test_18 = [r for r in path_records if r["k"] == 18 and r["split"] == "test"]
    np.testing.assert_allclose(ys, [100 * (1 - np.mean([r["accuracy"] for r in test_18
                                                         if r["alpha"] == a]))
                                    for a in sorted({r["alpha"] for r in test_18})], rtol=1e-6)
    assert len(summary["rows"]) == 4  # mean rows: 2 k x 2 splits
    again = stability.run_stability(config, tmp_path, progress=False)
    assert again == summary


def _imp_run(workdir, **overrides):
    imp_config = imp_lenet_digits.get_config("quick")
    imp_config.model = "mlp"
    imp_config.model_kwargs = {"widths": (32,)}
    imp_config.levels = 1
    imp_config.controls = ()
    imp_config.pruning.layer_rates = ""
    imp_config.rewind_step = "1ep"  # 18 steps: the copies' start differs from the init
    for key, value in overrides.items():
        setattr(imp_config, key, value)
    imp.run_imp(imp_config, workdir, progress=False)


def _capture_segments(monkeypatch, keep_all: bool = False) -> dict:
    """Record the start state and the result of each train_segment, by branch (and k)."""
    seen: dict = {}
    original = common.train_segment

    def spy(executor, *, state, tags, **kwargs):
        out = original(executor, state=state, tags=tags, **kwargs)
        key = (tags["branch"], tags["k"]) if keep_all else tags["branch"]
        seen[key] = (jax.device_get(state), jax.device_get(out[0]))
        return out

    monkeypatch.setattr(common, "train_segment", spy)
    return seen


def _adam_moments(opt_state) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(opt_state)
            if np.asarray(x).dtype == np.float32 and np.asarray(x).ndim > 1]


def test_stability_of_imp_subnetworks(tmp_path, monkeypatch):
    _imp_run(tmp_path / "imp", controls=("random_layerwise",))
    seen = _capture_segments(monkeypatch)
    config = _config(imp_workdir=str(tmp_path / "imp"), imp_level=1, rewind_steps=("1ep",))
    stability.run_stability(config, tmp_path / "lmc", progress=False)
    copies = [r for r in results.MetricsLog(tmp_path / "lmc" / "metrics.jsonl").read()
              if r["branch"] == "copies"]
    kept = (2048 - 410) + (320 - 64)  # layerwise 20 %: ceil per layer
    densities = {r["density"] for r in copies}
    assert len(densities) == 1
    assert densities.pop() == pytest.approx(kept / (2048 + 320))
    # The copies start as the IMP ticket trained: step-k weights under the mask, a
    # fresh optimiser (Adam's moments zero), the step counter at k.
    parent = seen["parent"][1]
    start = seen["copies"][0]
    masks = imp_runs.load_imp_masks(tmp_path / "imp", 1, jax.tree.map(
        lambda x: np.ones(x.shape, bool), parent.params))
    copies = config.num_copies
    for rep in range(2):
        for c in range(copies):
            member = rep * copies + c
            for w, w_k, m in zip(jax.tree.leaves(start.params), jax.tree.leaves(parent.params),
                                 jax.tree.leaves(masks), strict=True):
                np.testing.assert_array_equal(w[member], np.where(m[rep], w_k[rep], 0.0))
    assert np.all(np.asarray(start.step) == 18)
    moments = _adam_moments(start.opt_state)
    assert moments and all(np.all(x == 0) for x in moments)
    assert any(np.any(x != 0) for x in _adam_moments(parent.opt_state))

    # A mask found rewinding to 18 is refused at k = 0, before anything is written.
    with pytest.raises(ValueError, match="rewound to step 18 .* used at k = 0"):
        stability.run_stability(_config(imp_workdir=str(tmp_path / "imp"), imp_level=1,
                                        rewind_steps=("0it",)), tmp_path / "k0", progress=False)
    assert not (tmp_path / "k0").exists()
    for overrides, message in (({"imp_level": 4}, "imp_level=4 does not exist"),
                               ({"imp_level": 1, "seed": 5}, "seed"),
                               ({"imp_level": 1, "training_steps": "3ep"}, "trained 72 steps"),
                               ({"imp_level": 1}, "another recipe: learning_rate=0.0012")):
        config = _config(imp_workdir=str(tmp_path / "imp"), rewind_steps=("1ep",), **overrides)
        if "recipe" in message:
            config.recipe.learning_rate = 0.01
        with pytest.raises(ValueError, match=message):
            stability.run_stability(config, tmp_path / "bad", progress=False)
        assert not (tmp_path / "bad").exists()

    # Random pruning (imp_branch): the IMP run's random_layerwise control, from the same
    # step-k weights: each layer keeps the ticket's count, at other positions.
    ticket = [np.asarray(w) != 0 for w in jax.tree.leaves(start.params)]
    seen.clear()
    config = _config(imp_workdir=str(tmp_path / "imp"), imp_level=1, rewind_steps=("1ep",),
                     imp_branch="random_layerwise")
    stability.run_stability(config, tmp_path / "random", progress=False)
    start_random = seen["copies"][0]
    for w, w_k, kept in zip(jax.tree.leaves(start_random.params),
                            jax.tree.leaves(parent.params), ticket, strict=True):
        w = np.asarray(w)
        for rep in range(2):
            for c in range(copies):
                member = rep * copies + c
                np.testing.assert_array_equal(w[member] != 0, w[rep * copies] != 0)
                assert np.sum(w[member] != 0) == np.sum(kept[member])
                np.testing.assert_array_equal(w[member][w[member] != 0],
                                              np.asarray(w_k)[rep][w[member] != 0])
            if w.ndim == 3:  # kernels: the random mask is not the ticket's
                assert np.any((w[rep * copies] != 0) != kept[rep * copies])
    logged = {r["density"] for r in results.MetricsLog(tmp_path / "imp" / "metrics.jsonl").read()
              if r.get("branch") == "random_layerwise" and r.get("level") == 1}
    copies_random = {r["density"] for r in results.MetricsLog(
        tmp_path / "random" / "metrics.jsonl").read() if r["branch"] == "copies"}
    assert copies_random == logged and len(logged) == 1
    with pytest.raises(ValueError, match="imp_branch='oneshot'.*no such control"):
        stability.run_stability(_config(imp_workdir=str(tmp_path / "imp"), imp_level=1,
                                        rewind_steps=("1ep",), imp_branch="oneshot"),
                                tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="imp_branch must be one of"):
        stability.run_stability(_config(imp_workdir=str(tmp_path / "imp"), imp_level=1,
                                        rewind_steps=("1ep",), imp_branch="reinit"),
                                tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_ticket_start_keeps_the_step_k_optimiser_when_imp_rewound_it():
    from ltjax.engine import train

    w = np.arange(6.0, dtype=np.float32).reshape(2, 3) - 2.5
    masks = {"w": np.array([[True, False, True], [False, True, True]])}
    state_k = train.TrainState(step=np.int32(18), params={"w": w}, batch_stats={},
                               opt_state=({"mu": {"w": np.full((2, 3), 0.25, np.float32)}},))
    start = stability.ticket_start(None, state_k, masks, {"rewind_optimizer": True})
    np.testing.assert_array_equal(start.params["w"], np.where(masks["w"], w, 0.0))
    np.testing.assert_array_equal(start.opt_state[0]["mu"]["w"], np.full((2, 3), 0.25))
    assert int(start.step) == 18


def test_imp_workdirs_map_each_rewind_step_to_its_run():
    config = _config(imp_workdir="0it=runs/a, 1ep=runs/b")
    assert imp_runs.imp_workdirs(config, [0, 18], 18) == {0: "runs/a", 18: "runs/b"}
    assert imp_runs.imp_workdirs(_config(imp_workdir="runs/a"), [0, 18], 18) == {
        0: "runs/a", 18: "runs/a"}
    assert imp_runs.imp_workdirs(_config(imp_workdir=""), [0], 18) == {}
    for spec, message in (("0it=runs/a", r"k = \[0\] .* are \[0, 18\]"),
                          ("0it=runs/a,0ep=runs/b,1ep=runs/c", "given twice"),
                          ("0it=,1ep=runs/b", "no workdir"),
                          ("soon=runs/a,1ep=runs/b", "'<k>=<workdir>'")):
        with pytest.raises(ValueError, match=message):
            imp_runs.imp_workdirs(_config(imp_workdir=spec), [0, 18], 18)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="rewind_steps"):
        stability.run_stability(_config(rewind_steps=("10ep",)), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="num_copies"):
        stability.run_stability(_config(num_copies=1), tmp_path / "b", progress=False)
