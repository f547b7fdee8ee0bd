"""Nothing silently wrong: stale artefacts, unchecked IMP sources, the workdir lock,
checkpoint meta under the checksum, restored steps beyond a segment's end, one-class data.

Each test plants the defect's situation and fails on code that lets it through.
"""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import early_phase_lenet_digits, lenet_digits
from ltjax.core import rng
from ltjax.io import checkpoint, data, results
from ltjax.studies import common, early_phase

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _dense_config(**overrides):
    config = lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (32,)}
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


# ------------------------------------------------------------------ workdirs and artefacts


def test_a_checkpoint_free_workdir_taking_a_new_config_drops_every_old_artefact(tmp_path):
    old, new = _dense_config(seed=0), _dense_config(seed=1)
    common.prepare_workdir(tmp_path, old)
    for name in ("scores.npy", "metrics.jsonl", "noise.csv"):
        (tmp_path / name).write_text("of seed 0")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_text("of seed 0")
    common.prepare_workdir(tmp_path, old)  # same config: only the logs go
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock", "config.json", "noise.csv", "plots", "scores.npy"]
    common.prepare_workdir(tmp_path, new)  # another config: nothing of the old run stays
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "config.json"]
    assert results.read_json(tmp_path / "config.json")["seed"] == 1
    common.release_workdir_locks()


def test_a_workdir_that_is_a_file_or_a_truncated_config_json_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        common.prepare_workdir(tmp_path / "file", _dense_config())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('{"seed": ')
    with pytest.raises(ValueError, match=r"run/config.json does not read as JSON"):
        common.prepare_workdir(tmp_path / "run", _dense_config())
    common.release_workdir_locks()


def test_data_diet_never_reads_a_scores_file_it_did_not_fingerprint(tmp_path):
    """A ``scores.npy`` left in a workdir (here: planted garbage under the same config, no
    checkpoint) is not read back: the scores come from the fingerprinted checkpoint."""
    from experiments.configs import data_diet_lenet_digits
    from ltjax.studies import data_diet

    config = data_diet_lenet_digits.get_config("quick")
    config.model, config.model_kwargs = "mlp", {"widths": (32,)}
    config.score, config.score_step, config.kept = "grand", "0it", (0.5,)
    config.modes, config.training_steps = ("hardest",), "1ep"
    config.eval_every = config.checkpoint_every = "1ep"
    fresh = tmp_path / "fresh"
    data_diet.run_data_diet(config, fresh, progress=False)
    planted = tmp_path / "planted"
    common.prepare_workdir(planted, config)
    common.release_workdir_locks()
    np.save(planted / "scores.npy", np.arange(1437, dtype=np.float32))  # "hardest" = the last
    data_diet.run_data_diet(config, planted, progress=False)
    for name in ("scores.npy", "results.csv"):
        assert (planted / name).read_bytes() == (fresh / name).read_bytes(), name
    # Resumed under another config, the scores checkpoint is refused, not reused.
    config.seed = 1
    with pytest.raises(ValueError, match="different config"):
        data_diet.run_data_diet(config, planted, progress=False)


# ------------------------------------------------------------------------ the workdir lock


def _locked_by_another_process(workdir: pathlib.Path) -> bool:
    """Whether another process holds ``workdir``'s lock (a bare flock probe: no jax import)."""
    code = ("import fcntl, sys\nwith open(sys.argv[1], 'a+') as f:\n"
            "    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n")
    probe = subprocess.run([sys.executable, "-c", code, str(workdir / common.LOCK_NAME)],
                           capture_output=True, text=True, check=False, timeout=60)
    assert probe.returncode == 0 or "BlockingIOError" in probe.stderr, probe.stderr
    return probe.returncode != 0


def test_a_second_process_on_a_locked_workdir_is_refused_naming_the_holder(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    common.lock_workdir(workdir)
    common.lock_workdir(workdir)  # re-entrant in the holding process
    try:
        assert _locked_by_another_process(workdir)
        cli = subprocess.run(
            [sys.executable, "-m", "experiments.train",
             f"--config={ROOT / 'experiments/configs/lenet_digits.py'}:quick",
             f"--workdir={workdir}"], capture_output=True, text=True, cwd=ROOT, check=False,
            timeout=300)
        assert cli.returncode == 2, cli.stderr[-2000:]
        assert f"error: workdir {str(workdir)!r} is in use by pid {os.getpid()}" in cli.stderr
        assert "Traceback" not in cli.stderr
        assert not (workdir / "config.json").exists()
    finally:
        common.release_workdir_locks()
    assert not _locked_by_another_process(workdir)  # released


def test_a_study_releases_its_workdir_lock_when_it_returns_or_fails(tmp_path):
    @common.study_entry
    def study(config, workdir, fail=False):
        common.prepare_workdir(workdir, config)
        common.prepare_workdir(workdir / "nested", config)
        if fail:
            raise RuntimeError("killed")
        assert _locked_by_another_process(workdir)

    study(_dense_config(), tmp_path / "a")
    with pytest.raises(RuntimeError):
        study(_dense_config(), tmp_path / "b", fail=True)
    for path in (tmp_path / "a", tmp_path / "a" / "nested", tmp_path / "b"):
        assert not _locked_by_another_process(path), path


# ------------------------------------------------------------------------------ checkpoints


def test_edited_checkpoint_meta_is_detected_and_the_step_moved_aside(tmp_path):
    state = {"w": np.arange(4, dtype=np.float32)}
    with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(1, state=state, meta={"pending_losses": [[[1.0], 2]]})
        ckpt.save(2, state=state, meta={"pending_losses": [[[2.0], 2]]})
    meta = tmp_path / "ckpt" / "2" / "meta" / "metadata"
    meta.write_text(meta.read_text().replace("[[[2.0], 2]]", "[[[3.0], 2]]"))
    with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
        with pytest.raises(checkpoint.DamagedCheckpointError, match="meta"):
            ckpt.restore(2, like_state=state)
        step, _, _, saved = ckpt.restore_latest(like_state=state)
    assert step == 1 and saved["pending_losses"] == [[[1.0], 2]]
    assert len(list((tmp_path / "ckpt.damaged").iterdir())) == 1


@pytest.fixture(scope="module")
def segment_parts():
    config = _dense_config()
    dataset = common.build_dataset(config)
    recipe = common.build_recipe(config, dataset)
    executor = common.build_executor(config, common.build_model(config, dataset), dataset,
                                     recipe)
    init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(0, 2))
    return executor, init_keys, noise_keys


def _segment(parts, tmp_path, *, end, masks=None, tags=None, member_tags=None):
    executor, init_keys, noise_keys = parts
    return common.train_segment(
        executor, state=executor.init(init_keys, masks), masks=masks, noise_keys=noise_keys,
        end=end, eval_every=2, checkpoint_every=2, ckpt_dir=tmp_path / "ckpt",
        log=results.MetricsLog(tmp_path / "metrics.jsonl"), tags=tags or {"branch": "a"},
        splits=["test"], densities=np.ones(2), progress=False, member_tags=member_tags)


def _ones(executor, num=2):
    return jax.tree.map(lambda p: jnp.ones((num, *p.shape), bool), executor.abstract_params)


def test_a_restored_step_beyond_the_segments_end_or_of_other_masks_is_refused(
        segment_parts, tmp_path):
    executor = segment_parts[0]
    masks = _ones(executor)
    _segment(segment_parts, tmp_path, end=4, masks=masks)
    before = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(ValueError, match="holds step 4, beyond this segment's end 2"):
        _segment(segment_parts, tmp_path, end=2, masks=masks)
    other = jax.tree.map(lambda m: m.at[:, 0].set(False), masks)
    with pytest.raises(ValueError, match="trained with other masks"):
        _segment(segment_parts, tmp_path, end=4, masks=other)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before  # nothing appended


def test_a_checkpoint_without_its_curves_is_refused_by_name(segment_parts, tmp_path):
    """Checkpoints keep the segment's evaluated curves (tables never read the log): one
    saved without them (an ltjax before 2026-12-07) is refused, resumed or restored."""
    import shutil

    executor = segment_parts[0]
    _segment(segment_parts, tmp_path, end=2)
    with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
        like, _ = executor.abstract_members(2)
        step, state, _, meta = ckpt.restore_latest(like_state=like)
    assert step == 2 and [e["step"] for e in meta["curves"]] == [0, 2]
    shutil.rmtree(tmp_path / "ckpt")
    with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(2, state=state, meta={k: v for k, v in meta.items() if k != "curves"})
    with pytest.raises(ValueError, match="holds step 2 without its evaluated curves"):
        _segment(segment_parts, tmp_path, end=4)
    with pytest.raises(ValueError, match="holds step 2 without its evaluated curves"):
        common.finished_segment(executor, tmp_path / "ckpt", end=2,
                                log=results.MetricsLog(tmp_path / "metrics.jsonl"),
                                member_tags=[{"replicate": r} for r in range(2)], masks=False)


def test_a_path_is_evaluated_once_and_its_records_logged_once(tmp_path):
    """common.path_once: evaluated on a first run, restored (not evaluated, not read from the
    log) on a rerun; two splits' paths of the same pair keep each other's records; a killed
    evaluation's records (logged, the checkpoint not saved) are replaced, not duplicated."""
    log = results.MetricsLog(tmp_path / "metrics.jsonl")
    alphas = [0.0, 0.5, 1.0]
    tags = {"branch": "path", "pair": "0-1"}
    calls = []

    def curve(split, offset):
        def evaluate():
            calls.append(split)
            return {split: {"accuracy": np.float32([0.5, 0.25, 0.75]) + offset,
                            "loss": np.float32([1.0, 3.0, 2.0]) + offset}}
        return evaluate

    log.append([{**tags, "split": "test", "alpha": 0.0, "step": None, "loss": 9.0,
                 "accuracy": 0.0}])  # a killed run's partial path
    test, records = common.path_once(tmp_path, log, "paths/test", tags, alphas, ["test"],
                                     curve("test", 0))
    train, _ = common.path_once(tmp_path, log, "paths/train", tags, alphas, ["train"],
                                curve("train", 1))
    assert calls == ["test", "train"]
    xs, accuracy, loss = test["test"]
    assert xs.tolist() == alphas and accuracy.tolist() == [0.5, 0.25, 0.75]
    assert loss.dtype == np.float64 and train["train"][2].tolist() == [2.0, 4.0, 3.0]
    logged = log.read()
    assert [(r["split"], r["alpha"], r["loss"]) for r in logged] == [
        ("test", 0.0, 1.0), ("test", 0.5, 3.0), ("test", 1.0, 2.0),
        ("train", 0.0, 2.0), ("train", 0.5, 4.0), ("train", 1.0, 3.0)]
    assert records == logged[:3]
    before = (tmp_path / "metrics.jsonl").read_bytes()
    again, again_records = common.path_once(tmp_path, log, "paths/test", tags, alphas,
                                            ["test"], curve("test", 5))
    assert calls == ["test", "train"]  # restored, not evaluated
    assert again["test"][1].tolist() == accuracy.tolist() and again_records == records
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_member_tags_may_not_shadow_the_records_own_fields(segment_parts, tmp_path):
    with pytest.raises(ValueError, match=r"record's own fields \['density'\]"):
        _segment(segment_parts, tmp_path, end=2,
                 member_tags=[{"density": 0.1, "replicate": r} for r in range(2)])
    assert common.member_tags_of([{"density": 0.1, "split": "a", "replicate": 0}]) == [
        {"target_density": 0.1, "target_split": "a", "replicate": 0}]


def test_a_slow_segment_moves_one_chunk_per_call_and_a_kill_between_grid_steps_loses_little(
        tmp_path):
    """Conv nets on CPU ('unrolled_loop') train seconds per step: each training call is one
    chunk, and a call ending ``checkpoint_seconds`` after the last save saves, so a kill
    inside a long checkpoint interval resumes from there, to the same numbers (#34.3)."""
    from ltjax import models
    from ltjax.engine import optim
    from ltjax.engine.executor import Executor

    executor = Executor(models.create("mlp", widths=(8,)), data.synthetic((8, 8, 1), 64),
                        optim.Recipe(batch_size=16), strategy="unrolled_loop")
    init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(0, 2))
    calls, train = [], executor.train

    def run(workdir, seconds, kill_at=None):
        def counted(*args, **kwargs):
            if len(calls) == kill_at:
                raise KeyboardInterrupt
            calls.append(kwargs["num_steps"])
            return train(*args, **kwargs)

        executor.train = counted
        try:
            return common.train_segment(
                executor, state=executor.init(init_keys), masks=None, noise_keys=noise_keys,
                end=6, eval_every=6, checkpoint_every=6, ckpt_dir=workdir / "ckpt",
                log=results.MetricsLog(workdir / "metrics.jsonl"), tags={"branch": "a"},
                splits=["test"], densities=np.ones(2), progress=False, checkpoint_seconds=seconds)
        finally:
            del executor.train

    whole = run(tmp_path / "whole", None)
    assert calls == [1] * 6
    with checkpoint.Checkpointer(tmp_path / "whole" / "ckpt") as ckpt:
        assert ckpt.steps() == [6]
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", 0.0, kill_at=4)
    with checkpoint.Checkpointer(tmp_path / "killed" / "ckpt") as ckpt:
        assert ckpt.steps() == [3, 4]
    calls.clear()
    resumed = run(tmp_path / "killed", 0.0)
    assert calls == [1, 1]
    for a, b in zip(jax.tree.leaves(whole[0]), jax.tree.leaves(resumed[0]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert ((tmp_path / "killed" / "metrics.jsonl").read_bytes()
            == (tmp_path / "whole" / "metrics.jsonl").read_bytes())
    # The curves a resumed segment returns are the whole run's (kept in its checkpoints),
    # and both say what the log says.
    logged = [r for r in results.MetricsLog(tmp_path / "whole" / "metrics.jsonl").read()
              if r["split"] == "test"]
    members = [{"replicate": r} for r in range(2)]
    for curves in (whole[1], resumed[1]):
        assert curves.records(members, {"branch": "a"}) == logged
        assert curves.steps.tolist() == [0, 6]


def test_a_pruned_segment_rerun_after_losing_its_checkpoints_logs_no_duplicates(tmp_path):
    """Prune at init's members are tagged with their target density, the records carry the
    kept one: the segment must still recognise (and drop) its own records on resume."""
    import shutil

    from experiments.configs import prune_at_init_lenet_digits
    from ltjax.studies import prune_at_init

    config = prune_at_init_lenet_digits.get_config("quick")
    config.model, config.model_kwargs = "mlp", {"widths": (32, 16)}
    config.training_steps = config.eval_every = config.checkpoint_every = "1ep"
    config.densities, config.methods, config.ablations = (0.1,), ("magnitude",), ("none",)
    config.score_examples = 50
    prune_at_init.run_prune_at_init(config, tmp_path, progress=False)
    before = (tmp_path / "metrics.jsonl").read_bytes()
    kept = [r["density"] for r in results.MetricsLog(tmp_path / "metrics.jsonl").read()
            if r.get("target_density") == 0.1]
    assert kept and all(d != 0.1 and d == pytest.approx(0.1, abs=0.01) for d in kept)
    shutil.rmtree(tmp_path / "checkpoints" / "pruned")  # as a kill before its first save
    prune_at_init.run_prune_at_init(config, tmp_path, progress=False)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


# ------------------------------------------------------------------- IMP sources and data


def test_early_phase_refuses_an_imp_run_of_another_recipe_or_rewind_step(tmp_path):
    config = early_phase_lenet_digits.get_config("quick")
    config.model, config.model_kwargs = "mlp", {"widths": (32, 16)}
    config.imp_level = 1
    imp_config = early_phase._imp_config(config, "0it")
    for field, value, match in (("recipe.learning_rate", 0.012, "another recipe"),
                                ("training_steps", "9ep", "trained"),
                                ("rewind_step", "10it", "rewound to step 10")):
        theirs = common.to_dict(imp_config)
        if field.startswith("recipe."):
            theirs["recipe"][field.split(".")[1]] = value
        else:
            theirs[field] = value
        imp_dir = tmp_path / f"imp_{field}"
        (imp_dir / "checkpoints" / "level_01").mkdir(parents=True)
        results.write_json(imp_dir / "config.json", theirs)
        config.imp_workdir = str(imp_dir)
        with pytest.raises(ValueError, match=match):
            early_phase.run_early_phase(config, tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()


def test_a_training_split_with_one_class_is_refused(tmp_path):
    gen = np.random.default_rng(0)
    path = tmp_path / "one_class.npz"
    np.savez(path, x_train=gen.integers(0, 255, (20, 4, 4, 1), dtype=np.uint8),
             y_train=np.zeros(20, np.int64),
             x_test=gen.integers(0, 255, (5, 4, 4, 1), dtype=np.uint8),
             y_test=np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="has 1 class"):
        data.load(str(path))


# -------------------------------------------------------------------- logs and disk errors


def test_metrics_log_warns_of_foreign_lines_and_leaves_an_unchanged_file_alone(
        tmp_path, caplog):
    log = results.MetricsLog(tmp_path / "metrics.jsonl")
    log.append([{"step": 0}, {"step": 1}])
    inode = os.stat(log.path).st_ino
    log.keep_only(lambda r: True)  # nothing dropped: not rewritten
    assert os.stat(log.path).st_ino == inode
    with log.path.open("a") as f:
        f.write('{"step": 2}\n{"step": 3')  # a torn last line: expected after a kill
    with caplog.at_level("WARNING"):
        assert log.read() == [{"step": 0}, {"step": 1}, {"step": 2}]
    assert not caplog.records
    log.keep_only(lambda r: True)  # the torn line goes
    assert log.path.read_text() == '{"step": 0}\n{"step": 1}\n{"step": 2}\n'
    text = log.path.read_text().splitlines()
    log.path.write_text("\n".join([text[0], "garbage", *text[1:]]) + "\n")
    with caplog.at_level("WARNING"):
        assert log.read() == [{"step": 0}, {"step": 1}, {"step": 2}]
    assert "line 2 is not a JSON record" in caplog.text


def test_disk_errors_become_one_line_naming_the_file():
    import errno

    from ltjax import cli

    full = OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.jsonl")
    assert cli.storage_error(full) == ("no space left on device while writing runs/x/metrics.jsonl;"
                                   " free space and rerun the same command to resume")
    try:  # orbax's wrapping: the cause chain is searched
        try:
            raise full
        except OSError as err:
            raise RuntimeError("async save failed") from err
    except RuntimeError as wrapped:
        assert cli.storage_error(wrapped).startswith("no space left on device while writing")
    assert cli.storage_error(ValueError("RESOURCE_EXHAUSTED: No space left on device")) == (
        "no space left on device; free space and rerun the same command to resume")
    assert "cannot write runs/x/config.json.tmp (Read-only file system)" in cli.storage_error(
        OSError(errno.EROFS, "Read-only file system", "runs/x/config.json.tmp"))
    assert cli.storage_error(ValueError("learning_rate must be > 0")) is None


def test_more_replicates_than_memory_holds_are_refused_before_the_workdir(tmp_path):
    from ltjax.studies import dense

    with pytest.raises(ValueError, match=r"config.num_replicates=1000000000: .* GiB to train, "
                                         r"more than this machine's memory"):
        dense.run_dense(_dense_config(num_replicates=10**9), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
