"""Plumbing shared by the studies: config -> dataset, model, recipe, executor; workdirs."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import functools
import hashlib
import inspect
import json
import logging
import os
import pathlib
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from ltjax import models
from ltjax.core import pruning, tree
from ltjax.engine import executor as executor_lib
from ltjax.engine import optim, train
from ltjax.io import checkpoint, data, distributed, results


def to_dict(config: ml_collections.ConfigDict | dict) -> dict:
    """A plain JSON-able dict of ``config`` (tuples become lists)."""
    plain = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(plain, default=list))


def without(config: ml_collections.ConfigDict, fields: Sequence[str]) -> ml_collections.ConfigDict:
    """A deep copy of ``config`` without ``fields`` (those it lacks are skipped).

    For a study that runs another study with its own config, e.g. its own IMP run.

    Example:
        >>> import ml_collections
        >>> from ltjax.studies import common
        >>> config = ml_collections.ConfigDict({"model": "mlp", "perturbations": ("none",),
        ...                                     "rewind_steps": (0,)})
        >>> imp_config = common.without(config, ("perturbations", "rewind_steps", "absent"))
        >>> sorted(imp_config.keys()), sorted(config.keys())
        (['model'], ['model', 'perturbations', 'rewind_steps'])
    """
    out = copy.deepcopy(config)
    with out.unlocked():
        for field in fields:
            if field in out:
                del out[field]
    return out


def prepare_workdir(workdir: str | pathlib.Path, config: Any) -> pathlib.Path:
    """Create ``workdir`` and write ``config.json``; refuse a workdir of another config.

    A workdir whose run saved no checkpoint yet (killed while compiling, or
    refused later) holds nothing to lose: it takes the new config. Rerun with
    the same config, the metrics and warnings the abandoned run logged are
    removed; given another config, every file and folder of the old run is
    removed (only ``config.json`` and the lock stay), so nothing computed under
    the old config is read back under the new one. A dataset registered in
    memory (:func:`ltjax.io.data.register`) adds its arrays' checksum to
    ``config.json``: other arrays under the same name are another config.

    Raises:
      ValueError: the workdir holds checkpoints of a run whose ``config.json``
        differs from ``config`` (the message lists the differing keys), or
        ``workdir`` is a file, or its ``config.json`` does not read.
      WorkdirBusyError: another process runs on ``workdir`` (:func:`lock_workdir`).
    """
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"workdir {str(workdir)!r} is a file, not a folder; pass a folder")
    workdir.mkdir(parents=True, exist_ok=True)
    lock_workdir(workdir)
    path = workdir / "config.json"
    current = to_dict(config)
    checksum = data.registered_checksum(current.get("dataset"))
    if checksum is not None:  # arrays registered in memory: the name alone does not fix them
        current["dataset_sha256"] = checksum
    saved = _read_config(path) if path.exists() else None
    if saved is not None and not has_checkpoints(workdir):
        stale = ([p for p in workdir.iterdir() if p.name not in ("config.json", LOCK_NAME)]
                 if saved != current else
                 [workdir / name for name in ("metrics.jsonl", "warnings.jsonl")])
        distributed.write(f"clear {workdir}", lambda: [
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            for p in stale])
        results.write_json(path, current)
    elif saved is not None:
        if saved != current:
            keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise ValueError(
                f"workdir {str(workdir)!r} holds a run with a different config (keys {keys}); "
                "use a new --workdir or the same config to resume"
            )
    else:
        results.write_json(path, current)
    global _PREPARED
    _PREPARED += 1
    return workdir


def _read_config(path: pathlib.Path) -> dict:
    """A workdir's ``config.json``; a clear error naming it when it does not read."""
    try:
        return results.read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} does not read as JSON ({err}); it was damaged or "
                         "truncated: restore it, or use a new --workdir") from None


_PREPARED = 0  # workdirs this process has prepared (written), for entry points


def workdirs_prepared() -> int:
    """How many workdirs :func:`prepare_workdir` has created or taken in this process.

    An entry point compares it before and after a failed run: an error raised
    while it did not grow came before any work (a config error).
    """
    return _PREPARED


LOCK_NAME = ".lock"
_HELD_LOCKS: dict[pathlib.Path, Any] = {}  # workdir -> the open, flock-ed lock file


class WorkdirBusyError(RuntimeError):
    """Another process holds the workdir's lock (a second run on the same workdir)."""


def lock_workdir(workdir: str | pathlib.Path) -> None:
    """Take ``workdir``'s exclusive lock for this process (an OS file lock on ``.lock``).

    The lock is released by :func:`release_workdir_locks` (every study entry
    does it when it returns, see :func:`study_entry`) or by the OS when the
    process exits or dies, so a killed run never leaves a stale lock. Taking
    a lock this process holds already does nothing; in a multi-process run only
    the writer (process 0) takes it.

    Raises:
      WorkdirBusyError: another process holds it (the message names its pid,
        host and start time).
    """
    import fcntl
    import socket

    key = pathlib.Path(workdir).resolve()
    if key in _HELD_LOCKS or not distributed.is_writer():
        return
    try:
        handle = (key / LOCK_NAME).open("a+")
    except OSError as err:
        if err.errno in (errno.EROFS, errno.EACCES):  # nobody can write there: no lock needed
            return
        raise
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise WorkdirBusyError(
            f"workdir {str(workdir)!r} is in use by {holder}; wait for that run to end (or "
            "stop it), or use another --workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    _HELD_LOCKS[key] = handle


def release_workdir_locks(keep: Sequence[pathlib.Path] = ()) -> None:
    """Release the workdir locks this process holds, but those in ``keep``."""
    for key in [k for k in _HELD_LOCKS if k not in keep]:
        _HELD_LOCKS.pop(key).close()  # closing the file releases its flock


def study_entry(run_fn: Callable) -> Callable:
    """Decorate a ``run_<study>(config, workdir, ...)``: the workdirs it locked are released
    when it returns or raises (those its caller held stay held).

    With ``$LTJAX_TENSORBOARD=1`` (the experiments' ``--tensorboard``) the outermost study
    checks that the writer is installed before any work and, once it returns, rebuilds
    ``<workdir>/tensorboard/`` from the workdir's files (:func:`ltjax.io.tensorboard.write`).
    """

    @functools.wraps(run_fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        global _STUDY_DEPTH
        from ltjax.io import tensorboard  # imports no writer library

        held = list(_HELD_LOCKS)
        mirror = _STUDY_DEPTH == 0 and tensorboard.enabled()
        if mirror:
            tensorboard.require()
        _STUDY_DEPTH += 1
        try:
            out = run_fn(*args, **kwargs)
            if mirror:
                tensorboard.write(inspect.signature(run_fn).bind(*args, **kwargs)
                                  .arguments["workdir"])
            return out
        finally:
            _STUDY_DEPTH -= 1
            release_workdir_locks(keep=held)

    return run


_STUDY_DEPTH = 0  # study_entry calls under way (a study may run others in sub-workdirs)


def has_checkpoints(workdir: str | pathlib.Path) -> bool:
    """Whether any checkpoint step (a folder named by its step) was saved under ``workdir``."""
    return any(p.is_dir() and p.name.isdigit() for p in pathlib.Path(workdir).rglob("*"))


def build_dataset(config: Any) -> data.Dataset:
    """The dataset named by ``config.dataset`` (validation carved as configured)."""
    return data.load(
        config.dataset, data_dir=config.get("data_dir") or None,
        validation_size=config.get("validation_size", 0),
        validation_seed=config.get("validation_seed", 0),
        test_size=config.get("test_size", 0),
    )


def build_model(config: Any, dataset: data.Dataset) -> Any:
    """The model named by ``config.model`` with ``config.model_kwargs``."""
    kwargs = dict(config.get("model_kwargs") or {})
    return models.create(config.model, num_classes=dataset.num_classes, **kwargs)


def steps(value: str | int, steps_per_epoch: int, *, field: str | None = None) -> int:
    """A step string of the config (``'500it'``, ``'2ep'``) in steps.

    Raises:
      ValueError: not a step length; with ``field``, the message names ``config.<field>``.

    Example:
        >>> from ltjax.studies import common
        >>> common.steps("2ep", 916), common.steps("500it", 916), common.steps(100, 916)
        (1832, 500, 100)
        >>> common.steps("2 epochs", 916, field="rewind_step")
        Traceback (most recent call last):
        ...
        ValueError: config.rewind_step='2 epochs': steps must be an int or a string like ...
    """
    try:
        return train.parse_steps(value, steps_per_epoch=steps_per_epoch)
    except ValueError as err:
        if field is None:
            raise
        raise ValueError(f"config.{field}={value!r}: {err}") from None


def build_recipe(config: Any, dataset: data.Dataset) -> optim.Recipe:
    """The :class:`ltjax.engine.optim.Recipe` of ``config.recipe`` (step strings resolved)."""
    r = config.recipe
    if r.batch_size > len(dataset.train):
        raise ValueError(
            f"recipe.batch_size={r.batch_size} is larger than the train split of "
            f"{dataset.name!r} ({len(dataset.train)} examples)"
        )
    per_epoch = len(dataset.train) // r.batch_size
    total_steps = steps(r.get("total_steps") or 0, per_epoch, field="recipe.total_steps")
    warmup_steps = steps(r.get("warmup", 0), per_epoch, field="recipe.warmup")
    lr_drop_steps = tuple(steps(s, per_epoch, field="recipe.lr_drops")
                          for s in r.get("lr_drops", ()))
    try:
        return optim.Recipe(
            optimizer=r.optimizer, learning_rate=r.learning_rate,
            momentum=r.get("momentum", 0.0), nesterov=r.get("nesterov", False),
            weight_decay=r.get("weight_decay", 0.0),
            weight_decay_mode=r.get("weight_decay_mode") or None,
            schedule=r.get("schedule", "step"), total_steps=total_steps,
            warmup_steps=warmup_steps, lr_drop_steps=lr_drop_steps,
            lr_drop_factor=r.get("lr_drop_factor", 0.1), batch_size=r.batch_size,
            label_smoothing=r.get("label_smoothing", 0.0), augment=r.get("augment", True),
        )
    except ValueError as err:  # optim.Recipe's field names (warmup_steps: recipe.warmup)
        raise ValueError(f"config.recipe: {err}") from None


def build_executor(config: Any, model: Any, dataset: data.Dataset,
                   recipe: optim.Recipe) -> executor_lib.Executor:
    """The :class:`ltjax.engine.executor.Executor` with ``config.strategy`` / ``steps_per_call``."""
    return executor_lib.Executor(
        model, dataset, recipe, strategy=config.get("strategy", "auto"),
        steps_per_call=config.get("steps_per_call") or None,
        eval_batch_size=config.get("eval_batch_size", 1000),
    )


def check_basics(config: Any) -> None:
    """The fields every study shares, checked before anything is loaded or written.

    Raises:
      ValueError: ``num_replicates`` not an int >= 1, ``seed`` not an int >= 0,
        ``recipe.batch_size`` not an int >= 1 (naming the field and the value).
    """
    def whole(field: str, value: Any, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"config.{field} must be an int >= {low}, got {value!r}")

    if config.get("num_replicates") is not None:
        whole("num_replicates", config.num_replicates, 1)
    if config.get("seed") is not None:
        whole("seed", config.seed, 0)
    if config.get("recipe") is not None and config.recipe.get("batch_size") is not None:
        whole("recipe.batch_size", config.recipe.batch_size, 1)


def names_of(value: Any, *, field: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """A config list of names as a tuple, checked; comma-separated strings are split.

    ``--config.controls=reinit,oneshot`` reaches a tuple field as the 1-tuple
    ``('reinit,oneshot',)``; this gives ``('reinit', 'oneshot')``. Duplicates
    are dropped, the order kept.

    Raises:
      ValueError: a name not in ``allowed`` (the message names ``field``).

    Example:
        >>> from ltjax.studies import common
        >>> common.names_of(("none,repair",), field="corrections", allowed=("none", "repair"))
        ('none', 'repair')
    """
    items = [value] if isinstance(value, str) else list(value or ())
    names = tuple(dict.fromkeys(
        v.strip() for item in items for v in str(item).split(",") if v.strip()))
    unknown = [v for v in names if v not in allowed]
    if unknown:
        raise ValueError(f"config.{field} must be among {allowed}; unknown: {unknown}")
    return names


def batch_stats_reset(config: Any) -> dict:
    """How a study recomputes BatchNorm statistics: ``recomputed_batch_stats`` kwargs.

    ``config.reset_batches``: a number (that many training batches; 20 by
    default; an int or a string of digits, so a flag can also give
    ``'epoch'``) or ``'epoch'`` (one pass over the training set);
    ``config.reset_augment``: apply the training augmentation. ``'epoch'``
    with ``reset_augment=True`` is the REPAIR notebooks' reset (Jordan et al.
    2023): the cumulative average over one augmented training epoch.

    Raises:
      ValueError: ``reset_batches`` is neither an int >= 1 nor ``'epoch'``.

    Example:
        >>> import ml_collections
        >>> from ltjax.studies import common
        >>> common.batch_stats_reset(ml_collections.ConfigDict({"reset_batches": "epoch"}))
        {'num_batches': None, 'augment': False}
    """
    value = config.get("reset_batches", 20)
    if value == "epoch":
        num_batches = None
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        num_batches = value
    elif isinstance(value, str) and value.isdigit() and int(value) >= 1:
        num_batches = int(value)
    else:
        raise ValueError(f"config.reset_batches must be an int >= 1 or 'epoch', got {value!r}")
    augment = config.get("reset_augment", False)
    if not isinstance(augment, bool):
        raise ValueError(f"config.reset_augment must be True or False, got {augment!r}")
    return {"num_batches": num_batches, "augment": augment}


#: The share ``p`` of the weights in the ``R_p`` weight correlation
#: (:func:`ltjax.methods.sanity.weight_correlation`) a study reports when its config sets
#: no ``correlation_p`` (the dense and IMP studies).
CORRELATION_P = 0.1


def correlation_p(config: Any) -> float:
    """``config.correlation_p`` (default :data:`CORRELATION_P`), checked.

    Raises:
      ValueError: not a number in (0, 1] (naming ``config.correlation_p``).

    Example:
        >>> import ml_collections
        >>> from ltjax.studies import common
        >>> common.correlation_p(ml_collections.ConfigDict({}))
        0.1
    """
    p = config.get("correlation_p", CORRELATION_P)
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 < p <= 1.0:
        raise ValueError(f"config.correlation_p must be a number in (0, 1], got {p!r}")
    return float(p)


def parse_layer_rates(spec: str | None) -> dict[str, float]:
    """``'Dense_2:0.1,Conv_.*:0.15'`` -> ``{'Dense_2': 0.1, 'Conv_.*': 0.15}``.

    Raises:
      ValueError: an entry is not ``regex:rate`` with a numeric rate.

    Example:
        >>> from ltjax.studies import common
        >>> common.parse_layer_rates("Dense_2:0.1,Conv_.*:0.15")
        {'Dense_2': 0.1, 'Conv_.*': 0.15}
        >>> common.parse_layer_rates(None)
        {}
    """
    rates: dict[str, float] = {}
    for entry in (spec or "").split(","):
        if not entry.strip():
            continue
        pattern, sep, rate = entry.rpartition(":")
        try:
            if not sep or not pattern:
                raise ValueError
            rates[pattern.strip()] = float(rate)
        except ValueError:
            raise ValueError(
                f"layer_rates must look like 'Dense_2:0.1,Conv_.*:0.15', got entry {entry!r}"
            ) from None
    return rates


def say(message: str, progress: bool = True) -> None:
    """One line about what a study is doing (beside its progress bars); silent without progress.

    Example:
        >>> from ltjax.studies import common
        >>> common.say("matching 2 pairs of models (weight matching)")
        matching 2 pairs of models (weight matching)
        >>> common.say("matching 2 pairs of models (weight matching)", progress=False)
    """
    if progress:
        tqdm.tqdm.write(message)


@contextlib.contextmanager
def timed(message: str, progress: bool = True) -> Iterator[None]:
    """Say ``message`` with the wall time of the block when it ends (silent without progress).

    The block should wait for its device work (``jax.block_until_ready``) so
    the time is the work's, compilation included.

    Example:
        >>> from ltjax.studies.common import timed
        >>> with timed("scores at init", progress=False):
        ...     pass
    """
    start = time.perf_counter()
    yield
    say(f"{message}: {time.perf_counter() - start:.1f} s", progress)


#: A member's evaluation loss above this factor times its loss at the segment's start (or
#: times 1, whichever is larger) is flagged as divergence (:func:`diverged`).
DIVERGENCE_FACTOR = 100.0
#: Checkpoints a segment keeps: the newest step and the one before it (a newest step
#: found damaged on resume falls back to it). The one default of ``max_checkpoints``.
MAX_CHECKPOINTS = 2
#: A segment also saves a checkpoint after any training call that ends this many seconds or
#: more after its last save (or its start): a slow run (conv nets on a CPU) that is killed
#: loses about this much training, not everything since its last ``checkpoint_every`` step.
CHECKPOINT_SECONDS = 120.0
#: Under the executor's ``'scan_vmap'`` strategy a segment trains and evaluates whole
#: evaluation intervals in one program (:meth:`ltjax.engine.executor.Executor.train_and_evaluate`)
#: spanning at most this many steps, between its checkpoint and telemetry steps: one host
#: transfer per call, the time-based checkpoint still about every call (LeNet-300-100 on
#: MNIST: ~20 s per 5000 steps on a 2-core CPU), and the epochs' permutations such a call
#: holds bounded. Longer evaluation intervals train in executor calls and evaluate after.
IN_PROGRAM_STEPS = 5000
RECORD_FIELDS = ("step", "split", "loss", "accuracy", "density")  # what a segment's record adds


def diverged(start_loss: Any, loss: Any, *, factor: float = DIVERGENCE_FACTOR) -> np.ndarray:
    """Which members diverged: ``loss > factor * max(start_loss, 1)`` (or is not finite).

    The floor of 1 keeps a segment that starts from a well-trained state (a
    loss of 0.01) from being flagged for an ordinary rise to 1; a run whose
    loss went from ln(10) to 1e18 (Adam at a learning rate of 1e6) is.

    Example:
        >>> from ltjax.studies import common
        >>> common.diverged([2.3, 2.3], [0.1, 1e18])
        array([False,  True])
    """
    start = np.maximum(np.asarray(start_loss, np.float64), 1.0)
    loss = np.asarray(loss, np.float64)
    return ~np.isfinite(loss) | (loss > factor * start)


def warn(workdir: str | pathlib.Path, message: str, *, once: dict | None = None,
         **fields: Any) -> None:
    """Log a warning and keep it in ``<workdir>/warnings.jsonl``, once.

    Once per distinct message, or, with ``once``, per warning holding all of
    ``once``'s fields (e.g. one divergence warning per member, at its first
    step). :func:`read_warnings` gives them back, e.g. for a study's summary.
    """
    path = pathlib.Path(workdir) / "warnings.jsonl"
    log = results.MetricsLog(path)
    for w in log.read() if path.exists() else ():
        if w.get("message") == message or (once is not None and all(
                w.get(k) == v for k, v in once.items())):
            return
    if distributed.is_writer():
        logging.warning("%s", message)
    log.append([{**(once or {}), **fields, "message": message}])


def read_warnings(workdir: str | pathlib.Path) -> list[dict]:
    """The warnings :func:`warn` kept for ``workdir`` (empty when none)."""
    path = pathlib.Path(workdir) / "warnings.jsonl"
    return results.MetricsLog(path).read() if path.exists() else []


#: The ``layer_rates`` name of the model's output layer (:func:`ltjax.models.output_layer`).
OUTPUT_LAYER = "@output"


def layer_rates(pruning_config: Any, params: Any, prunable: Any) -> dict[str, float]:
    """The ``layer_rates`` of :func:`ltjax.core.pruning.prune` for a study's ``config.pruning``.

    ``pruning_config.preset`` (:func:`ltjax.core.pruning.preset_rates`; ``''``:
    none) gives every layer its preset rate; ``pruning_config.layer_rates``
    (:func:`parse_layer_rates`) then overrides the layers it matches. Its
    pattern ``'@output'`` is the model's output layer
    (:func:`ltjax.models.output_layer`: LeNet's ``Dense_2``, the ResNets'
    ``fc``, VGG's ``Dense_0``), so the default ``'@output:0.1'`` (the LTH
    paper's output layer at half rate) fits every model; it is skipped when
    the output layer is not pruned (e.g. ``exclude``).

    Args:
      pruning_config: has ``layer_rates`` and optionally ``preset``.
      params: the model's params (arrays or ``jax.ShapeDtypeStruct``), unstacked.
      prunable: static bool tree from :func:`ltjax.core.masking.prunable`.

    Raises:
      ValueError: a bad ``layer_rates`` entry or an unknown preset.

    Example:
        >>> import jax, ml_collections
        >>> from ltjax import models
        >>> from ltjax.core import masking
        >>> from ltjax.studies import common
        >>> lenet = models.create("lenet_300_100")
        >>> lenet_params = jax.eval_shape(lambda k: models.init(lenet, k, (28, 28, 1))[0],
        ...                               jax.random.key(0))
        >>> common.layer_rates(ml_collections.ConfigDict({"layer_rates": "@output:0.1"}),
        ...                    lenet_params, masking.prunable(lenet_params))
        {'^Dense_2/': 0.1}
    """
    rates = pruning.preset_rates(params, prunable, preset=pruning_config.get("preset") or "")
    for pattern, rate in parse_layer_rates(pruning_config.get("layer_rates")).items():
        if pattern == OUTPUT_LAYER:
            layer = models.output_layer(params)
            pruned = [n for n, s in zip(tree.names(params), jax.tree.leaves(prunable), strict=True)
                      if s and n.startswith(layer + "/")]
            if not pruned:
                continue
            pattern = f"^{re.escape(layer)}/"
        rates[pattern] = rate
    return rates


@dataclasses.dataclass(frozen=True)
class Curves:
    """A segment's evaluations as arrays: what its records in ``metrics.jsonl`` say.

    :func:`train_segment` keeps them in every checkpoint it saves, so a resumed
    or restored segment returns its whole curves too: a table is built from
    these, never by parsing the log.

    Attributes:
      steps: the evaluated steps ``[E]`` (the start, multiples of ``eval_every``, the end).
      metrics: ``{split: {'loss': [E, S], 'accuracy': [E, S]}}`` (float64, holding the
        float32 evaluations exactly).
      train_loss: the mean training loss since the previous evaluation ``[E, S]``
        (NaN at the start, where nothing was trained).
      density: the density written into each member's records ``[S]``.

    Example:
        >>> from ltjax.studies import common
        >>> history = [{"step": 0, "train_loss": None,
        ...             "splits": {"test": {"loss": [2.3, 2.2], "accuracy": [0.1, 0.2]}}},
        ...            {"step": 10, "train_loss": [1.5, 1.0],
        ...             "splits": {"test": {"loss": [1.2, 0.9], "accuracy": [0.6, 0.8]}}}]
        >>> curves = common.Curves.from_history(history, density=[1.0, 0.5])
        >>> curves.metrics["test"]["accuracy"].shape       # [E, S]
        (2, 2)
        >>> curves.series("test", "accuracy", member=1)
        [(0, 0.2), (10, 0.8)]
        >>> curves.final("test", "loss").tolist()
        [1.2, 0.9]
        >>> curves.final_metrics("test")["accuracy"].dtype
        dtype('float32')
        >>> curves.records([{"replicate": 0}, {"replicate": 1}])[1]
        {'replicate': 1, 'step': 0, 'split': 'test', 'loss': 2.2, 'accuracy': 0.2, 'density': 0.5}
    """

    steps: np.ndarray
    metrics: dict[str, dict[str, np.ndarray]]
    train_loss: np.ndarray
    density: np.ndarray

    @classmethod
    def from_history(cls, history: list[dict], *, density: Any) -> Curves:
        """The arrays of :func:`train_segment`'s evaluation history (checkpoint meta)."""
        density = np.asarray(density, np.float64)
        splits = list(history[0]["splits"]) if history else []
        num = density.shape[0]

        def rows(values: list) -> np.ndarray:
            return np.asarray(values, np.float64).reshape(len(history), num)

        return cls(
            steps=np.array([e["step"] for e in history], np.int64),
            metrics={split: {k: rows([e["splits"][split][k] for e in history])
                             for k in ("loss", "accuracy")} for split in splits},
            train_loss=rows([[np.nan] * num if e["train_loss"] is None else e["train_loss"]
                             for e in history]),
            density=density)

    def series(self, split: str, metric: str, member: int) -> list[tuple[int, float]]:
        """``(step, value)`` pairs of one member's ``metric`` on ``split``."""
        return [(int(s), float(v)) for s, v in
                zip(self.steps, self.metrics[split][metric][:, member], strict=True)]

    def final(self, split: str, metric: str) -> np.ndarray:
        """Every member's ``metric`` on ``split`` at the last evaluated step ``[S]``."""
        return self.metrics[split][metric][-1]

    def final_metrics(self, split: str) -> dict[str, np.ndarray]:
        """The last evaluation on ``split`` as ``Executor.evaluate`` gives it (float32 ``[S]``):
        a study needs no evaluation of its own for the state a segment ends with."""
        return {k: self.metrics[split][k][-1].astype(np.float32) for k in ("accuracy", "loss")}

    def records(self, member_tags: Sequence[dict], tags: dict | None = None) -> list[dict]:
        """The evaluations as the segment's records (its split rows of ``metrics.jsonl``).

        For a figure or a table that takes records: ``{**tags, **member_tags[m],
        'step', 'split', 'loss', 'accuracy', 'density'}`` per evaluation, split and
        member, in the log's order.
        """
        return [{**(tags or {}), **t, "step": int(step), "split": split,
                 "loss": float(values["loss"][e, m]), "accuracy": float(values["accuracy"][e, m]),
                 "density": float(self.density[m])}
                for e, step in enumerate(self.steps) for split, values in self.metrics.items()
                for m, t in enumerate(member_tags)]


def train_segment(
    executor: executor_lib.Executor, *, state: train.TrainState, masks: Any, noise_keys: Any,
    end: int, eval_every: int, checkpoint_every: int, ckpt_dir: str | pathlib.Path,
    log: results.MetricsLog, tags: dict, splits: list[str], densities: Any,
    progress: bool = True, desc: str = "train", max_checkpoints: int | None = None,
    hparams: optim.Hyperparams | None = None, member_tags: list[dict] | None = None,
    observer: TelemetryObserver | None = None, subsets: Any = None,
    checkpoint_seconds: float | None = CHECKPOINT_SECONDS,
) -> tuple[train.TrainState, Curves]:
    """Train from ``state`` (at its step) to ``end``, evaluating and checkpointing; resumable.

    The segment owns ``ckpt_dir`` and the records of ``log`` whose fields
    equal ``tags`` and those of one of its members. Run again after a kill,
    it restores its newest good checkpoint, drops its records written after
    that step, and continues; run after it finished, it only restores the
    final state. Each eval step (multiples of ``eval_every``, the start and
    ``end``) appends one record per member and split: ``{**tags,
    **member_tags[m], step, split, loss, accuracy, density}``, plus a
    ``train_running`` record with the mean training loss since the previous eval.
    A member whose loss on the first split rises above :data:`DIVERGENCE_FACTOR`
    times its loss at the start is flagged once with :func:`warn` (in the log
    and ``warnings.jsonl``; training goes on).

    Training calls end at the checkpoint and telemetry steps. Under the
    executor's ``'scan_vmap'`` strategy (dense nets, any net on an accelerator)
    whole evaluation intervals between them train and evaluate in one program
    (:meth:`~ltjax.engine.executor.Executor.train_and_evaluate`, at most
    :data:`IN_PROGRAM_STEPS` steps per call): one host transfer per call, not
    one per evaluation; a part interval (a start or stop between evaluated
    steps), or an interval longer than :data:`IN_PROGRAM_STEPS`, trains alone
    and evaluates after. Under ``'unrolled_loop'`` (conv nets on a CPU: seconds
    per step) calls also end at the evaluated steps and are at most one
    executor chunk (``steps_per_call`` steps, the programs and numbers of a
    longer call), so the progress bar moves every chunk. Where a call ends
    depends on the config alone, so a resumed segment runs the programs of an
    uninterrupted one. After a call that ends ``checkpoint_seconds`` or more
    after the last save, a checkpoint is saved whatever the step: a kill
    loses little even when ``checkpoint_every`` is the whole segment.

    Args:
      executor: the executor.
      state: stacked start state ``[S]`` (its step is the segment's start).
      masks: stacked masks ``[S]`` or None (dense).
      noise_keys: ``noise`` keys ``[S]``.
      end: the step to train to.
      eval_every: eval interval in steps.
      checkpoint_every: checkpoint interval in steps (training calls stop there too, so a
        kill loses at most this many steps; the end is always saved).
      ckpt_dir: this segment's checkpoint folder.
      log: the workdir's metrics log.
      tags: fields that identify this segment's records (e.g. level, branch).
      splits: splits to evaluate.
      densities: per-replicate density ``[S]`` written into the records.
      progress: show a progress bar.
      desc: the progress bar's label.
      max_checkpoints: checkpoints kept in ``ckpt_dir`` (default :data:`MAX_CHECKPOINTS`).
      hparams: per-member hyperparameters ``[S]`` (None: the recipe's).
      member_tags: one dict of fields per member (default ``{'replicate': m}``),
        e.g. ``{'branch': 'reinit', 'replicate': 1}`` for the members of an IMP level.
      observer: telemetry to log on its schedule (:class:`TelemetryObserver`):
        training calls stop at its steps too, and its records (and weight
        snapshots) after a restored step are dropped on resume, like the metrics.
      subsets: per-member training subsets ``[S, n]`` (:meth:`Executor.train`), or None.
      checkpoint_seconds: also save after a call ending this long after the last save
        (default :data:`CHECKPOINT_SECONDS`; None: only on ``checkpoint_every``'s steps).

    Returns:
      The state at ``end`` and the segment's :class:`Curves` (every evaluation from its
      start; each checkpoint keeps them, so a resumed or restored segment gives them too).

    Raises:
      ValueError: a checkpoint of another config, other members or masks, one beyond
        ``end``, or one saved before checkpoints kept their curves (2026-12-07).
    """
    num = int(np.shape(noise_keys)[0])
    start = int(np.asarray(distributed.host(state.step)).reshape(-1)[0])
    if end < start:
        raise ValueError(f"end={end} is before the segment's start step {start}")
    member_tags = member_tags or [{"replicate": r} for r in range(num)]
    if len(member_tags) != num:
        raise ValueError(f"member_tags must have one dict per member ({num}), got "
                         f"{len(member_tags)}")
    reserved = sorted(set(RECORD_FIELDS) & ({*tags} | {k for m in member_tags for k in m}))
    if reserved:  # a tag the record overwrites would never match its own records on resume
        raise ValueError(f"tags and member_tags may not use the record's own fields "
                         f"{reserved} (name them e.g. 'target_{reserved[0]}')")

    def mine(record: dict) -> bool:
        return all(record.get(k) == v for k, v in tags.items()) and any(
            all(record.get(k) == v for k, v in m.items()) for m in member_tags)

    workdir = log.path.parent
    start_losses: dict[int, float] = {}

    def check_divergence(step: int, losses: np.ndarray) -> None:
        if step == start:
            start_losses.update(enumerate(np.asarray(losses, np.float64).tolist()))
            return
        known = sorted(start_losses)
        flagged = diverged([start_losses[r] for r in known], np.asarray(losses)[known])
        for r in np.asarray(known)[flagged].tolist():
            member = {**tags, **member_tags[r]}
            warn(workdir, f"diverged: {member} has {splits[0]} loss {float(losses[r]):.3g} at "
                 f"step {step}, over {DIVERGENCE_FACTOR:g}x its {start_losses[r]:.3g} at step "
                 f"{start} (lower the learning rate?)",
                 once={"kind": "divergence", "segment_start": start, **member},
                 step=step, split=splits[0], loss=float(losses[r]))

    history: list[dict] = []  # every evaluation, in the checkpoints' meta (Curves)

    def evaluate(step: int, train_loss: np.ndarray | None) -> None:
        record(step, {split: executor.evaluate(state, split, masks) for split in splits},
               train_loss)

    def record(step: int, evaluated: dict[str, dict[str, np.ndarray]],
               train_loss: np.ndarray | None) -> None:
        rows = []
        entry = {"step": step, "splits": {},
                 "train_loss": None if train_loss is None else [float(v) for v in train_loss]}
        for split in splits:
            metrics = evaluated[split]
            if split == splits[0]:
                check_divergence(step, metrics["loss"])
            entry["splits"][split] = {k: [float(v) for v in np.asarray(metrics[k])]
                                      for k in ("loss", "accuracy")}
            rows += [{**tags, **member_tags[r], "step": step, "split": split,
                      "loss": metrics["loss"][r], "accuracy": metrics["accuracy"][r],
                      "density": float(densities[r])} for r in range(num)]
        if train_loss is not None:
            rows += [{**tags, **member_tags[r], "step": step, "split": "train_running",
                      "loss": train_loss[r], "accuracy": None, "density": float(densities[r])}
                     for r in range(num)]
        log.append(rows)
        history.append(entry)

    fingerprint = config_fingerprint(log.path.parent)

    def meta(step: int) -> dict:
        return {**tags, "step": step, "members": member_tags, "config": fingerprint,
                "densities": [float(d) for d in densities], "curves": history}

    observe_steps = set(observer.steps) if observer is not None else set()

    def observe(step: int) -> None:
        if step in observe_steps:
            observer.observe(step, executor.model_params(state, masks), state.batch_stats,
                             tags=tags, member_tags=member_tags)

    max_checkpoints = MAX_CHECKPOINTS if max_checkpoints is None else max_checkpoints
    with checkpoint.Checkpointer(ckpt_dir, max_to_keep=max_checkpoints) as ckpt:
        found = ckpt.restore_latest(like_state=state, like_masks=masks)
        if found is None and ckpt.steps():
            raise ValueError(
                f"{ckpt.directory} holds checkpoints {ckpt.steps()} of which none restores "
                "onto this run's state (damaged, or written by another ltjax version or "
                "config); move the folder aside or use a new workdir")
        step = start
        if found is not None:
            step, state, saved_masks, saved = found
            _check_saved(ckpt, saved, fingerprint, member_tags)
            if step > end:
                raise ValueError(
                    f"{ckpt.directory} holds step {step}, beyond this segment's end {end}: "
                    "the workdir's files disagree (was a log deleted or another run's folder "
                    "copied in?); use a new workdir")
            check_same_masks(ckpt.directory, step, saved_masks, masks)
            history[:] = _saved_curves(ckpt, saved, step)
        log.keep_only(lambda r, s=step, f=found: not mine(r) or (f is not None and r["step"] <= s))
        if observer is not None:
            observer.drop_after(step if found is not None else start - 1, mine)
        if history and history[0]["step"] == start and splits:  # the start losses
            start_losses.update(enumerate(history[0]["splits"][splits[0]]["loss"]))
        if found is None:
            evaluate(start, None)
            observe(start)
        elif step == end:
            say(f"{desc}: finished (step {end}), restored", progress)
        else:
            say(f"{desc}: resuming at step {step} of {end}", progress)
        bar = tqdm.tqdm(total=end - start, initial=step - start,
                        disable=not progress or step == end, unit="step", desc=desc)
        # Training losses since the last eval: (mean loss [S], steps) per train call; a
        # checkpoint between evals stores them, so a resumed run logs the same means.
        pending = [] if found is None else [(np.asarray(m, np.float64), n)
                                            for m, n in saved.get("pending_losses", [])]
        # Conv nets on CPU: one executor chunk per call (the same chunks as one longer call).
        most = executor.steps_per_call if executor.strategy == "unrolled_loop" else end - step
        # Dense nets: whole evaluation intervals train and evaluate in one program per call.
        in_program = executor.strategy == "scan_vmap"
        last_save = time.monotonic()
        while step < end:
            stop = min(end, (step // checkpoint_every + 1) * checkpoint_every,
                       *(s for s in observe_steps if s > step), step + most)
            intervals = min((stop - step) // eval_every, IN_PROGRAM_STEPS // eval_every
                            ) if in_program and step % eval_every == 0 else 0
            if intervals:  # an evaluated step: nothing pending
                state, losses, evaluated = executor.train_and_evaluate(
                    state, masks, noise_keys, num_intervals=intervals, interval=eval_every,
                    splits=splits, hparams=hparams, subsets=subsets)
                for e in range(intervals):
                    record(step + (e + 1) * eval_every,
                           {s: {k: v[e] for k, v in m.items()} for s, m in evaluated.items()},
                           losses[e])
                bar.update(intervals * eval_every)
                step += intervals * eval_every
            else:  # up to the next evaluated step, or a stop before it
                target = min(stop, (step // eval_every + 1) * eval_every)
                state, train_loss = executor.train(state, masks, noise_keys,
                                                   num_steps=target - step, hparams=hparams,
                                                   subsets=subsets)
                pending.append((train_loss, target - step))
                bar.update(target - step)
                step = target
                if step % eval_every == 0 or step == end:
                    evaluate(step, _mean_loss(pending))
                    pending = []
            observe(step)
            overdue = checkpoint_seconds is not None and (
                time.monotonic() - last_save >= checkpoint_seconds)
            if step % checkpoint_every == 0 or step == end or overdue:
                ckpt.save(step, state=state, masks=masks, meta={
                    **meta(step), "pending_losses": [([float(v) for v in m], n)
                                                     for m, n in pending]})
                last_save = time.monotonic()
        bar.close()
        if start == end and found is None:
            ckpt.save(step, state=state, masks=masks, meta=meta(step))
    return state, Curves.from_history(history, density=[float(d) for d in densities])


def _saved_curves(ckpt: checkpoint.Checkpointer, saved: dict, step: int) -> list[dict]:
    """The evaluation history a restored checkpoint kept (:class:`Curves`), checked."""
    history = saved.get("curves")
    if not isinstance(history, list) or any(e.get("step", step + 1) > step for e in history):
        raise ValueError(
            f"{ckpt.directory} holds step {step} without its evaluated curves (written by an "
            "ltjax before 2026-12-07, when checkpoints began to keep them, or damaged); use "
            "a new workdir")
    return list(history)


def check_same_masks(ckpt_dir: str | pathlib.Path, step: int, saved_masks: Any,
                     masks: Any) -> None:
    """Refuse a restored step saved with other masks than the caller gives its segment.

    Raises:
      ValueError: ``masks`` (not None) and ``saved_masks`` differ (by checksum).
    """
    if masks is not None and checkpoint.checksum(saved_masks) != checkpoint.checksum(masks):
        raise ValueError(f"{ckpt_dir} holds step {step} trained with other masks than this run "
                         "gives the segment (the workdir's files disagree); use a new workdir")


def member_tags_of(rows: list[dict]) -> list[dict]:
    """Table rows' identifying fields as :func:`train_segment` member tags.

    A row's field named like one a record writes itself (:data:`RECORD_FIELDS`,
    e.g. the target ``density`` of a grid, where the record logs the kept
    density) becomes ``target_<field>``, so the segment recognises its own
    records exactly on resume.

    Example:
        >>> from ltjax.studies import common
        >>> common.member_tags_of([{"density": 0.1, "replicate": 0}])
        [{'target_density': 0.1, 'replicate': 0}]
    """
    return [{f"target_{k}" if k in RECORD_FIELDS else k: v for k, v in row.items()}
            for row in rows]


def _check_saved(ckpt: checkpoint.Checkpointer, saved: dict, fingerprint: str | None,
                 member_tags: list[dict]) -> None:
    """A restored checkpoint's meta against this run: its config and its members."""
    if fingerprint and saved.get("config") and saved["config"] != fingerprint:
        raise ValueError(
            f"{ckpt.directory} holds checkpoints of a run with another config than this "
            "workdir's config.json (was config.json replaced?); use a new workdir")
    if saved.get("members", member_tags) != member_tags:
        raise ValueError(
            f"{ckpt.directory} holds members {saved.get('members')}, this run trains "
            f"{member_tags}; use a new workdir")


def finished_segment(
    executor: executor_lib.Executor, ckpt_dir: str | pathlib.Path, *, end: int,
    log: results.MetricsLog, member_tags: list[dict], masks: bool = True,
) -> tuple[train.TrainState, Any, Curves] | None:
    """The final state, masks and curves of a :func:`train_segment` that reached ``end``, else None.

    Restores onto :meth:`ltjax.engine.executor.Executor.abstract_members`: nothing is
    computed or compiled, so a study re-run over finished work can skip
    building each segment's start state (and its programs). The checkpoint is
    checked as :func:`train_segment` would (checksums, config, members).

    Args:
      executor: the segment's executor.
      ckpt_dir: the segment's checkpoint folder.
      end: the step the segment trains to.
      log: the workdir's metrics log (for the config fingerprint).
      member_tags: the segment's members, as passed to :func:`train_segment`.
      masks: whether the segment saved masks (False: a dense segment, masks=None).

    Returns:
      ``(state, masks, curves)`` at ``end`` (masks None when ``masks=False``;
      :class:`Curves` from the checkpoint), or None when the segment has not
      finished (then call :func:`train_segment`).

    Example:
        Not run here (it reads a segment's checkpoints in a workdir):

        ```python
        done = finished_segment(executor, ckpt_dir, end=end, log=log, member_tags=tags)
        # a study asks its run instead: run.finished(name, member_tags=tags), or hands
        # run.segment(name, state=start_state, ...) the start-state function
        ```
    """
    ckpt_dir = pathlib.Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    like_state, like_masks = executor.abstract_members(len(member_tags))
    with checkpoint.Checkpointer(ckpt_dir) as ckpt:
        if not ckpt.steps() or ckpt.steps()[-1] != end:
            return None
        found = ckpt.restore_latest(like_state=like_state,
                                    like_masks=like_masks if masks else None)
        if found is None or found[0] != end:
            return None
        _, state, saved_masks, saved = found
        _check_saved(ckpt, saved, config_fingerprint(log.path.parent), member_tags)
        history = _saved_curves(ckpt, saved, end)
    return state, saved_masks, Curves.from_history(history, density=saved["densities"])


class TelemetryObserver:
    """Telemetry of a segment's members on a schedule (Frankle et al. 2020, Figure 3).

    At each step of ``steps`` it appends, per member, the quantities of
    :func:`ltjax.methods.telemetry.snapshot` (per prunable layer and ``'global'``; the
    gradient is the training loss's on ``batch``, with BatchNorm in training
    mode) and the values of ``tracked`` weights to ``log`` in long format
    (``{**tags, **member, step, layer, quantity, value}``), and keeps the
    prunable weights as ``<snapshot_dir>/step_<t>.npz`` for the post-pass
    against the final weights (:meth:`versus_final`). At each step of
    ``hessian_steps`` it logs the top eigenvalue of the Hessian of the training
    loss on the same ``batch`` (the paper's sharpness;
    :func:`ltjax.methods.telemetry.hessian_top_eigenvalue`, ``hessian_iterations``
    power iterations from the vector of ``fold_in(key(0), step)``, the same for
    every member) as rows of quantity ``'hessian_top_eigenvalue'``, layer
    ``'global'``.

    Args:
      executor: the segment's executor.
      params_0: the members' initial model params ``[S, ...]``.
      steps: the steps to observe (:func:`ltjax.methods.telemetry.schedule`).
      log: where the records go (e.g. ``<workdir>/telemetry.jsonl``).
      snapshot_dir: where the weights of each observed step go.
      batch: a fixed training batch ``(x, y)`` (raw, as stored) for the gradient.
      tracked: ``(layer, flat index)`` weights to follow
        (:func:`ltjax.methods.telemetry.tracked_indices`).
      hessian_steps: the steps at which to log the Hessian's top eigenvalue
        (need not be among ``steps``).
      hessian_iterations: power iterations per eigenvalue.
      masks: the members' masks ``[S, ...]`` (sparse members: every quantity,
        the post-pass's too, over each member's kept weights), or None (dense).

    Example:
        Not run here (it trains a segment and writes into its workdir):

        ```python
        observer = TelemetryObserver(executor, state.params, telemetry.schedule(end), log=...)
        segment(executor, state=state, ..., observer=observer)
        observer.versus_final(final_params, tags=tags, member_tags=member_tags)
        ```
    """

    def __init__(self, executor: executor_lib.Executor, params_0: Any, steps: list[int], *,
                 log: results.MetricsLog, snapshot_dir: str | pathlib.Path,
                 batch: tuple[np.ndarray, np.ndarray], tracked: list[tuple[str, int]],
                 hessian_steps: list[int] = (), hessian_iterations: int = 20,
                 masks: Any = None):
        from ltjax.core import masking
        from ltjax.methods import telemetry

        self.snapshot_steps = set(steps)
        self.hessian_steps = set(hessian_steps)
        self.steps = sorted(self.snapshot_steps | self.hessian_steps)
        self.log = log
        self.snapshot_dir = pathlib.Path(snapshot_dir)
        self.selection = masking.prunable(executor.abstract_params)
        self.tracked = list(tracked)
        self.params_0 = params_0
        model, dataset = executor.model, executor.dataset
        x = data.normalize(batch[0], dataset.mean, dataset.std)
        y = jnp.asarray(batch[1], jnp.int32)
        selection, tracked_ = self.selection, self.tracked

        self.masks = masks

        def one(params, params_0, batch_stats, masks=None):
            grads = jax.grad(lambda p: train.cross_entropy(
                train.logits(model, p, batch_stats, x, train=True), y).mean())(params)
            out = telemetry.snapshot(params, params_0, grads, selection, masks=masks)
            out["tracked"] = {f"{name}[{i}]": v for (name, i), v in zip(
                tracked_, telemetry.tracked_values(params, tracked_), strict=True)}
            return out

        self._quantities = jax.jit(jax.vmap(one))

        def sharpness(params, batch_stats, step):
            key = jax.random.fold_in(jax.random.key(0), step)

            def loss(p):
                return train.cross_entropy(
                    train.logits(model, p, batch_stats, x, train=True), y).mean()

            return {"hessian_top_eigenvalue": {telemetry.GLOBAL: telemetry.hessian_top_eigenvalue(
                loss, params, key, iterations=hessian_iterations)}}

        self._sharpness = jax.jit(jax.vmap(sharpness, in_axes=(0, 0, None)))
        # On the kept layers by name ({'Dense_0/kernel': [S, ...]}), every one selected.
        self._final = jax.jit(jax.vmap(lambda p, f, m=None: telemetry.versus_final(
            p, f, jax.tree.map(lambda _: True, p), masks=m)))

    def _kept(self, params: Any) -> dict[str, np.ndarray]:
        host = distributed.host(params)
        return {name: np.asarray(leaf) for name, leaf, keep in zip(
            tree.names(host), jax.tree.leaves(host), jax.tree.leaves(self.selection),
            strict=True) if keep}

    def observe(self, step: int, params: Any, batch_stats: Any, *, tags: dict,
                member_tags: list[dict]) -> None:
        """Log the members' quantities at ``step`` and keep their weights."""
        rows = []
        if step in self.hessian_steps:
            eigen = distributed.host(self._sharpness(params, batch_stats, np.int32(step)))
            rows += _member_rows(step, eigen, tags, member_tags)
        if step not in self.snapshot_steps:
            self.log.append(rows)
            return
        quantities = distributed.host(self._quantities(
            params, self.params_0, batch_stats, *([] if self.masks is None else [self.masks])))
        rows += _member_rows(step, quantities, tags, member_tags)
        path = self.snapshot_dir / f"step_{step:08d}.npz"
        kept = self._kept(params)

        def write() -> None:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **kept)
            os.replace(tmp, path)

        distributed.write(f"save {path}", write)
        self.log.append(rows)

    def drop_after(self, step: int, mine: Callable[[dict], bool]) -> None:
        """Drop this segment's records (and snapshots) after ``step`` (a resumed run)."""
        self.log.keep_only(lambda r: not mine(r) or r["step"] <= step)
        later = [p for p in self.snapshot_dir.glob("step_*.npz")
                 if int(p.stem.split("_")[1]) > step]
        distributed.write(f"drop {self.snapshot_dir}", lambda: [p.unlink() for p in later])

    def versus_final(self, final_params: Any, *, tags: dict, member_tags: list[dict],
                     keep_snapshots: bool = False) -> None:
        """The post-pass: each observed step's weights against the final ones, logged once.

        Rows of :data:`ltjax.methods.telemetry.FINAL_QUANTITIES` at every snapshot
        step; then the snapshots are removed unless ``keep_snapshots``. Does
        nothing when the post-pass already ran (a rerun of a finished run).
        """
        from ltjax.methods import telemetry

        if any(r.get("quantity") in telemetry.FINAL_QUANTITIES and all(
                r.get(k) == v for k, v in tags.items()) for r in self.log.read()):
            return
        final = self._kept(final_params)
        names = list(final)
        kept_masks = None if self.masks is None else {
            n: jnp.asarray(m) for n, m in self._kept(self.masks).items()}
        rows = []
        for path in sorted(self.snapshot_dir.glob("step_*.npz")):
            step = int(path.stem.split("_")[1])
            with np.load(path) as stored:
                at = {n: stored[n] for n in names}
            flat = distributed.host(self._final(
                {n: jnp.asarray(at[n]) for n in names}, {n: jnp.asarray(final[n]) for n in names},
                *([] if kept_masks is None else [kept_masks])))
            rows += _member_rows(step, flat, tags, member_tags)
        self.log.append(rows)
        if not keep_snapshots:
            snapshots = list(self.snapshot_dir.glob("step_*.npz"))
            distributed.write(f"remove {self.snapshot_dir}",
                              lambda: [p.unlink() for p in snapshots])


def _member_rows(step: int, stacked: dict, tags: dict, member_tags: list[dict]) -> list[dict]:
    """Telemetry rows of every member from quantities stacked ``[S]`` (host arrays)."""
    from ltjax.methods import telemetry

    return [{**tags, **member, **row} for m, member in enumerate(member_tags)
            for row in telemetry.rows_of(step, jax.tree.map(lambda v, m=m: v[m], stacked))]


def computed_once(workdir: str | pathlib.Path, name: str, compute_fn: Callable[[], Any], *,
                  like: Any) -> Any:
    """Arrays a study computes once and must not recompute on resume (e.g. example scores).

    Stored as checkpoint step 0 of ``<workdir>/checkpoints/<name>``, with the
    workdir's config fingerprint and checksums (:mod:`ltjax.io.checkpoint`), so
    a rerun restores exactly what this config computed: a file of another
    config, or a damaged one, is never read back (damage is moved aside and
    the arrays recomputed).

    Args:
      workdir: the study's workdir (already prepared: its ``config.json`` exists).
      name: the checkpoint folder's name.
      compute_fn: computes the arrays (a pytree of host or device arrays).
      like: a pytree of ``jax.ShapeDtypeStruct`` (or arrays) shaped as the result.

    Returns:
      The arrays, as host NumPy arrays.

    Example:
        Not run here (it writes into a prepared workdir):

        ```python
        scores = computed_once(workdir, "scores", lambda: score_fn(state),
                               like=jax.ShapeDtypeStruct((n,), np.float32))
        ```
    """
    fingerprint = config_fingerprint(workdir)
    with checkpoint.Checkpointer(pathlib.Path(workdir) / "checkpoints" / name) as ckpt:
        found = ckpt.restore_latest(like_state=like)
        if found is not None:
            _, arrays, _, saved = found
            _check_saved(ckpt, saved, fingerprint, [])
            return jax.tree.map(np.asarray, distributed.host(arrays))
        arrays = jax.tree.map(np.asarray, distributed.host(compute_fn()))
        ckpt.save(0, state=arrays, meta={"config": fingerprint, "members": []})
    return arrays


def config_fingerprint(workdir: str | pathlib.Path) -> str | None:
    """A digest of ``workdir/config.json`` (canonical JSON), or None when there is none.

    Stored in every checkpoint a study writes, so a run whose ``config.json``
    was deleted and rewritten by another config cannot resume the old
    checkpoints silently.
    """
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        return None
    canonical = json.dumps(results.read_json(path), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _mean_loss(pending: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """The step-weighted mean of per-call mean losses (one call: its mean, unchanged)."""
    if len(pending) == 1:
        return pending[0][0]
    total = sum(n for _, n in pending)
    return sum(np.asarray(m, np.float64) * n for m, n in pending) / total


def records_once(workdir: str | pathlib.Path, log: results.MetricsLog | None, name: str,
                 compute: Callable[[], list[dict]], *,
                 mine: Callable[[dict], bool] | None = None) -> list[dict]:
    """Records a study evaluates once (paths, soups): a rerun restores them, never the log.

    The records go to the log and to a checkpoint (``checkpoints/<name>``: the
    records in its checksummed meta, with the config's fingerprint), in that
    order: a run killed between the two evaluates again, and the log's records
    for which ``mine`` holds (the killed evaluation's) are dropped first, so the
    log ends as an uninterrupted run's.

    Args:
      workdir: the study's workdir.
      log: its metrics log, or None (the records are kept in the checkpoint only, e.g.
        a matching's permutations).
      name: the checkpoint's name under ``checkpoints/``.
      compute: evaluates the records.
      mine: whether a log record is one of these records (with a log).

    Returns:
      The records as the log holds them (:func:`ltjax.io.results.as_logged`), the same
      whether evaluated now or restored.

    Example:
        Not run here (it writes into a prepared workdir):

        ```python
        records = records_once(workdir, log, "evals/ensemble", evaluate_ensemble,
                               mine=lambda r: r.get("model") == "ensemble")
        ```
    """
    fingerprint = config_fingerprint(workdir)
    count = jax.ShapeDtypeStruct((), np.int32)
    with checkpoint.Checkpointer(pathlib.Path(workdir) / "checkpoints" / name) as ckpt:
        found = ckpt.restore_latest(like_state={"records": count})
        if found is not None:
            _, _, _, saved = found
            _check_saved(ckpt, saved, fingerprint, [])
            return saved["records"]
        if log is not None:
            log.keep_only(lambda r: not mine(r))
        records = results.as_logged(compute())
        if log is not None:
            log.append(records)
        ckpt.save(0, state={"records": np.int32(len(records))},
                  meta={"config": fingerprint, "members": [], "records": records})
    return records


def path_once(workdir: str | pathlib.Path, log: results.MetricsLog, name: str, tags: dict,
              alphas: Any, splits: Sequence[str], evaluate: Callable[[], dict],
              ) -> tuple[dict, list[dict]]:
    """An interpolation path's curves, evaluated once (:func:`records_once`).

    Args:
      workdir: the study's workdir.
      log: its metrics log.
      name: the checkpoint's name under ``checkpoints/``.
      tags: the fields of the path's records (with ``splits``, they identify them in
        the log).
      alphas: the path's points ``[A]``.
      splits: the splits evaluated.
      evaluate: computes ``{split: {'accuracy': [A], 'loss': [A]}}`` on ``splits``.

    Returns:
      ``({split: (alphas, accuracy, loss)}, records)``: float64 arrays (the values the
      log holds) and the path's records (``{**tags, 'split', 'alpha', 'step': None,
      'loss', 'accuracy'}``), the same whether evaluated now or restored.

    Example:
        Not run here (it writes into a prepared workdir):

        ```python
        curves, records = path_once(workdir, log, "paths/pair_0-1", {"pair": "0-1"},
                                    alphas, ["test"], lambda: {"test": on_path("test")})
        alphas, accuracy, loss = curves["test"]
        ```
    """
    alphas = [float(x) for x in alphas]

    def compute() -> list[dict]:
        curves = evaluate()
        return [{**tags, "split": split, "alpha": x, "step": None,
                 "loss": curves[split]["loss"][n], "accuracy": curves[split]["accuracy"][n]}
                for split in splits for n, x in enumerate(alphas)]

    records = records_once(workdir, log, name, compute, mine=lambda r: r.get("split") in splits
                           and all(r.get(k) == v for k, v in tags.items()))
    curves = {split: tuple(np.array([r[f] for r in records if r["split"] == split], np.float64)
                           for f in ("alpha", "accuracy", "loss")) for split in splits}
    return curves, records
