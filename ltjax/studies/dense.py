"""Dense training of S seeds: learning curves with their spread over seeds.

Example (Colab):
    >>> from experiments.configs import lenet_digits
    >>> summary = run_train(lenet_digits.get_config("quick"), "/tmp/run")
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import tqdm

from ltjax import checkpoint, plots, results, rng
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
    replicate plus mean and std rows), ``plots/learning_curve.png`` and
    ``checkpoints/``.

    Args:
      config: a ConfigDict as in ``experiments/configs/lenet_digits.py``.
      workdir: the output folder.
      progress: show a progress bar.

    Returns:
      ``{'final': {split: {'accuracy': [S], 'loss': [S]}}, 'steps': total}``.
    """
    workdir = common.prepare_workdir(workdir, config)
    dataset = common.build_dataset(config)
    model = common.build_model(config, dataset)
    recipe = common.build_recipe(config, dataset)
    executor = common.build_executor(config, model, dataset, recipe)
    per_epoch = executor.steps_per_epoch
    total = common.steps(config.training_steps, per_epoch)
    eval_every = max(1, common.steps(config.eval_every, per_epoch))
    ckpt_every = max(1, common.steps(config.checkpoint_every, per_epoch))
    splits = eval_splits(config, dataset)

    keys = rng.replicate_keys(config.seed, config.num_replicates)
    init_keys, noise_keys = rng.init_and_noise(keys)
    state = executor.init(init_keys)
    log = results.MetricsLog(workdir / "metrics.jsonl")

    with checkpoint.Checkpointer(workdir / "checkpoints",
                                 max_to_keep=config.get("max_checkpoints", 2)) as ckpt:
        found = ckpt.restore_latest(like_state=state)
        step = 0
        if found is not None:
            step, state, _, _ = found
        log.keep_only(lambda r: r["step"] <= step if found else False)

        def record(step: int, train_loss: np.ndarray | None) -> dict:
            rows, out = [], {}
            for split in splits:
                metrics = executor.evaluate(state, split)
                out[split] = metrics
                for r in range(config.num_replicates):
                    rows.append({"replicate": r, "level": 0, "step": step, "split": split,
                                 "loss": metrics["loss"][r], "accuracy": metrics["accuracy"][r],
                                 "density": 1.0})
            if train_loss is not None:
                rows += [{"replicate": r, "level": 0, "step": step, "split": "train_running",
                          "loss": train_loss[r], "accuracy": None, "density": 1.0}
                         for r in range(config.num_replicates)]
            log.append(rows)
            return out

        if found is None:
            record(0, None)
        bar = tqdm.tqdm(total=total, initial=step, disable=not progress, unit="step",
                        desc=f"train {config.model} x{config.num_replicates}")
        final = None
        while step < total:
            target = min(total, (step // eval_every + 1) * eval_every)
            state, train_loss = executor.train(state, None, noise_keys, num_steps=target - step)
            bar.update(target - step)
            step = target
            final = record(step, train_loss)
            if step % ckpt_every == 0 or step == total:
                ckpt.save(step, state=state, meta={"step": step})
        bar.close()
        if final is None:  # resumed after the end: evaluate the restored state
            final = {split: executor.evaluate(state, split) for split in splits}

    rows = []
    for r in range(config.num_replicates):
        row = {"replicate": r, "step": total}
        for split in splits:
            row[f"{split}_accuracy"] = final[split]["accuracy"][r]
            row[f"{split}_loss"] = final[split]["loss"][r]
        rows.append(row)
    for name, fn in (("mean", np.mean), ("std", np.std)):
        rows.append({"replicate": name, "step": total, **{
            k: fn([row[k] for row in rows[: config.num_replicates]])
            for k in rows[0] if k not in ("replicate", "step")}})
    results.write_csv(workdir / "results.csv", rows)
    plots.plot_learning_curves(
        log.read(), workdir / "plots" / "learning_curve.png", splits=splits,
        title=f"{config.model} on {config.dataset}: {config.num_replicates} seeds",
    )
    return {"final": {s: {k: v.tolist() for k, v in m.items()} for s, m in final.items()},
            "steps": total}
