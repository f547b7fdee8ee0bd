"""Dense training of S seeds: learning curves with their spread over seeds.

Example (Colab):
    >>> from experiments.configs import lenet_digits
    >>> summary = run_train(lenet_digits.get_config("quick"), "/tmp/run")
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np

from ltjax import masking, plots, results, rng, sanity
from ltjax.studies import common


def eval_splits(config: Any, dataset) -> list[str]:
    """The splits evaluated at every eval step: test, validation if carved, train if asked."""
    splits = ["test"]
    if dataset.validation is not None:
        splits.append("validation")
    if config.get("eval_train", False):
        splits.append("train")
    return splits


def run_train(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Train ``config.num_replicates`` seeds densely; write metrics, plots, checkpoints.

    Replicate r's init and data order come from ``rng.replicate_keys(config.seed, S)[r]``,
    so it does not depend on S. Re-running on the same workdir resumes from the
    newest checkpoint and skips finished work.

    Writes into ``workdir``: ``config.json``, ``metrics.jsonl`` (one record per
    replicate, split and eval step), ``results.csv`` (final metrics per
    replicate plus mean and std rows; ``weight_correlation`` is
    :func:`ltjax.sanity.weight_correlation` ``R_p`` between the replicate's
    init and trained weights, ``p = config.correlation_p``, default 0.1),
    ``plots/learning_curve.png`` and ``checkpoints/``.

    Args:
      config: a ConfigDict as in ``experiments/configs/lenet_digits.py``.
      workdir: the output folder.
      progress: show a progress bar.

    Returns:
      ``{'final': {split: {'accuracy': [S], 'loss': [S]}}, 'steps': total}``.
    """
    workdir, dataset, recipe, executor = common.setup(config, workdir, progress=progress)
    per_epoch = executor.steps_per_epoch
    total = common.steps(config.training_steps, per_epoch)
    splits = eval_splits(config, dataset)
    num = config.num_replicates

    init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(config.seed, num))
    log = results.MetricsLog(workdir / "metrics.jsonl")
    tags = {"level": 0, "branch": "dense"}
    start = executor.init(init_keys)
    final_state = common.train_segment(
        executor, state=start, masks=None, noise_keys=noise_keys, end=total,
        eval_every=max(1, common.steps(config.eval_every, per_epoch)),
        checkpoint_every=max(1, common.steps(config.checkpoint_every, per_epoch)),
        ckpt_dir=workdir / "checkpoints", log=log, tags=tags, splits=splits,
        densities=np.ones(num), progress=progress, desc=f"train {config.model} x{num}",
        max_checkpoints=config.get("max_checkpoints", 2),
    )
    final = {}  # from the final state's arrays (the log is output only)
    for split in splits:
        metrics = executor.evaluate(final_state, split)
        final[split] = {k: [float(v) for v in np.asarray(metrics[k])]
                        for k in ("accuracy", "loss")}

    selection = masking.prunable(executor.abstract_state.params)
    correlation_p = config.get("correlation_p", 0.1)
    correlation = np.asarray(jax.jit(jax.vmap(lambda a, b: sanity.weight_correlation(
        a, b, selection, p=correlation_p)))(start.params, final_state.params))
    rows = []
    for r in range(num):
        row = {"replicate": r, "step": total}
        for split in splits:
            row[f"{split}_accuracy"] = final[split]["accuracy"][r]
            row[f"{split}_loss"] = final[split]["loss"][r]
        row["weight_correlation"] = float(correlation[r])
        rows.append(row)
    for name, fn in (("mean", np.mean), ("std", np.std)):
        rows.append({"replicate": name, "step": total, **{
            k: fn([row[k] for row in rows[:num]]) for k in rows[0] if k not in ("replicate", "step")
        }})
    results.write_csv(workdir / "results.csv", rows)
    plots.plot_learning_curves(
        log.read(), workdir / "plots" / "learning_curve.png", splits=splits,
        title=f"{config.model} on {plots.dataset_label(config.dataset)}: {num} seeds",
    )
    return {"final": final, "steps": total}
