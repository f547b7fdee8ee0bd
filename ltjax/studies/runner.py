"""The one runner of a study's segments: resume, fingerprints, checkpoints, warnings, the log.

A :class:`Run` (from :meth:`ltjax.studies.spec.RunSpec.open`) owns a workdir
and its ``metrics.jsonl``; :meth:`Run.segment` trains one named segment of
members (:func:`ltjax.studies.common.train_segment`: resumable, checked
against the config's fingerprint and the segment's members and masks, with
divergence warnings and progress) at the spec's evaluation and checkpoint
cadence, and returns a :class:`Segment`: the final state, the masks and the
evaluated curves as arrays (:class:`ltjax.studies.common.Curves`, kept in the
checkpoints, so a resumed or finished segment returns them too);
:meth:`Run.evaluate` gives other final metrics as arrays. Tables are built
from those, never from the log (``metrics.jsonl`` is written, not read).

Example (Colab):
    Not run here (it writes a workdir and compiles and trains a segment):

    ```python
    run = RunSpec.from_config(config).open("/tmp/run")
    init_keys, noise_keys = run.spec.keys()
    dense = run.segment("dense", state=run.spec.executor.init(init_keys),
                        noise_keys=noise_keys, tags={"branch": "dense"})
    dense.curves.metrics["test"]["accuracy"]   # [E, S], at dense.curves.steps
    run.evaluate(dense.state, ["train"])["train"]["accuracy"]  # [S]
    ```
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ltjax.engine import optim, train
from ltjax.io import results
from ltjax.studies import common


@dataclasses.dataclass(frozen=True)
class Segment:
    """What a trained (or restored) segment gives: its members' final state, masks, curves."""

    state: train.TrainState  # stacked [S], at the segment's end
    masks: Any  # stacked bool masks [S], or None (dense)
    curves: common.Curves  # every evaluation from the segment's start, as arrays [E, S]


@dataclasses.dataclass(frozen=True)
class Run:
    """A study's run in its workdir: the spec, the workdir and its metrics log."""

    spec: Any  # ltjax.studies.spec.RunSpec
    workdir: pathlib.Path

    @property
    def log(self) -> results.MetricsLog:
        """The workdir's ``metrics.jsonl``, written by the segments (tables come from the
        :class:`Segment` curves and :meth:`evaluate`, never from here)."""
        return results.MetricsLog(self.workdir / "metrics.jsonl")

    def segment(self, name: str, *, state: train.TrainState | Callable[[], train.TrainState],
                noise_keys: Any,
                masks: Any = None, end: int | None = None, tags: dict | None = None,
                member_tags: list[dict] | None = None, densities: Any = None,
                splits: list[str] | None = None, hparams: optim.Hyperparams | None = None,
                subsets: Any = None, observer: common.TelemetryObserver | None = None,
                executor: Any = None, desc: str | None = None) -> Segment:
        """Train the members of segment ``name`` from ``state`` to ``end``; resumable.

        Checkpoints go to ``<workdir>/checkpoints/<name>``, at the spec's cadence
        (``eval_every``, ``checkpoint_every``, ``max_checkpoints``). ``state`` may be a
        function that builds the start state: a segment that already reached ``end``
        then restores its final state without calling it (nothing computed or
        compiled on a rerun over finished work).

        Args:
          name: the segment's checkpoint folder under ``checkpoints/`` (``''``: that
            folder itself, for a study of one segment).
          state: the members' stacked start state ``[M]``, or a function returning it.
          noise_keys: their noise keys ``[M]``.
          masks: their masks ``[M]`` (None: dense).
          end: the step to train to (default the spec's ``training_steps``).
          tags: fields of every record of the segment.
          member_tags: one dict per member (default ``{'replicate': m}``).
          densities: per-member density written into the records (default 1).
          splits: the splits evaluated (default ``['test']``).
          hparams: per-member hyperparameters (default the recipe's).
          subsets: per-member training subsets.
          observer: telemetry on its schedule.
          executor: another executor than the spec's (e.g. with a reparameterisation).
          desc: the progress bar's label (default ``name``).

        Returns:
          The members' :class:`Segment` at ``end`` (state, masks, curves).
        """
        spec = self.spec
        num = int(np.shape(noise_keys)[0])
        executor = executor or spec.executor
        end = spec.training_steps if end is None else end
        if callable(state):
            done = self.finished(name, member_tags=member_tags or [
                {"replicate": m} for m in range(num)], masks=masks is not None, end=end,
                executor=executor)
            if done is not None:
                common.check_same_masks(self.workdir / "checkpoints" / name, end, done.masks,
                                        masks)
                common.say(f"{desc or name}: finished (step {end}), restored", spec.progress)
                return Segment(done.state, masks, done.curves)
            state = state()
        state, curves = common.train_segment(
            executor, state=state, masks=masks, noise_keys=noise_keys,
            end=end, eval_every=spec.eval_every,
            checkpoint_every=spec.checkpoint_every, ckpt_dir=self.workdir / "checkpoints" / name,
            log=self.log, tags=tags or {}, splits=["test"] if splits is None else splits,
            densities=np.ones(num) if densities is None else densities,
            progress=spec.progress, desc=desc or name, max_checkpoints=spec.max_checkpoints,
            hparams=hparams, member_tags=member_tags, observer=observer, subsets=subsets)
        return Segment(state, masks, curves)

    def finished(self, name: str, *, member_tags: list[dict], masks: bool = True,
                 end: int | None = None, executor: Any = None,
                 ) -> Segment | None:
        """The :class:`Segment` ``name`` if it reached ``end``, else None.

        Restored onto the executor's abstract members: nothing is computed or
        compiled (:func:`ltjax.studies.common.finished_segment`).

        Args:
          name: the segment's checkpoint folder under ``checkpoints/``.
          member_tags: its members, as given to :meth:`segment`.
          masks: whether it saved masks (False: a dense segment; masks come back None).
          end: its last step (default the spec's ``training_steps``).
          executor: its executor (default the spec's).
        """
        done = common.finished_segment(
            executor or self.spec.executor, self.workdir / "checkpoints" / name,
            end=self.spec.training_steps if end is None else end, log=self.log,
            member_tags=member_tags, masks=masks)
        return None if done is None else Segment(*done)

    def evaluate(self, state: train.TrainState, splits: list[str], masks: Any = None, *,
                 executor: Any = None) -> dict[str, dict[str, list[float]]]:
        """``{split: {'accuracy': [M], 'loss': [M]}}`` of the members, as Python floats."""
        executor = executor or self.spec.executor
        out = {}
        for split in splits:
            metrics = executor.evaluate(state, split, masks)
            out[split] = {k: [float(v) for v in np.asarray(metrics[k])]
                          for k in ("accuracy", "loss")}
        return out
