"""Checkpoints: every orbax call of ltjax lives here and nowhere else.

A checkpoint is an orbax ``CheckpointManager`` step holding a composite of
up to three items:

- ``state``: any pytree of arrays (a stacked :class:`ltjax.engine.train.TrainState`
  keeps its replicate axis ``[S, ...]``),
- ``masks``: bool masks, saved as their own item (optional),
- ``meta``: a JSON dict (level, step, what is finished...).

PRNG keys are never stored: they are re-derived from the config's seed.

Two orbax traps (FACTS.md) are handled here: saves are asynchronous, so
:meth:`Checkpointer.save` waits for the write unless told not to and
:meth:`Checkpointer.close` always waits; and a finished step damaged later is
still listed by ``latest_step()``, so :meth:`Checkpointer.restore_latest`
falls back to the newest step that restores.

Nothing restores silently wrong: each step's metadata carries the layout
(paths, shapes, dtypes) and a checksum (BLAKE2b of every array's bytes) of its
state and masks, and of the meta itself. :meth:`Checkpointer.restore` verifies the
checksums of what it restores (:class:`DamagedCheckpointError` on a mismatch: flipped bytes).
:meth:`Checkpointer.restore_latest` tells damage from a different run: a step
whose layout differs from the caller's raises a clear error (another config
wrote it); a step of the same layout that does not restore or fails its
checksum (a deleted or truncated file, a missing manifest, flipped bytes) is
moved aside to ``<directory>.damaged/`` (never deleted) and the previous step
is tried, so a rerun retrains what was lost and saves that step again.

In a multi-process run (:mod:`ltjax.io.distributed`) every process makes the
same calls: orbax coordinates the saves and restores of the global arrays
(each process writes its own shards; process 0 the metadata), and the
checksums are of the gathered arrays.

Example:
    Save a stacked train state and its masks at step 100, then restore the
    latest checkpoint onto the same structure (not run here: it writes a
    directory):

    ```python
    with Checkpointer(workdir / "checkpoints") as ckpt:
        ckpt.save(100, state=state, masks=masks, meta={"level": 0})
        found = ckpt.restore_latest(like_state=state, like_masks=masks)
    step, state, masks, meta = found
    ```
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ltjax.io import distributed

PyTree = Any
_ITEMS = ("state", "masks", "meta")
_INFO = "_ltjax"  # the metadata key of the layouts and checksums (removed from returned meta)


class DamagedCheckpointError(ValueError):
    """A checkpoint step's arrays do not match the checksum saved with them."""


def _leaves(tree: PyTree) -> list[tuple[str, Any]]:
    return [(jax.tree_util.keystr(path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def layout(tree: PyTree | None) -> str:
    """A digest of ``tree``'s paths, shapes and dtypes (not its values); ``'none'`` for None."""
    if tree is None:
        return "none"
    digest = hashlib.blake2b(digest_size=16)
    for name, leaf in _leaves(tree):
        shape = tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)
        digest.update(f"{name}|{shape}|{np.dtype(leaf.dtype).str};".encode())
    return digest.hexdigest()


def checksum(tree: PyTree | None) -> str:
    """A BLAKE2b digest of ``tree``'s paths and array bytes (fetched to the host).

    Of the global arrays in a multi-process run (:func:`ltjax.io.distributed.host`
    gathers them): the same digest in every process and for any device layout.
    """
    if tree is None:
        return "none"
    digest = hashlib.blake2b(digest_size=16)
    for name, leaf in _leaves(distributed.host(tree)):
        array = np.ascontiguousarray(leaf)
        digest.update(f"{name}|{array.shape}|{array.dtype.str};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _meta_checksum(meta: dict) -> str:
    """A BLAKE2b digest of ``meta`` as canonical JSON (what a JSON round trip keeps)."""
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def abstract_like(tree: PyTree) -> PyTree:
    """Shape/dtype/sharding structs of ``tree``: the target that restores onto the same devices."""

    def one(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(one, tree)


class Checkpointer:
    """Numbered checkpoints in ``directory`` (created if missing).

    Args:
      directory: where the steps live (e.g. ``<workdir>/checkpoints``).
      max_to_keep: keep only the newest N steps (None keeps all).
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = None):
        self.directory = os.fspath(os.path.abspath(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def steps(self) -> list[int]:
        """The finished steps, oldest first."""
        return sorted(self._manager.all_steps())

    def save(
        self, step: int, *, state: PyTree, masks: PyTree | None = None,
        meta: dict | None = None, wait: bool = True,
    ) -> None:
        """Save ``state`` (and ``masks``, ``meta``) as ``step``.

        Raises:
          ValueError: ``step`` exists already (orbax would silently skip it).
        """
        if step in self._manager.all_steps():
            raise ValueError(f"checkpoint step {step} already exists in {self.directory}")
        info = {"layout": {"state": layout(state), "masks": layout(masks)},
                "checksum": {"state": checksum(state), "masks": checksum(masks),
                             "meta": _meta_checksum(meta or {})}}
        items = {"state": ocp.args.StandardSave(state),
                 "meta": ocp.args.JsonSave({**(meta or {}), _INFO: info})}
        if masks is not None:
            items["masks"] = ocp.args.StandardSave(masks)
        self._manager.save(step, args=ocp.args.Composite(**items))
        if wait:
            self._manager.wait_until_finished()

    def restore(
        self, step: int, *, like_state: PyTree | None, like_masks: PyTree | None = None,
    ) -> tuple[PyTree | None, PyTree | None, dict]:
        """Restore ``step`` onto the structure, shapes and shardings of ``like_*``.

        Args:
          step: a step in :meth:`steps`.
          like_state: arrays (or ``jax.ShapeDtypeStruct``) shaped like the saved state;
            None to skip it.
          like_masks: likewise for the masks; None to skip them.

        Returns:
          ``(state, masks, meta)``; state or masks is None when not asked for.

        Raises:
          DamagedCheckpointError: a restored item does not match its saved checksum.
        """
        items = {"meta": ocp.args.JsonRestore()}
        if like_state is not None:
            items["state"] = ocp.args.StandardRestore(abstract_like(like_state))
        if like_masks is not None:
            items["masks"] = ocp.args.StandardRestore(abstract_like(like_masks))
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        state = restored["state"] if like_state is not None else None
        masks = restored["masks"] if like_masks is not None else None
        meta = dict(restored["meta"] or {})
        info = meta.pop(_INFO, None)
        if info is not None:
            for name, tree in (("state", state), ("masks", masks)):
                if tree is not None and checksum(tree) != info["checksum"][name]:
                    raise DamagedCheckpointError(
                        f"checkpoint step {step} in {self.directory}: the {name} does not match "
                        "the checksum saved with it (damaged bytes)")
            expected = info["checksum"].get("meta")  # None: a step of older ltjax
            if expected is not None and _meta_checksum(meta) != expected:
                raise DamagedCheckpointError(
                    f"checkpoint step {step} in {self.directory}: its meta does not match the "
                    "checksum saved with it (edited or damaged)")
        return state, masks, meta

    def _read_info(self, step: int) -> dict | None:
        """The step's layouts and checksums (None if its metadata does not read)."""
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))
        except (ValueError, FileNotFoundError, KeyError, OSError):
            return None
        return dict(restored["meta"] or {}).get(_INFO, {})

    def _missing_files(self, step: int, *, masks: bool) -> str | None:
        """The first file a step's arrays cannot be read without, if it is gone.

        An array item written by orbax holds ``_METADATA``, ``manifest.ocdbt`` and its
        data files under ``d/``; the meta item holds ``metadata``.
        """
        root = os.path.join(self.directory, str(step))
        needed = [os.path.join("meta", "metadata")]
        for item in ("state", "masks") if masks else ("state",):
            needed += [os.path.join(item, "_METADATA"), os.path.join(item, "manifest.ocdbt")]
        for name in needed:
            if not os.path.isfile(os.path.join(root, name)):
                return name
        for item in ("state", "masks") if masks else ("state",):
            data = os.path.join(root, item, "d")
            if not os.path.isdir(data) or not os.listdir(data):
                return os.path.join(item, "d")
        return None

    def _move_aside(self, step: int, why: str) -> None:
        """Move a damaged step to ``<directory>.damaged/<step>-<time>`` and forget it."""
        target_dir = self.directory + ".damaged"
        target = os.path.join(target_dir, f"{step}-{time.time_ns()}")

        def move() -> None:  # process 0's move (a multi-process run), seen by all after it
            os.makedirs(target_dir, exist_ok=True)
            os.replace(os.path.join(self.directory, str(step)), target)

        distributed.write(f"move aside {self.directory}/{step}", move)
        self._manager.reload()
        logging.warning("checkpoint step %d in %s is damaged (%s); moved to %s", step,
                        self.directory, why, target)

    def restore_latest(
        self, *, like_state: PyTree, like_masks: PyTree | None = None,
    ) -> tuple[int, PyTree, PyTree | None, dict] | None:
        """The newest step that restores, as ``(step, state, masks, meta)``; None if none.

        A damaged step (a deleted or truncated file, a missing manifest,
        bytes that fail the checksum) of this run's layout is moved aside to
        ``<directory>.damaged/`` and the one before it is tried; a step
        without layout information (older ltjax) is only skipped.

        Raises:
          ValueError: a step was written with another layout of state or
            masks (another config or ltjax version), naming the step.
        """
        want = {"state": layout(like_state), "masks": layout(like_masks)}
        for step in reversed(self.steps()):
            info = self._read_info(step)
            if info and info.get("layout") != want:
                raise ValueError(
                    f"checkpoint step {step} in {self.directory} was written with another layout "
                    "of state or masks (another config or ltjax version); use a new workdir or "
                    "move the folder aside")
            missing = self._missing_files(step, masks=like_masks is not None)
            if missing and (info is None or info):  # before orbax reads it (see above)
                self._move_aside(step, f"{missing} is missing")
                continue
            try:
                state, masks, meta = self.restore(step, like_state=like_state,
                                                  like_masks=like_masks)
            except Exception as err:  # noqa: BLE001 (tensorstore raises bare Exception)
                if info is None or info:  # unreadable metadata, or this run's layout: damage
                    self._move_aside(step, str(err).splitlines()[0][:200] if str(err) else
                                     type(err).__name__)
                else:
                    logging.warning("checkpoint step %d in %s does not restore (%s); trying the "
                                    "previous one", step, self.directory, err)
                continue
            return step, state, masks, meta
        return None

    def close(self) -> None:
        """Wait for pending writes and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
