"""Multi-process (multi-host) runs on JAX's own runtime (``jax.distributed.initialize``).

One program runs in every process (one per host, or several on one machine);
the executor's member mesh spans ``jax.devices()``, the devices of all of them,
so the member axis is sharded over every host. What each process does beside
the programs:

- **Data.** Every process holds the whole dataset and every host-built array
  (keys, masks from the same seeds): an array it puts onto a global sharding
  with ``jax.device_put`` becomes one global array built from each process's
  own shards of its copy (``jax.make_array_from_process_local_data`` for
  host data, :func:`put`).
- **Host values.** A global array sharded over other processes' devices
  cannot be read with ``np.asarray``; :func:`host` gathers it
  (``multihost_utils.process_allgather``), so every process computes the same
  Python values and takes the same branches. Each call is a collective: every
  process must make it, in the same order (they do, running the same code).
- **Files.** Only process 0 writes (:func:`is_writer`): ``config.json``,
  ``metrics.jsonl``, ``results.csv``, plots, warnings. :func:`write` runs a
  write on process 0 between two barriers, so no process reads a file before
  a write that precedes the read in program order, nor after one that follows
  it. The workdir must be on a filesystem every process sees (as orbax's
  multi-process checkpointing needs: NFS, GCS via a FUSE mount, or one machine).
- **Checkpoints.** Every process takes part in orbax's saves and restores
  (orbax coordinates them; each process writes its own shards).

In a single process (``jax.distributed`` not initialised) :func:`host` is
``jax.device_get``, :func:`write` just writes and :func:`sync` does nothing:
single-process runs are unchanged.

Example (two processes on one machine, one CPU device each)::

    JAX_NUM_CPU_DEVICES=1 python -m experiments.train --config=... --workdir=runs/x \\
        --coordinator_address=localhost:12345 --num_processes=2 --process_id=0 &
    JAX_NUM_CPU_DEVICES=1 python -m experiments.train --config=... --workdir=runs/x \\
        --coordinator_address=localhost:12345 --num_processes=2 --process_id=1
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               local_device_ids: int | Sequence[int] | None = None,
               timeout_s: int = 300) -> None:
    """Start JAX's multi-process runtime; call before JAX computes anything.

    Wraps ``jax.distributed.initialize``. Arguments left None are
    auto-detected by JAX on a cluster it knows (Cloud TPU pods, SLURM, Open
    MPI, Kubernetes), and ``coordinator_address`` is read from
    ``$JAX_COORDINATOR_ADDRESS`` when set; elsewhere (several processes on one
    machine, hosts without a scheduler) give all three. CPU devices talk
    through gloo collectives (``jax_cpu_collectives_implementation``: JAX
    0.10's default, set here if it is unset).

    Args:
      coordinator_address: ``host:port`` of process 0, reachable by every process.
      num_processes: the number of processes.
      process_id: this process's index, ``0 <= process_id < num_processes``.
      local_device_ids: the accelerators this process uses (GPU hosts that
        run one process per GPU); None: all visible ones.
      timeout_s: how long to wait for the coordinator and every other process
        to join (JAX's ``initialization_timeout``). A run that is not complete
        by then (an unreachable coordinator, a wrong process count, a process
        that never started) ends: JAX aborts the process with
        ``DEADLINE_EXCEEDED`` (a fatal error of its C++ runtime, which Python
        cannot catch), after the line this function prints to stderr naming
        what it waited for.

    Raises:
      ValueError: ``process_id`` outside ``[0, num_processes)``, ``timeout_s``
        below 1, or JAX could not detect a cluster and the arguments are missing
        (JAX's message).
    """
    if (num_processes is not None and process_id is not None
            and not 0 <= process_id < num_processes):
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or timeout_s < 1:
        raise ValueError(f"timeout_s must be an int >= 1 (seconds), got {timeout_s!r}")
    print(f"ltjax.io.distributed: process {_given(process_id)} of {_given(num_processes)} joining "
          f"the coordinator at {_given(coordinator_address)}; if the run is not complete in "
          f"{timeout_s} s (coordinator unreachable, wrong process count, a process missing) "
          "JAX aborts with DEADLINE_EXCEEDED", file=sys.stderr, flush=True)
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids,
                               initialization_timeout=timeout_s)


def _given(value: Any) -> str:
    return "(auto-detected)" if value is None else str(value)


def is_multiprocess() -> bool:
    """Whether this run spans several processes (without starting JAX's backend otherwise)."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


def is_writer() -> bool:
    """Whether this process writes the workdir's files: process 0 (always, in one process)."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier of all processes (nothing in one process).

    Every process must call it with the same ``name`` at the same point of
    the program (``multihost_utils.sync_global_devices`` checks the names
    agree: processes that took different branches fail here, not later).
    """
    if is_multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def write(name: str, fn: Callable[[], Any]) -> None:
    """Run the file write ``fn()`` on process 0 only, between two barriers (:func:`sync`).

    Example:
        >>> from ltjax.io import distributed
        >>> written = []
        >>> distributed.write("note", lambda: written.append("done"))  # e.g. path.write_text
        >>> written                                  # one process: written here, once
        ['done']
    """
    if not is_multiprocess():
        fn()
        return
    sync(f"before {name}")
    try:
        if is_writer():
            fn()
    finally:
        sync(f"after {name}")


def host(tree: PyTree) -> PyTree:
    """``tree``'s values as host NumPy arrays, the same in every process.

    ``jax.device_get`` in one process. With several, a global array sharded
    over other processes' devices is gathered with
    ``multihost_utils.process_allgather`` (a collective: every process must
    call this with the same tree); arrays held whole by this process are read
    locally.
    """
    if not is_multiprocess():
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(tree)
    spread = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array)
              and not (x.is_fully_addressable or x.is_fully_replicated)]
    named = [i for i in spread if isinstance(leaves[i].sharding, NamedSharding)]
    if named:  # one all-gather program for the whole tree, not one per leaf
        gathered = jax.jit(_identity, out_shardings=[
            leaves[i].sharding.update(spec=P()) for i in named])([leaves[i] for i in named])
        for i, x in zip(named, gathered, strict=True):
            leaves[i] = np.asarray(x.addressable_data(0))
    for i in spread:
        if i not in named:
            leaves[i] = np.asarray(multihost_utils.process_allgather(leaves[i], tiled=True))
    return jax.tree.unflatten(treedef, [jax.device_get(x) for x in leaves])


def _identity(x: Any) -> Any:
    return x


def put(tree: PyTree, sharding: jax.sharding.Sharding) -> PyTree:
    """``tree`` on ``sharding`` (global arrays), from values every process holds whole.

    ``jax.device_put`` in one process. With several, host data and arrays
    local to this process go through ``jax.make_array_from_process_local_data``
    (each process contributes the shards on its own devices, cut from its own
    copy: the data feed, replicated today); PRNG key arrays through their key
    data; global arrays are resharded with ``jax.device_put`` (which needs
    the same set of devices across processes).

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        >>> from ltjax.io import distributed
        >>> mesh = Mesh(np.array(jax.devices()), ("seed",))
        >>> tree = distributed.put({"x": jnp.arange(8.0)}, NamedSharding(mesh, P()))  # replicated
        >>> tree["x"].shape, tree["x"].sharding.is_fully_replicated
        ((8,), True)

        A data split: ``distributed.put(data.device_split(ds.test, ds), NamedSharding(mesh, P()))``.
    """
    if not is_multiprocess():
        return jax.device_put(tree, sharding)

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)),
                                            impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)  # the same devices (Executor._check_spread)
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, x.shape)

    return jax.tree.map(one, tree)
