"""Multi-process runs (ltjax.io.distributed): 2 local CPU processes, one CPU device each.

Each study runs as two processes joined by ``jax.distributed.initialize`` (gloo CPU
collectives) through the entry points' ``--coordinator_address/--num_processes/--process_id``
flags, and its files must equal, byte for byte, those of one process with two CPU devices
training the same members. The IMP run is killed (both processes, SIGKILL) once its second
level has saved a checkpoint, and restarted: it must resume and still end with the same files.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import flags

from ltjax import cli
from ltjax.io import distributed

ROOT = pathlib.Path(__file__).resolve().parents[1]
DENSE = ["experiments.train", "--config=experiments/configs/lenet_digits.py:quick",
         "--config.training_steps=10it", "--config.eval_every=5it",
         "--config.checkpoint_every=5it"]
IMP = ["experiments.imp", "--config=experiments/configs/imp_lenet_digits.py:quick",
       "--config.num_replicates=2", "--config.levels=1", "--config.controls=reinit",
       "--config.training_steps=20it", "--config.eval_every=10it",
       "--config.checkpoint_every=5it"]
FILES = ("results.csv", "metrics.jsonl", "config.json")


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(filter(None, [
        env.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={devices}"]))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(args: list[str], workdir: pathlib.Path, processes: int) -> list[subprocess.Popen]:
    """``python -m <args>`` as ``processes`` processes (1: a plain run on 2 CPU devices).

    Each process's output goes to ``<workdir>.<launch>.<i>.log`` (``p.log``).
    """
    command = [sys.executable, "-m", *args, f"--workdir={workdir}"]
    launch = len(list(workdir.parent.glob(f"{workdir.name}.*.0.log")))
    if processes == 1:
        extra, env = [[]], _env(2)
    else:
        port = _free_port()
        extra = [[f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
                  f"--process_id={i}"] for i in range(processes)]
        env = _env(1)
    procs = []
    for i, process_flags in enumerate(extra):
        log = workdir.parent / f"{workdir.name}.{launch}.{i}.log"
        with log.open("w") as out:
            procs.append(subprocess.Popen([*command, *process_flags], cwd=ROOT, env=env, stdout=out,
                                          stderr=subprocess.STDOUT))
        procs[-1].log = log
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    """Every process's output; fails (after killing them all) if one fails or hangs."""
    outs = []
    try:
        for p in procs:
            p.wait(timeout=timeout)
            outs.append(p.log.read_text())
            assert p.returncode == 0, f"process exited with {p.returncode}:\n{outs[-1][-3000:]}"
    finally:
        _kill(procs)
    return outs


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait()


def _assert_same_files(a: pathlib.Path, b: pathlib.Path) -> None:
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (b / "plots").is_dir()


def test_dense_two_processes_equal_one(tmp_path):
    procs = _start(DENSE, tmp_path / "one", 1) + _start(DENSE, tmp_path / "two", 2)
    one, zero, other = _wait(procs)
    assert "on 2 CPU device(s)" in zero and "test accuracy per replicate" in zero
    assert "test accuracy per replicate" not in other  # only process 0 reports
    _assert_same_files(tmp_path / "one", tmp_path / "two")
    assert not list((tmp_path / "two").glob("**/*.tmp"))


def test_imp_two_processes_killed_and_resumed_equal_one(tmp_path):
    reference = _start(IMP, tmp_path / "one", 1)
    two = tmp_path / "two"
    procs = _start(IMP, two, 2)
    level_1 = two / "checkpoints" / "level_01"
    deadline = time.monotonic() + 240
    try:
        while not (level_1.is_dir() and any(p.name.isdigit() for p in level_1.iterdir())):
            assert all(p.poll() is None for p in procs), procs[0].log.read_text()[-3000:]
            assert time.monotonic() < deadline, "level 1 never saved a checkpoint"
            time.sleep(0.02)
    finally:
        _kill(procs)  # both processes, mid-level
    if (two / "results.csv").exists():
        pytest.fail("the run finished before it was killed: nothing was resumed")
    zero, _ = _wait(_start(IMP, two, 2))
    assert "level 0: finished, restored" in zero
    assert "resuming at step" in zero or "level 1: finished, restored" in zero
    _wait(reference)
    _assert_same_files(tmp_path / "one", two)


def test_one_process_is_plain_jax(tmp_path):
    # Without jax.distributed: host = device_get, put = device_put, writes happen at once.
    assert not distributed.is_multiprocess() and distributed.is_writer()
    x = jax.numpy.arange(4.0)
    assert isinstance(distributed.host({"x": x})["x"], np.ndarray)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    assert distributed.put(np.arange(3), sharding).sharding == sharding
    distributed.write("test", lambda: (tmp_path / "f").write_text("a"))
    assert (tmp_path / "f").read_text() == "a"


def test_flags():
    base = ["train", "--config=experiments/configs/lenet_digits.py:quick", "--workdir=/tmp/x"]
    assert cli.parse_flags(base).distributed is None
    assert cli.parse_flags([*base, "--distributed"]).distributed == {
        "coordinator_address": None, "num_processes": None, "process_id": None,
        "timeout_s": 300}
    assert cli.parse_flags(
        [*base, "--coordinator_address=h:1", "--num_processes=2", "--process_id=1",
         "--distributed_timeout=9"]
    ).distributed == {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1,
                      "timeout_s": 9}
    with pytest.raises(flags.Error, match="process_id=2 must be below --num_processes=2"):
        cli.parse_flags([*base, "--num_processes=2", "--process_id=2"])


def test_a_missing_process_ends_the_run_with_a_clear_error(tmp_path):
    # Process 0 of 2 whose peer never starts: no hang; JAX aborts after the join timeout,
    # and the line printed before names what the process waited for.
    port = _free_port()
    proc = subprocess.run(
        [sys.executable, "-m", *DENSE, f"--workdir={tmp_path / 'run'}",
         f"--coordinator_address=localhost:{port}", "--num_processes=2", "--process_id=0",
         "--distributed_timeout=2"],
        cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"process 0 of 2 joining the coordinator at localhost:{port}" in proc.stderr
    assert "DEADLINE_EXCEEDED" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written
