"""Checkpoints: every orbax call of ltjax lives here and nowhere else.

A checkpoint is an orbax ``CheckpointManager`` step holding a composite of
up to three items:

- ``state``: any pytree of arrays (a stacked :class:`ltjax.train.TrainState`
  keeps its replicate axis ``[S, ...]``),
- ``masks``: bool masks, saved as their own item (optional),
- ``meta``: a JSON dict (level, step, what is finished...).

PRNG keys are never stored: they are re-derived from the config's seed.

Two orbax traps (FACTS.md) are handled here: saves are asynchronous, so
:meth:`Checkpointer.save` waits for the write unless told not to and
:meth:`Checkpointer.close` always waits; and a finished step damaged later is
still listed by ``latest_step()``, so :meth:`Checkpointer.restore_latest`
falls back to the newest step that restores.

Example:
    >>> with Checkpointer(workdir / "checkpoints") as ckpt:
    ...     ckpt.save(100, state=state, masks=masks, meta={"level": 0})
    ...     found = ckpt.restore_latest(like_state=state, like_masks=masks)
    >>> step, state, masks, meta = found
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any
_ITEMS = ("state", "masks", "meta")


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
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta or {})}
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
        """
        items = {"meta": ocp.args.JsonRestore()}
        if like_state is not None:
            items["state"] = ocp.args.StandardRestore(abstract_like(like_state))
        if like_masks is not None:
            items["masks"] = ocp.args.StandardRestore(abstract_like(like_masks))
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        state = restored["state"] if like_state is not None else None
        masks = restored["masks"] if like_masks is not None else None
        return state, masks, dict(restored["meta"] or {})

    def restore_latest(
        self, *, like_state: PyTree, like_masks: PyTree | None = None,
    ) -> tuple[int, PyTree, PyTree | None, dict] | None:
        """The newest step that restores, as ``(step, state, masks, meta)``; None if none.

        A damaged step (a crash after the rename, a deleted file) is logged
        and skipped in favour of the one before it.
        """
        for step in reversed(self.steps()):
            try:
                state, masks, meta = self.restore(step, like_state=like_state,
                                                  like_masks=like_masks)
            except (ValueError, FileNotFoundError, KeyError, OSError) as err:
                logging.warning("checkpoint step %d in %s does not restore (%s); trying the "
                                "previous one", step, self.directory, err)
                continue
            return step, state, masks, meta
        return None

    def close(self) -> None:
        """Wait for pending writes and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
