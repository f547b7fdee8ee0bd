"""Edge-popup supermasks of random networks over a grid of density x weight init.

Ramanujan et al. 2020 ("What's Hidden in a Randomly Weighted Neural
Network?", :mod:`ltjax.supermasks`): the weights stay at their random init,
the scores learn which ``ceil(density * n)`` weights of each layer to keep.
Every density x weight init (``signed_constant``, ``kaiming_normal``) x
replicate is a member of one program: the members' frozen trees carry their
own weights and kept counts, both inits of a replicate come from the same
random init (the signed constant takes its signs) and the same scores, and
train on the same data order.

Example (Colab):
    >>> from experiments.configs import supermask_lenet_digits
    >>> summary = run_supermask(supermask_lenet_digits.get_config("quick"), "/tmp/sm")
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np

from ltjax import executor as executor_lib
from ltjax import masking, plots, results, rng, supermasks, tree
from ltjax.studies import common


def _check_config(config: Any) -> tuple[tuple[float, ...], tuple[str, ...]]:
    try:
        densities = tuple(float(d) for d in config.densities)
    except (TypeError, ValueError):
        raise ValueError(f"config.densities must be numbers, got {config.densities!r}") from None
    if not densities or any(not 0.0 < d <= 1.0 for d in densities):
        raise ValueError(f"config.densities must be kept shares in (0, 1], got "
                         f"{config.densities!r}")
    if len(set(densities)) != len(densities):
        raise ValueError(f"config.densities repeats a value: {config.densities!r}")
    inits = common.names_of(config.weight_inits, field="weight_inits",
                            allowed=supermasks.WEIGHT_INITS)
    if not inits:
        raise ValueError("config.weight_inits must name at least one weight init")
    return densities, inits


def run_supermask(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Train edge-popup on the grid; write ``results.csv`` and a plot; resumable.

    ``results.csv``: ``method, density, weight_init, replicate, test_accuracy,
    test_loss`` (mean and std rows too); ``plots/supermask.png``: accuracy vs
    density per weight init.

    Raises:
      ValueError: densities outside (0, 1], unknown weight inits (before any work).
    """
    densities, inits = _check_config(config)
    workdir, dataset, recipe, base = common.setup(config, workdir)
    selection = masking.prunable(base.abstract_params)
    executor = executor_lib.Executor(
        base.model, dataset, recipe,
        reparam=supermasks.edge_popup(selection, weight_init="kaiming_normal"),
        strategy=base.strategy, steps_per_call=base.steps_per_call,
        eval_batch_size=base.eval_batch_size)
    end = common.steps(config.training_steps, executor.steps_per_epoch)
    num = config.num_replicates
    init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(config.seed, num))
    grid = [(i, d, r) for i in inits for d in densities for r in range(num)]
    replicate_of = np.array([r for _, _, r in grid])
    state = jax.device_get(executor.init(init_keys[replicate_of]))
    weights, kept = [], []
    for m, (weight_init, density, _) in enumerate(grid):
        init_weights = tree.index(state.frozen["weights"], m)
        weights.append(supermasks.signed_constant(init_weights, selection)
                       if weight_init == "signed_constant" else init_weights)
        kept.append(supermasks.kept_counts(init_weights, selection, density))
    state = executor.shard(state.replace(frozen={"weights": tree.stack(weights),
                                                 "kept": tree.stack(kept)}))
    log = results.MetricsLog(workdir / "metrics.jsonl")
    segment = common.segment_runner(config, executor, end=end, log=log, splits=["test"],
                                    progress=progress)
    tags = [{"density": d, "weight_init": i, "replicate": r} for i, d, r in grid]
    final = segment(executor, state=state, masks=None, noise_keys=noise_keys[replicate_of],
                    ckpt_dir=workdir / "checkpoints" / "edge_popup",
                    tags={"method": "edge_popup"}, member_tags=tags,
                    densities=np.array([d for _, d, _ in grid]),
                    desc=f"edge-popup: {len(grid)} members")
    metrics = executor.evaluate(final, "test")
    rows = [{"method": "edge_popup", **tag, "test_accuracy": float(metrics["accuracy"][m]),
             "test_loss": float(metrics["loss"][m])} for m, tag in enumerate(tags)]
    rows = common.with_mean_rows(rows, by=("method", "density", "weight_init"),
                                 fields=("test_accuracy", "test_loss"))
    results.write_csv(workdir / "results.csv", rows)
    plots.plot_supermask(rows, workdir / "plots" / "supermask.png",
                         title=f"Edge-popup, {config.model} on {config.dataset}: {num} replicates")
    return {"rows": [r for r in rows if r["replicate"] == "mean"]}
