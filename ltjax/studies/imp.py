"""Iterative magnitude pruning (IMP) with rewinding, and its controls, for S replicates at once.

The lottery ticket procedure (Frankle & Carbin 2019), with rewinding to step
k (Frankle et al. 2020; k = 0 is the original reset):

1. train the dense network to step k (the rewind point) and on to the end;
2. prune ``fraction`` of the remaining prunable weights by magnitude
   (:func:`ltjax.pruning.prune`: global or layerwise, per-layer rates);
3. reset the surviving weights to their step-k values, restart the optimiser
   (or rewind it too), resume the learning-rate schedule at k, train to the
   end; repeat from 2 for ``levels`` levels.

Controls at each level's density (``config.controls``), after OpenLTH's
branches and Ma et al. 2021:

================== =====================================================
``reinit``         the ticket's mask, a new random init (trained k -> end,
                   as OpenLTH's ``randomly_reinitialize``)
``random_layerwise`` a random mask keeping each layer's count, step-k weights
``random_global``  a random mask keeping only the total count, step-k weights
``oneshot``        magnitude pruning of the trained dense net (level 0) to the
                   level's counts in one shot, step-k weights
``small_dense``    an MLP with hidden widths scaled to the level's number of
                   weights, trained densely from scratch (MLPs only)
================== =====================================================

At each level the ticket and its ``reinit``, ``random_*`` and ``oneshot``
controls are the members of one program (S x (1 + C) members, each with its
own masks and start state; one checkpoint folder per level whose metadata
lists the members); ``small_dense`` has its own model and program.
Replicate r's keys are ``rng.replicate_keys(seed, S)[r]``; the controls'
randomness comes from named streams of it (``reinit``, ``random_prune``,
``small_dense``), so nothing depends on S or on which controls run (member r
of a branch gives the same numbers whatever trains beside it, to ~1e-6
relative: XLA picks kernels by batch shape).

Example (Colab):
    >>> from experiments.configs import imp_lenet_digits
    >>> summary = run_imp(imp_lenet_digits.get_config("quick"), "/tmp/imp")
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax import executor as executor_lib
from ltjax import masking, models, plots, pruning, results, rewinding, rng, tree
from ltjax.studies import common

CONTROLS = ("reinit", "random_layerwise", "random_global", "oneshot", "small_dense")


def small_dense_widths(
    widths: tuple[int, ...], *, input_size: int, num_classes: int, target: int,
) -> tuple[int, ...]:
    """Hidden widths scaled by one factor so the MLP has about ``target`` kernel weights.

    Example:
        >>> small_dense_widths((300, 100), input_size=784, num_classes=10, target=53240)
        (60, 20)
    """

    def count(ws: tuple[int, ...]) -> int:
        sizes = (input_size, *ws, num_classes)
        return sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def scaled(c: float) -> tuple[int, ...]:
        return tuple(max(1, round(w * c)) for w in widths)

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(scaled(mid)) < target else (lo, mid)
    return min((scaled(lo), scaled(hi)), key=lambda ws: abs(count(ws) - target))


def _early_stop(records: list[dict]) -> dict:
    """Early stopping as in the LTH paper: the eval step of minimum validation loss."""
    validation = [r for r in records if r["split"] == "validation"]
    if not validation:
        return {}
    best = min(validation, key=lambda r: (r["loss"], r["step"]))
    test = {r["step"]: r for r in records if r["split"] == "test"}
    return {
        "early_stop_step": best["step"],
        "early_stop_validation_accuracy": best["accuracy"],
        "early_stop_test_accuracy": test[best["step"]]["accuracy"],
        "best_validation_accuracy": max(r["accuracy"] for r in validation),
    }


def _summary_rows(log: results.MetricsLog, num: int, end: int) -> list[dict]:
    """One row per (level, branch, replicate) plus mean/std rows per (level, branch)."""
    records = [r for r in log.read() if r.get("branch") not in (None, "pretrain")]
    keys = sorted({(r["level"], r["branch"]) for r in records},
                  key=lambda lb: (lb[0], (("imp",) + CONTROLS).index(lb[1])))
    rows = []
    for level, branch in keys:
        group = []
        for rep in range(num):
            mine = [r for r in records
                    if (r["level"], r["branch"], r["replicate"]) == (level, branch, rep)]
            final = {r["split"]: r for r in mine if r["step"] == end}
            if "test" not in final:
                continue
            row = {"level": level, "branch": branch, "replicate": rep,
                   "density": final["test"]["density"],
                   "test_accuracy": final["test"]["accuracy"], "test_loss": final["test"]["loss"]}
            if "validation" in final:
                row["validation_accuracy"] = final["validation"]["accuracy"]
            row.update(_early_stop(mine))
            group.append(row)
        rows += group
        for name, fn in (("mean", np.mean), ("std", np.std)):
            if group:
                rows.append({"level": level, "branch": branch, "replicate": name, **{
                    k: fn([g[k] for g in group]) for k in group[0]
                    if k not in ("level", "branch", "replicate")}})
    return rows


def run_imp(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Run IMP and its controls for ``config.num_replicates`` replicates; resumable.

    Writes into ``workdir``: ``config.json``, ``metrics.jsonl`` (records tagged
    with ``level`` and ``branch``), ``results.csv`` (per level, branch and
    replicate: density, final and early-stop accuracies, the early-stop
    step; plus mean and std rows), ``plots/accuracy_vs_density.png``,
    ``plots/learning_curves_imp.png`` and ``checkpoints/`` (one folder per
    level and branch). Killed at any point, the same call resumes without
    redoing finished segments.

    Args:
      config: a ConfigDict as in ``experiments/configs/imp_lenet_mnist.py``.
      workdir: the output folder.
      progress: show progress bars.

    Returns:
      ``{'rows': [...]}``: the mean rows of ``results.csv``.

    Raises:
      ValueError: an unknown control, a rewind step at or past the end, a
        negative level count, bad pruning settings.
    """
    controls = common.names_of(config.controls, field="controls", allowed=CONTROLS)
    if config.levels < 0:
        raise ValueError(f"levels must be >= 0, got {config.levels}")
    workdir, dataset, recipe, executor = common.setup(config, workdir)
    per_epoch = executor.steps_per_epoch
    end = common.steps(config.training_steps, per_epoch)
    rewind_step = common.steps(config.rewind_step, per_epoch)
    if not 0 <= rewind_step < end:
        raise ValueError(
            f"rewind_step ({config.rewind_step} = {rewind_step} steps) must be before "
            f"training_steps ({config.training_steps} = {end} steps)"
        )
    if "small_dense" in controls and not hasattr(executor.model, "widths"):
        raise ValueError(f"the small_dense control needs an MLP model, got {config.model!r}")

    p = config.pruning
    layer_rates = common.parse_layer_rates(p.get("layer_rates"))
    selection = masking.prunable(executor.abstract_state.params, include=p.get("include") or None,
                                 exclude=p.get("exclude") or None)
    prune_kw = dict(fraction=p.fraction, scope=p.scope, layer_rates=layer_rates)
    pruning._check_fraction(p.fraction)  # fail before any training
    num = config.num_replicates
    keys = rng.replicate_keys(config.seed, num)
    init_keys, noise_keys = rng.init_and_noise(keys)
    splits = ["test"] + (["validation"] if dataset.validation is not None else [])
    log = results.MetricsLog(workdir / "metrics.jsonl")
    ckpt_root = workdir / "checkpoints"
    segment = functools.partial(
        common.train_segment, end=end,
        eval_every=max(1, common.steps(config.eval_every, per_epoch)),
        checkpoint_every=max(1, common.steps(config.checkpoint_every, per_epoch)),
        log=log, splits=splits, progress=progress,
        max_checkpoints=config.get("max_checkpoints", 1),
    )

    @jax.jit
    def prune_level(params, masks):
        return jax.vmap(lambda p_, m: pruning.prune(pruning.magnitude_scores(p_), m, selection,
                                                   **prune_kw))(params, masks)

    def densities(masks) -> np.ndarray:
        return np.asarray(jax.vmap(lambda m: masking.density(m, selection))(masks))


    def rewound(state_k, masks):
        opt = None if config.get("rewind_optimizer", False) else executor.fresh_opt_state(
            masking.apply(state_k.params, masks))
        return executor.shard(rewinding.rewind_state(state_k, masks, fresh_opt_state=opt))

    state = executor.init(init_keys)
    masks = executor.shard(masking.ones_like(state.params))
    if rewind_step > 0:
        state = segment(executor, state=state, masks=None, noise_keys=noise_keys, end=rewind_step,
                        ckpt_dir=ckpt_root / "pretrain", tags={"level": 0, "branch": "pretrain"},
                        densities=np.ones(num), desc="pretrain to the rewind step")
    state_k = state
    dense_final = previous = None
    for level in range(config.levels + 1):
        if level > 0:
            masks = executor.shard(prune_level(previous.params, masks))
        # The level's IMP ticket and its controls train as the members of one program.
        branches = [("imp", rewound(state_k, masks), masks)]
        for control in controls if level > 0 else ():
            if control == "reinit":
                fresh = executor.init(rng.stream(keys, "reinit"), masks)
                # schedule resumes at k, as OpenLTH's randomly_reinitialize
                branches.append((control, fresh.replace(step=state_k.step), masks))
            elif control in ("random_layerwise", "random_global"):
                scope = control.split("_")[1]
                level_keys = jax.vmap(lambda k, lv=level: jax.random.fold_in(k, lv))(
                    rng.stream(keys, "random_prune"))
                cmasks = jax.vmap(
                    lambda k, m, s=scope: pruning.random_prune_like(k, m, selection, scope=s))(
                        level_keys, masks)
                branches.append((control, rewound(state_k, cmasks), cmasks))
            elif control == "oneshot":
                cmasks = jax.vmap(
                    lambda p_, m: pruning.prune_to_match(pruning.magnitude_scores(p_), m,
                                                         selection, scope=p.scope))(
                        dense_final.params, masks)
                branches.append((control, rewound(state_k, cmasks), cmasks))
        names = [name for name, _, _ in branches]
        members = executor.shard(tree.concat([b[1] for b in branches]))
        member_masks = executor.shard(tree.concat([b[2] for b in branches]))
        density = densities(masks)
        final = segment(
            executor, state=members, masks=member_masks,
            noise_keys=jnp.concatenate([noise_keys] * len(branches)),
            ckpt_dir=ckpt_root / f"level_{level:02d}", tags={"level": level},
            member_tags=[{"branch": n, "replicate": r} for n in names for r in range(num)],
            densities=densities(member_masks),
            desc=f"level {level} ({100 * density[0]:.1f}%): {', '.join(names)}")
        final = executor.shard(jax.tree.map(lambda x: x[:num], final))  # the IMP members
        if level == 0:
            dense_final = final
        if "small_dense" in controls and level > 0:
            _run_small_dense(config, executor, dataset, recipe, segment, keys, noise_keys, masks,
                             selection, ckpt_root / f"level_{level:02d}" / "small_dense",
                             {"level": level, "branch": "small_dense"},
                             f"level {level} small_dense")
        previous = final

    rows = _summary_rows(log, num, end)
    results.write_csv(workdir / "results.csv", rows)
    records = log.read()
    plots.plot_accuracy_vs_density(
        rows, workdir / "plots" / "accuracy_vs_density.png",
        title=f"IMP on {config.model} / {config.dataset}: {num} replicates (mean, ±1 std)",
    )
    plots.plot_level_curves(
        [r for r in records if r.get("branch") == "imp"],
        workdir / "plots" / "learning_curves_imp.png",
        title=f"IMP learning curves ({config.model}, test accuracy, mean over replicates)",
    )
    return {"rows": [r for r in rows if r["replicate"] == "mean"]}


def _run_small_dense(config, executor, dataset, recipe, segment, keys, noise_keys, masks,
                     selection, cdir, ctags, desc) -> None:
    """Train an MLP whose kernel count matches the level's kept weights, from scratch."""
    kept = int(np.asarray(jax.vmap(lambda m: masking.num_kept(m, selection))(masks))[0])
    total = masking.num_prunable(jax.tree.map(lambda x: x[0], masks), selection)
    widths = small_dense_widths(tuple(executor.model.widths),
                                input_size=int(np.prod(dataset.input_shape)),
                                num_classes=dataset.num_classes, target=kept)
    small = models.create("mlp", num_classes=dataset.num_classes, widths=widths)
    small_executor = executor_lib.Executor(small, dataset, recipe, strategy=executor.strategy,
                                    steps_per_call=executor.steps_per_call,
                                    eval_batch_size=executor.eval_batch_size)
    state = small_executor.init(rng.stream(keys, "small_dense"))
    count = masking.num_prunable(jax.tree.map(lambda x: x[0], state.params),
                                 masking.prunable(jax.tree.map(lambda x: x[0], state.params)))
    num = int(keys.shape[0])
    segment(small_executor, state=state, masks=None, noise_keys=noise_keys,
            ckpt_dir=cdir, tags=ctags,
            densities=np.full(num, count / total), desc=f"{desc} {widths}")
