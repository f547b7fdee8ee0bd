"""Dense-training study end to end: outputs, resume after a kill, config guard."""

import json

import numpy as np
import pytest

from experiments.configs import lenet_digits
from ltjax.engine import executor as executor_lib
from ltjax.io import results
from ltjax.studies import common, dense


def _config(**overrides):
    config = lenet_digits.get_config("quick")
    config.model_kwargs = {"widths": (32,)}
    config.model = "mlp"
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


class _Killed(Exception):
    pass


@pytest.mark.parametrize("checkpoint_every", ["1ep", "2ep"])
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, on_training, capsys,
                                                    checkpoint_every):
    config = _config(checkpoint_every=checkpoint_every, training_steps="3ep")
    straight = dense.run_dense(config, tmp_path / "straight", progress=False)
    assert capsys.readouterr().out == ""  # progress=False is silent

    calls = []

    def dies_on_second_call(call):
        calls.append(1)
        if len(calls) == 2:
            raise _Killed

    on_training(dies_on_second_call)
    with pytest.raises(_Killed):
        dense.run_dense(config, tmp_path / "resumed", progress=False)
    on_training(None)
    capsys.readouterr()
    resumed = dense.run_dense(config, tmp_path / "resumed", progress=True)
    said = capsys.readouterr().out
    assert said.startswith("loading digits\n") and "2 replicate(s)" in said
    # 1ep: the kill came after step 23's checkpoint; 2ep: before the first one (step 46).
    assert ("resuming at step 23 of 69" in said) == (checkpoint_every == "1ep")
    dense.run_dense(config, tmp_path / "resumed", progress=True)
    assert "finished (step 69), restored" in capsys.readouterr().out

    assert resumed == straight
    log_a = results.MetricsLog(tmp_path / "straight" / "metrics.jsonl").read()
    log_b = results.MetricsLog(tmp_path / "resumed" / "metrics.jsonl").read()
    assert log_a == log_b
    assert results.read_csv(tmp_path / "straight" / "results.csv") == results.read_csv(
        tmp_path / "resumed" / "results.csv")


def test_outputs_and_rerun_skips_finished_work(tmp_path, on_training, sealed):
    config = sealed(_config(), dense.DenseSpec)
    summary = dense.run_dense(config, tmp_path, progress=False)
    for name in ("config.json", "metrics.jsonl", "results.csv", "plots/learning_curve.png"):
        assert (tmp_path / name).exists(), name
    assert json.loads((tmp_path / "config.json").read_text())["num_replicates"] == 2
    records = results.MetricsLog(tmp_path / "metrics.jsonl").read()
    steps = sorted({r["step"] for r in records})
    assert steps == [0, 23, 46]  # digits: 1437 // 60 = 23 steps per epoch
    assert {r["replicate"] for r in records} == {0, 1}
    rows = results.read_csv(tmp_path / "results.csv")  # tidy: one row per member
    assert [r["replicate"] for r in rows] == ["0", "1"]
    accuracies = [float(r["test_accuracy"]) for r in rows]
    mean, std = results.read_csv(tmp_path / "summary.csv")
    assert (mean["stat"], std["stat"]) == ("mean", "std") and "replicate" not in mean
    np.testing.assert_allclose(float(mean["test_accuracy"]), np.mean(accuracies), rtol=1e-6)
    np.testing.assert_allclose(float(std["test_accuracy"]), np.std(accuracies), rtol=1e-6)
    assert min(summary["final"]["test"]["accuracy"]) > 0.3  # chance is 0.1

    def must_not_train(call):
        raise AssertionError("a finished run must not train again")

    on_training(must_not_train)
    again = dense.run_dense(config, tmp_path, progress=False)
    assert again == summary
    assert results.MetricsLog(tmp_path / "metrics.jsonl").read() == records


def test_adding_seeds_keeps_existing_ones(tmp_path):
    two = dense.run_dense(_config(num_replicates=2), tmp_path / "two", progress=False)
    four = dense.run_dense(_config(num_replicates=4), tmp_path / "four", progress=False)
    # Bit for bit: the executor runs each member through one block program whatever S is.
    np.testing.assert_array_equal(four["final"]["test"]["loss"][:2],
                                  two["final"]["test"]["loss"])
    rows = {n: [r for r in results.read_csv(tmp_path / n / "results.csv")
                if r["replicate"] in ("0", "1")] for n in ("two", "four")}
    assert rows["two"] == rows["four"]


def test_workdir_of_another_config_is_refused(tmp_path, on_training):
    dense.run_dense(_config(), tmp_path / "done", progress=False)
    with pytest.raises(ValueError, match="different config.*seed"):
        dense.run_dense(_config(seed=1), tmp_path / "done", progress=False)
    # A run stopped before its first checkpoint leaves nothing to lose: a corrected
    # config takes the workdir over, with the abandoned run's records dropped.
    def killed(call):
        raise _Killed

    on_training(killed)
    with pytest.raises(_Killed):
        dense.run_dense(_config(), tmp_path / "early", progress=False)
    assert (tmp_path / "early" / "metrics.jsonl").exists()  # the step-0 evaluation
    on_training(None)
    dense.run_dense(_config(seed=1), tmp_path / "early", progress=False)
    dense.run_dense(_config(seed=1), tmp_path / "fresh", progress=False)
    for name in ("metrics.jsonl", "results.csv", "config.json"):
        assert (tmp_path / "early" / name).read_text() == (tmp_path / "fresh" / name).read_text()


def test_unknown_dataset_and_model_are_named(tmp_path):
    with pytest.raises(ValueError, match="name"):
        dense.run_dense(_config(dataset="imagenet"), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="resnet"):
        dense.run_dense(_config(model="resnet7", model_kwargs={}), tmp_path / "b",
                        progress=False)
    # The weight correlation's p is checked before the workdir (after the training until
    # 2026-12-07: sanity.weight_correlation refused it at the end).
    for bad in (2.0, 0.0, True):
        with pytest.raises(ValueError, match=r"config\.correlation_p must be a number in"):
            dense.run_dense(_config(correlation_p=bad), tmp_path / "c", progress=False)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_config_name_lists_from_flags_are_split_and_checked():
    # --config.controls=reinit,oneshot reaches a tuple field as ('reinit,oneshot',).
    allowed = ("reinit", "oneshot", "small_dense")
    assert common.names_of(("reinit,oneshot",), field="controls", allowed=allowed) == (
        "reinit", "oneshot")
    assert common.names_of(("reinit", "oneshot", "reinit"), field="controls",
                           allowed=allowed) == ("reinit", "oneshot")
    assert common.names_of((), field="controls", allowed=allowed) == ()
    with pytest.raises(ValueError, match=r"config.controls must be among .*'prune'"):
        common.names_of("reinit,prune", field="controls", allowed=allowed)


@pytest.mark.parametrize("damage", ["flipped_bytes", "missing_manifest"])
def test_damaged_checkpoints_resume_to_identical_files(tmp_path, damage):
    """A damaged newest step (or every step) is moved aside and retrained: same files."""
    import os

    from test_checkpoint import DAMAGE

    config = _config(checkpoint_every="1ep", training_steps="3ep", max_checkpoints=2)
    dense.run_dense(config, tmp_path / "run", progress=False)
    files = {n: (tmp_path / "run" / n).read_bytes() for n in ("results.csv", "metrics.jsonl")}
    folder = tmp_path / "run" / "checkpoints"
    ckpt_dirs = sorted({root for root, dirs, _ in os.walk(folder) if "state" in dirs})
    for step_dir in ckpt_dirs[-1:] if damage == "flipped_bytes" else ckpt_dirs:
        DAMAGE[damage](step_dir)
    dense.run_dense(config, tmp_path / "run", progress=False)
    assert {n: (tmp_path / "run" / n).read_bytes() for n in files} == files
    assert any(p.name.endswith(".damaged") for p in (tmp_path / "run").rglob("*"))


def test_checkpoints_of_another_config_are_refused_after_config_json_is_deleted(tmp_path):
    dense.run_dense(_config(), tmp_path, progress=False)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match="another config"):
        dense.run_dense(_config(seed=1), tmp_path, progress=False)


def test_divergence_is_flagged_once_in_the_log_and_warnings(tmp_path, caplog):
    """Adam at a learning rate of 1e6 ends at chance with a huge loss: flagged, not silent."""
    np.testing.assert_array_equal(common.diverged([2.3, 2.3, 0.01, 2.3], [229.0, 231.0, 99.0,
                                                                          np.nan]),
                                  [False, True, False, True])  # floor of 1 for the third
    config = _config()
    config.recipe.learning_rate = 1e6
    with caplog.at_level("WARNING"):
        dense.run_dense(config, tmp_path / "bad", progress=False)
    records = results.MetricsLog(tmp_path / "bad" / "metrics.jsonl").read()
    warned = common.read_warnings(tmp_path / "bad")
    first = warned[0]["split"]  # the segment's first split
    assert first == next(r["split"] for r in records)
    start = {r["replicate"]: r["loss"] for r in records if r["step"] == 0 and r["split"] == first}
    # The oracle: the first logged evaluation whose loss is over 100x max(start, 1).
    expected = {}
    for r in sorted(records, key=lambda r: r["step"]):
        if r["split"] == first and r["step"] > 0 and r["replicate"] not in expected and (
                r["loss"] > 100 * max(start[r["replicate"]], 1.0)):
            expected[r["replicate"]] = r["step"]
    assert expected  # the run did diverge
    assert {w["replicate"]: w["step"] for w in warned} == expected
    assert all(w["kind"] == "divergence" for w in warned)
    assert sum("diverged" in m for m in caplog.messages) == len(expected)
    dense.run_dense(config, tmp_path / "bad", progress=False)  # a re-run adds nothing
    assert common.read_warnings(tmp_path / "bad") == warned
    dense.run_dense(_config(), tmp_path / "good", progress=False)
    assert common.read_warnings(tmp_path / "good") == []
    # The closing lines of a command-line run: the warnings, then what was written.
    from ltjax import cli

    bad = cli.closing_lines(tmp_path / "bad").splitlines()
    assert [line for line in bad if line.startswith("WARNING: diverged")] == [
        f"WARNING: {w['message']}" for w in warned]
    good = cli.closing_lines(tmp_path / "good").splitlines()
    assert len(good) == 1 and good[0].startswith(f"wrote {tmp_path / 'good'}: ")
    for name in ("config.json", "metrics.jsonl", "results.csv", "plots/learning_curve.png",
                 "checkpoints/"):
        assert name in good[0]


@pytest.mark.parametrize("study", ["dense", "stability", "early_phase", "soups"])
def test_bad_shared_fields_fail_before_any_work(tmp_path, monkeypatch, study):
    """Each bad value is named before anything is loaded, compiled or written."""
    import importlib

    from ltjax.studies import early_phase, soups, stability

    run, name = {"dense": (dense.run_dense, "lenet_digits"),
                 "stability": (stability.run_stability, "stability_lenet_digits"),
                 "early_phase": (early_phase.run_early_phase, "early_phase_lenet_digits"),
                 "soups": (soups.run_soups, "soups_lenet_digits")}[study]

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the config was checked")

    monkeypatch.setattr(executor_lib.Executor, "init", no_work)
    monkeypatch.setattr(executor_lib.Executor, "train", no_work)
    cases = [("num_replicates", 0, r"config.num_replicates must be an int >= 1, got 0"),
             ("seed", -1, r"config.seed must be an int >= 0, got -1"),
             ("recipe.batch_size", 0, r"config.recipe.batch_size must be an int >= 1, got 0"),
             ("eval_every", "0ep", r"config.eval_every='0ep' is less than one step"),
             ("checkpoint_every", "0it", r"config.checkpoint_every='0it' is less than one step")]
    if study == "early_phase":  # its own IMP run's settings, checked before its workdir
        cases += [("pruning.fraction", -0.1, r"fraction must be a number in \[0, 1\)"),
                  ("pruning.scope", "glob", r"scope must be one of")]
    ran = []
    for i, (field, value, message) in enumerate(cases):
        config = importlib.import_module(f"experiments.configs.{name}").get_config("quick")
        parent, _, leaf = field.rpartition(".")
        target = config[parent] if parent else config
        if leaf not in target:
            continue
        target[leaf] = value
        with pytest.raises(ValueError, match=message):
            run(config, tmp_path / str(i), progress=False)
        assert not (tmp_path / str(i)).exists(), field
        ran.append(field)
    assert len(ran) >= 4, ran  # every study has (nearly) all the shared fields


def test_telemetry_on_its_schedule_resumes_and_changes_no_training(tmp_path, on_training):
    """Frankle et al. 2020's telemetry: on the schedule, exact at both ends, kill-safe."""
    from experiments.configs import add_telemetry
    from ltjax.methods import telemetry

    assert telemetry.schedule(46, dense_every=5, dense_until=20, every=10) == [
        0, 5, 10, 15, 20, 30, 40, 46]
    assert telemetry.schedule(3000, dense_every=500, dense_until=1000, every=1000) == [
        0, 500, 1000, 2000, 3000]
    with pytest.raises(ValueError, match="dense_every must be an int >= 1"):
        telemetry.schedule(10, dense_every=0)

    def config():
        c = _config()
        add_telemetry(c)
        c.telemetry.update(dense_every="5it", dense_until="20it", every="10it", tracked=3)
        return c

    plain = dense.run_dense(_config(), tmp_path / "plain", progress=False)
    observed = dense.run_dense(config(), tmp_path / "observed", progress=False)
    assert observed == plain  # observing stops the training calls more often, nothing else
    logs = [results.MetricsLog(tmp_path / n / "metrics.jsonl").read() for n in ("plain",
                                                                             "observed")]
    assert len(logs[0]) == len(logs[1])
    for a, b in zip(*logs, strict=True):  # the running mean's chunk sums add up otherwise
        if a["split"] == "train_running":
            assert {**a, "loss": 0} == {**b, "loss": 0}
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        else:
            assert a == b
    rows = results.read_csv(tmp_path / "observed" / "telemetry.csv")
    steps = [0, 5, 10, 15, 20, 30, 40, 46]
    for quantity in telemetry.QUANTITIES + telemetry.FINAL_QUANTITIES:
        for r in ("0", "1"):
            got = sorted({int(x["step"]) for x in rows if x["quantity"] == quantity
                          and x["replicate"] == r and x["layer"] == "global"})
            assert got == steps, (quantity, r)
    assert not list((tmp_path / "observed" / "telemetry_snapshots").glob("*.npz"))

    def value(quantity, step, layer="global", replicate="0"):
        (v,) = [float(x["value"]) for x in rows if (x["quantity"], int(x["step"]), x["layer"],
                                                   x["replicate"]) == (quantity, step, layer,
                                                                        replicate)]
        return v

    # At T the weights are the final ones; at 0 they are W_0: each distance is symmetric.
    assert value("l2_final", 46) == 0.0 and value("sign_change_final", 46) == 0.0
    assert value("cosine_final", 46) == pytest.approx(1.0, abs=1e-6)
    for a, b in (("l2_final", "l2_init"), ("sign_change_final", "sign_change_init"),
                 ("cosine_final", "cosine_init")):
        assert value(a, 0) == pytest.approx(value(b, 46), rel=1e-5)
    # ||W_T - W_0|| of Dense_0 against NumPy, from the final checkpoint and a fresh init.
    from ltjax.core import rng
    from ltjax.io import checkpoint
    executor = common.build_executor(_config(), common.build_model(_config(), dense_data()),
                                     dense_data(), common.build_recipe(_config(), dense_data()))
    start = executor.init(rng.init_and_noise(rng.replicate_keys(0, 2))[0])
    with checkpoint.Checkpointer(tmp_path / "observed" / "checkpoints") as ckpt:
        _, final, _, _ = ckpt.restore_latest(like_state=start)
    w_t = np.asarray(final.params["Dense_0"]["kernel"][1], np.float64)
    w_0 = np.asarray(start.params["Dense_0"]["kernel"][1], np.float64)
    assert value("l2_init", 46, "Dense_0/kernel", "1") == pytest.approx(
        np.linalg.norm(w_t - w_0), rel=1e-5)

    # Killed in the middle, resumed: the same telemetry.csv.
    calls = []

    def dies(call):
        calls.append(1)
        if len(calls) == 5:
            raise _Killed

    on_training(dies)
    with pytest.raises(_Killed):
        dense.run_dense(config(), tmp_path / "killed", progress=False)
    on_training(None)
    dense.run_dense(config(), tmp_path / "killed", progress=False)
    assert ((tmp_path / "killed" / "telemetry.csv").read_text()
            == (tmp_path / "observed" / "telemetry.csv").read_text())


def dense_data():
    from ltjax.io import data

    return data.load("digits")


def test_a_finished_segment_restores_without_its_start_and_refuses_other_masks(tmp_path):
    # Run.segment(state=<function>) over a finished segment restores it without calling the
    # function, and refuses masks other than the ones it trained with (the lazy path's check).
    import jax

    from ltjax.core import masking
    from ltjax.studies.spec import RunSpec

    spec = RunSpec.from_config(_config(training_steps="4it", eval_every="2it",
                                       checkpoint_every="2it", num_replicates=1),
                               progress=False)
    run = spec.open(tmp_path)
    init_keys, noise_keys = spec.keys()
    state = spec.executor.init(init_keys)
    ones = masking.ones_like(state.params)
    masks = jax.tree.map(lambda m: m.at[..., 0].set(False), ones)  # a planted mask
    first = run.segment("s", state=lambda: state, noise_keys=noise_keys, masks=masks)

    def never():
        raise AssertionError("the start state of a finished segment was built")

    again = run.segment("s", state=never, noise_keys=noise_keys, masks=masks)
    for a, b in zip(jax.tree.leaves(jax.device_get(first.state)), jax.tree.leaves(
            jax.device_get(again.state)), strict=True):
        np.testing.assert_array_equal(a, b)
    # The restored segment's curves are the trained one's, as its records in the log say.
    assert again.curves.steps.tolist() == first.curves.steps.tolist() == [0, 2, 4]
    logged = [r for r in run.log.read() if r["split"] == "test"]
    assert again.curves.records([{"replicate": 0}]) == first.curves.records(
        [{"replicate": 0}]) == logged
    with pytest.raises(ValueError, match="trained with other masks"):
        run.segment("s", state=never, noise_keys=noise_keys, masks=ones)


def test_a_sealed_config_refuses_reads_once_its_spec_is_built():
    """The check the study tests run on their configs (conftest's ``sealed``: imp, stability,
    grokking tickets, re-basin): it catches a read after the spec, and a spec never built."""
    from conftest import sealed_after_spec

    from ltjax.studies.spec import RunSpec

    config = lenet_digits.get_config("quick")
    with sealed_after_spec(config, RunSpec) as proxy:
        assert proxy.seed == config.seed  # before the spec: reads pass through
        RunSpec.from_config(proxy, progress=False)
        with pytest.raises(AssertionError, match=r"config\.seed read after"):
            _ = proxy.seed
        with pytest.raises(AssertionError, match=r"config\['model'\] read after"):
            _ = proxy["model"]
    with pytest.raises(AssertionError, match="no RunSpec was built"):
        with sealed_after_spec(config, RunSpec):
            pass


def test_a_segment_trains_and_evaluates_its_intervals_in_one_program_per_call(
        tmp_path, monkeypatch):
    # digits: 23 steps per epoch. Evaluations every epoch, checkpoints every 3, at most 46
    # steps per call, 104 steps: calls of 2 intervals (0 -> 46), 1 (46 -> 69: a checkpoint)
    # and 1 (69 -> 92), then 12 steps trained alone and evaluated at the end; only the start
    # is evaluated outside a training program.
    fused, trained, evaluated = [], [], []
    cls = executor_lib.Executor
    real = cls.train_and_evaluate, cls.train, cls.evaluate
    monkeypatch.setattr(cls, "train_and_evaluate", lambda self, *a, **k: fused.append(
        (k["num_intervals"], k["interval"])) or real[0](self, *a, **k))
    monkeypatch.setattr(cls, "train", lambda self, *a, **k: trained.append(
        k["num_steps"]) or real[1](self, *a, **k))
    monkeypatch.setattr(cls, "evaluate", lambda self, state, split, masks=None: evaluated.append(
        split) or real[2](self, state, split, masks))
    monkeypatch.setattr(common, "IN_PROGRAM_STEPS", 46)
    config = _config(eval_every="1ep", checkpoint_every="3ep", training_steps="104it")
    dense.run_dense(config, tmp_path, progress=False)
    assert fused == [(2, 23), (1, 23), (1, 23)] and trained == [12]
    assert evaluated == ["test", "train"] * 2  # the start, and step 104 after the part interval
    records = results.MetricsLog(tmp_path / "metrics.jsonl").read()
    assert sorted({r["step"] for r in records}) == [0, 23, 46, 69, 92, 104]
    running = [r for r in records if r["split"] == "train_running" and r["replicate"] == 0]
    assert [r["step"] for r in running] == [23, 46, 69, 92, 104]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in running)
