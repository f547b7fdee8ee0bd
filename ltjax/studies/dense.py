"""Dense training of S seeds: learning curves with their spread over seeds.

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import lenet_digits
    summary = run_dense(lenet_digits.get_config("quick"), "/tmp/run")
    summary["steps"]                 # 46, the last step
    summary["final"]["test"]["accuracy"]  # [S]: each seed's final test accuracy
    ```

    The same run from a shell: ``python -m experiments.train
    --config=experiments/configs/lenet_digits.py:quick --workdir=/tmp/run``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np

from ltjax import models
from ltjax.core import masking
from ltjax.io import data, distributed, results
from ltjax.methods import sanity, telemetry
from ltjax.studies import common, plots
from ltjax.studies.spec import RunSpec


def eval_splits(dataset: data.Dataset, *, eval_train: bool = False) -> tuple[str, ...]:
    """The splits evaluated at every eval step: test, validation if carved, train if asked.

    Example:
        >>> from ltjax.io import data
        >>> from ltjax.studies import dense
        >>> ds = data.synthetic((8, 8, 1), 4)                    # no validation split
        >>> dense.eval_splits(ds, eval_train=True)
        ('test', 'train')
    """
    splits = ["test"]
    if dataset.validation is not None:
        splits.append("validation")
    if eval_train:
        splits.append("train")
    return tuple(splits)


@dataclasses.dataclass(frozen=True)
class DenseSpec:
    """A dense-training study, parsed and checked once at its entry.

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`).
      splits: the splits evaluated at every eval step (:func:`eval_splits`).
      correlation_p: the share ``p`` of the weights' ``R_p`` correlation
        (:func:`ltjax.methods.sanity.weight_correlation`) between init and trained weights.
      telemetry: the telemetry block, resolved (:class:`TelemetrySpec`), or None.

    Example:
        The spec of the digits quick config, before any workdir exists:

        >>> from experiments.configs import lenet_digits
        >>> from ltjax.studies.dense import DenseSpec
        >>> spec = DenseSpec.from_config(lenet_digits.get_config("quick"), progress=False)
        >>> spec.splits, spec.correlation_p, spec.telemetry
        (('test', 'train'), 0.1, None)
    """

    run: RunSpec
    splits: tuple[str, ...]
    correlation_p: float
    telemetry: TelemetrySpec | None

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> DenseSpec:
        """Parse and check ``config``; nothing is written.

        Raises:
          ValueError: a bad shared field or telemetry block (naming the field).
        """
        found = {}
        run = RunSpec.from_config(config, check=lambda dataset: found.update(
            telemetry=TelemetrySpec.from_config(config, dataset)), progress=progress)
        return cls(run=run, splits=eval_splits(run.dataset,
                                               eval_train=config.get("eval_train", False)),
                   correlation_p=common.correlation_p(config),
                   telemetry=found["telemetry"])


@common.study_entry
def run_dense(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Train ``config.num_replicates`` seeds densely; write metrics, plots, checkpoints.

    Replicate r's init and data order come from ``rng.replicate_keys(config.seed, S)[r]``,
    so it does not depend on S. Re-running on the same workdir resumes from the
    newest checkpoint and skips finished work.

    Writes into ``workdir``: ``config.json``, ``metrics.jsonl`` (one record per
    replicate, split and eval step), ``results.csv`` (final metrics per
    replicate plus mean and std rows; ``weight_correlation`` is
    :func:`ltjax.methods.sanity.weight_correlation` ``R_p`` between the replicate's
    init and trained weights, ``p = config.correlation_p``, default 0.1),
    ``plots/learning_curve.png`` and ``checkpoints/``. With a ``config.telemetry``
    block (the ``:telemetry`` variant, :func:`experiments.configs.add_telemetry`)
    also Frankle et al. 2020's telemetry (:class:`ltjax.studies.common.TelemetryObserver`):
    ``telemetry.csv`` (``step, replicate, layer, quantity, value``; per layer
    and ``global``, the post-pass against the final weights included; the
    Hessian's top eigenvalue on the telemetry batch at ``telemetry.hessian_steps``,
    quantity ``hessian_top_eigenvalue``, layer ``global``) and
    ``plots/telemetry.png``.

    Args:
      config: a ConfigDict as in ``experiments/configs/lenet_digits.py``.
      workdir: the output folder.
      progress: show a progress bar.

    Returns:
      ``{'final': {split: {'accuracy': [S], 'loss': [S]}}, 'steps': total}``.
    """
    dense = DenseSpec.from_config(config, progress=progress)
    spec, splits = dense.run, list(dense.splits)
    run = spec.open(workdir)
    num, total, executor = spec.num_replicates, spec.training_steps, spec.executor
    init_keys, noise_keys = spec.keys()
    tags = {"level": 0, "branch": "dense"}
    start = executor.init(init_keys)
    observer = None
    if dense.telemetry is not None:
        observer = telemetry_observer(
            dense.telemetry, executor, start.params, total, spec.dataset,
            log=results.MetricsLog(run.workdir / "telemetry.jsonl"),
            snapshot_dir=run.workdir / "telemetry_snapshots")
    trained = run.segment("", state=start, noise_keys=noise_keys, tags=tags, splits=splits,
                          observer=observer, desc=f"train {spec.model_name} x{num}")
    final_state = trained.state
    if observer is not None:
        member_tags = [{"replicate": r} for r in range(num)]
        observer.versus_final(final_state.params, tags=tags, member_tags=member_tags,
                              keep_snapshots=dense.telemetry.keep_snapshots)
        telemetry_rows = [{k: r[k] for k in ("step", "replicate", "layer", "quantity", "value")}
                          for r in observer.log.read()]
        results.write_csv(run.workdir / "telemetry.csv", telemetry_rows)
        plots.plot_telemetry(telemetry_rows, run.workdir / "plots" / "telemetry.png",
                             title=f"{spec.model_name} on {plots.dataset_label(spec.dataset.name)}"
                                   f": telemetry, mean over {num} seeds")
    final = {split: {k: trained.curves.final(split, k).tolist() for k in ("accuracy", "loss")}
             for split in splits}  # the segment's last evaluation (its curves), not the log
    selection = masking.prunable(executor.abstract_state.params)
    correlation = np.asarray(distributed.host(jax.jit(jax.vmap(
        lambda a, b: sanity.weight_correlation(a, b, selection, p=dense.correlation_p)))(
            start.params, final_state.params)))
    rows = [{"replicate": r, "step": total,
             **{f"{split}_{k}": final[split][k][r] for split in splits
                for k in ("accuracy", "loss")},
             "weight_correlation": float(correlation[r])} for r in range(num)]
    results.write_table(run.workdir / "results.csv", rows, by=(), constants={"step": total})
    plots.plot_learning_curves(
        trained.curves.records([{"replicate": r} for r in range(num)], tags),
        run.workdir / "plots" / "learning_curve.png", splits=splits,
        note=plots.BATCH_NORM_INIT_NOTE if models.has_batch_norm(
            executor.abstract_state.batch_stats) else None,
        title=f"{spec.model_name} on {plots.dataset_label(spec.dataset.name)}: {num} seeds")
    return {"final": final, "steps": total}


@dataclasses.dataclass(frozen=True)
class TelemetrySpec:
    """A config's ``telemetry`` block, checked and resolved to steps (:meth:`from_config`).

    Attributes:
      dense_every: log every this many steps up to ``dense_until``.
      dense_until: the last step of the dense schedule.
      every: log every this many steps after it.
      batch_size: the fixed training batch's size (the gradient's, the Hessian's).
      tracked: how many random weights are followed.
      keep_snapshots: keep the weight snapshots after the post-pass.
      hessian_steps: the steps of the Hessian's top eigenvalue, up to the end.
      hessian_iterations: power iterations per eigenvalue.
      seed: the config's seed (the tracked weights are drawn from ``key(seed)``).

    Example:
        >>> from experiments.configs import lenet_digits
        >>> from ltjax.io import data
        >>> from ltjax.studies import dense
        >>> config = lenet_digits.get_config("quick,telemetry")
        >>> t = dense.TelemetrySpec.from_config(config, data.load("digits"))
        >>> t.dense_every, t.dense_until, t.hessian_steps  # past the end (46): skipped
        (50, 2000, (0,))
    """

    dense_every: int
    dense_until: int
    every: int
    batch_size: int
    tracked: int
    keep_snapshots: bool
    hessian_steps: tuple[int, ...]
    hessian_iterations: int
    seed: int

    @classmethod
    def from_config(cls, config: Any, dataset: Any) -> TelemetrySpec | None:
        """``config.telemetry`` checked and resolved against ``dataset``; None without a
        telemetry block.

        Raises:
          ValueError: ``batch_size`` outside ``[1, train size]``, a Hessian step
            that does not parse or is negative, ``hessian_iterations`` not an
            int >= 1 (naming the field), a schedule step that does not parse.
        """
        t = config.get("telemetry")
        if t is None:
            return None
        if not 1 <= t.batch_size <= len(dataset.train):
            raise ValueError(f"config.telemetry.batch_size must be in [1, {len(dataset.train)}], "
                             f"got {t.batch_size}")
        per_epoch = len(dataset.train) // config.recipe.batch_size
        total = common.steps(config.training_steps, per_epoch)
        raw = t.get("hessian_steps", ())
        raw = [raw] if isinstance(raw, str) else list(raw or ())
        items = [v.strip() for item in raw for v in str(item).split(",") if v.strip()]
        try:
            steps = [common.steps(v, per_epoch) for v in items]
        except (TypeError, ValueError) as error:
            raise ValueError(f"config.telemetry.hessian_steps: {error}") from None
        if any(s < 0 for s in steps):
            raise ValueError(f"config.telemetry.hessian_steps must be steps >= 0, got {items}")
        iterations = t.get("hessian_iterations", 20)
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"config.telemetry.hessian_iterations must be an int >= 1, "
                             f"got {iterations!r}")
        return cls(dense_every=common.steps(t.dense_every, per_epoch,
                                            field="telemetry.dense_every"),
                   dense_until=common.steps(t.dense_until, per_epoch,
                                            field="telemetry.dense_until"),
                   every=common.steps(t.every, per_epoch, field="telemetry.every"),
                   batch_size=t.batch_size,
                   tracked=t.tracked, keep_snapshots=bool(t.keep_snapshots),
                   hessian_steps=tuple(sorted({s for s in steps if s <= total})),
                   hessian_iterations=iterations, seed=config.seed)


def telemetry_observer(spec: TelemetrySpec, executor: Any, params_0: Any, total: int,
                       dataset: Any, *, log: results.MetricsLog, snapshot_dir: pathlib.Path,
                       masks: Any = None) -> common.TelemetryObserver:
    """The telemetry observer of a :class:`TelemetrySpec` for a segment of members.

    Args:
      spec: the config's telemetry block, resolved (:meth:`TelemetrySpec.from_config`).
      executor: the segment's executor.
      params_0: the reference weights ``[S, ...]`` of the members (their init,
        or the start of the segment), for distance, cosine and sign changes.
      total: the run's last step (the schedule's end).
      dataset: the dataset (the fixed batch is its first training examples).
      log: where the records go.
      snapshot_dir: where this segment's weight snapshots go (one folder per
        segment: the post-pass reads every snapshot in it).
      masks: sparse members' masks ``[S, ...]``: the quantities over their
        kept weights (None: dense).

    Example:
        Not run here (it needs a study's executor and writes into its workdir):

        ```python
        spec = TelemetrySpec.from_config(config, dataset)
        observer = telemetry_observer(spec, executor, start.params, end, dataset,
                                      log=log, snapshot_dir=workdir / "snapshots")
        ```
    """
    steps = telemetry.schedule(total, dense_every=spec.dense_every,
                               dense_until=spec.dense_until, every=spec.every)
    selection = masking.prunable(executor.abstract_params)
    tracked = telemetry.tracked_indices(executor.abstract_params, jax.random.key(spec.seed),
                                        spec.tracked, selection)
    return common.TelemetryObserver(
        executor, params_0, steps, log=log, snapshot_dir=snapshot_dir,
        batch=(dataset.train.x[:spec.batch_size], dataset.train.y[:spec.batch_size]),
        tracked=tracked, hessian_steps=list(spec.hessian_steps),
        hessian_iterations=spec.hessian_iterations, masks=masks)
