"""Instability analysis (Frankle, Dziugaite, Roy & Carbin, ICML 2020), many seeds at once.

For each rewind step k: train each of S initialisations to step k (its own
SGD noise), spawn C copies that differ only in SGD noise (data order and
augmentation: the copies' ``noise`` streams), train all S x C copies to the
end as one program, then evaluate every pair of copies of an initialisation
along the linear path between them at ``num_alphas`` evenly spaced alphas on
the train and test sets. A pair's *instability* is its error barrier
(:func:`ltjax.core.interpolation.error_barrier`: max error along the path minus the
mean of the endpoint errors); the network is *stable* at k when it is below
2 %.

The study runs on dense networks, or on IMP subnetworks: with
``config.imp_workdir`` and ``config.imp_level`` it loads that level's masks
(replicate r's mask for initialisation r) and trains the copies masked, from
the dense network's step-k weights under the mask and the optimiser state the
IMP ticket trained from (fresh, or the step-k state when the IMP run set
``rewind_optimizer``); densities count the IMP run's ``pruning.include`` /
``exclude`` selection. The IMP run must share the dataset, model, seed,
replicate count, recipe and training length, and must have rewound to the
study's k (checked before any work). ``config.imp_branch`` picks whose masks
train: ``'imp'`` (the ticket) or a pruning control the IMP run trained beside
it at the same density (``'random_layerwise'``: the paper's random pruning,
Figures 5-6; ``'random_global'``, ``'oneshot'``), from the same start.
Frankle et al. 2020's protocol (Section 4, Figures 5-7) studies at each k the
subnetwork IMP found rewinding to that k:
``imp_workdir='0it=runs/imp_k0,500it=runs/imp_k500'`` gives one IMP run per
rewind step. ``imp_mask_at_any_k=True`` allows one IMP run's mask at every k
(another experiment than the paper's).

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import stability_lenet_digits
    summary = run_stability(stability_lenet_digits.get_config("quick"), "/tmp/lmc")
    sorted(summary)                  # ['num_pairs', 'rows', 'std']
    [(r["k"], r["split"], r["instability"]) for r in summary["rows"]]
    ```

    The same run from a shell: ``python -m experiments.stability
    --config=experiments/configs/stability_lenet_digits.py:quick --workdir=/tmp/lmc``.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import interpolation, masking, rewinding, rng, tree
from ltjax.io import results
from ltjax.studies import common, imp_runs, plots
from ltjax.studies.spec import RunSpec

STABLE_BELOW = 0.02  # Frankle et al. 2020: stable when the error barrier is under 2 %


def copy_noise_keys(keys: jax.Array, num_copies: int) -> jax.Array:
    """Noise keys ``[S * C]`` of the copies: copy c of replicate r is ``fold_in(stream(r), c)``.

    Ordered replicate-major (``r * C + c``); copy c of replicate r does not
    depend on S or C.

    Example:
        >>> import jax
        >>> from ltjax.studies import stability
        >>> keys = jax.random.split(jax.random.key(0), 2)          # S = 2 replicates
        >>> copies = stability.copy_noise_keys(keys, 3)             # C = 3 copies each
        >>> copies.shape
        (6,)
        >>> alone = stability.copy_noise_keys(keys[:1], 2)          # replicate 0, S = 1, C = 2
        >>> bool((jax.random.key_data(copies[:2]) == jax.random.key_data(alone)).all())
        True
    """
    copies = rng.stream(keys, "copies")
    per = jax.vmap(lambda k: jax.vmap(lambda c: jax.random.fold_in(k, c))(
        jnp.arange(num_copies, dtype=jnp.uint32)))(copies)
    return per.reshape(-1)


def _repeat(stacked: Any, times: int) -> Any:
    """Each replicate's leaves repeated ``times`` times, replicate-major: ``[S * C, ...]``."""
    return jax.tree.map(lambda x: jnp.repeat(x, times, axis=0), stacked)


def ticket_start(executor: Any, state_k: Any, masks: Any, imp_config: dict) -> Any:
    """The state an IMP ticket trained from: step-k weights under ``masks``, and a fresh
    optimiser state, or the step-k one when the IMP run set ``rewind_optimizer``.

    Example:
        Not run here (it needs the study's executor and an IMP run's masks):

        ```python
        start = ticket_start(executor, parent_at_k, masks, results.read_json(imp_json))
        ```
    """
    opt = None if imp_config.get("rewind_optimizer", False) else (
        executor.fresh_opt_state(masking.apply(state_k.params, masks)))
    return rewinding.rewind_state(state_k, masks, fresh_opt_state=opt)


def check_rewind_steps(config: Any, dataset: Any) -> list[int]:
    """The rewind steps of ``config`` in steps, sorted; the copies and ``imp_branch`` checked.

    Raises:
      ValueError: a rewind step outside ``[0, training_steps)``, fewer than 2
        copies, or an ``imp_branch`` not in :data:`imp_runs.IMP_BRANCHES`.
    """
    per_epoch = len(dataset.train) // config.recipe.batch_size
    end = common.steps(config.training_steps, per_epoch)
    ks = sorted({common.steps(k, per_epoch) for k in config.rewind_steps})
    if not ks or ks[-1] >= end or ks[0] < 0:
        raise ValueError(
            f"rewind_steps {list(config.rewind_steps)} must be steps in [0, training_steps "
            f"= {end}) (as steps: {ks})"
        )
    if config.num_copies < 2:
        raise ValueError(f"num_copies must be >= 2 to form pairs, got {config.num_copies}")
    branch = config.get("imp_branch", "imp")
    if branch not in imp_runs.IMP_BRANCHES:
        raise ValueError(f"imp_branch must be one of {imp_runs.IMP_BRANCHES}, got {branch!r}")
    return ks


@dataclasses.dataclass(frozen=True)
class TicketSource:
    """The IMP run whose subnetwork the copies at one k start from (``config.imp_workdir``)."""

    workdir: str  # the IMP run's workdir
    config: dict  # its config.json (checked compatible with this study's)
    level: int  # the level whose masks are loaded
    branch: str  # whose masks: 'imp' or one of its controls
    prunable: Any  # the pruned leaves, by the IMP run's include / exclude


@dataclasses.dataclass(frozen=True)
class StabilitySpec:
    """An instability study, parsed and checked once at its entry (Frankle et al. 2020).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`).
      rewind_steps: the steps k the copies start from, sorted.
      num_copies: copies per replicate (pairs: every two of them).
      alphas: the interpolation path's points.
      path_splits: the splits each path is evaluated on.
      reset: BatchNorm statistics along the path (:func:`ltjax.studies.common.batch_stats_reset`).
      recompute_batch_stats: recompute them at each point (BatchNorm models).
      alpha_chunk: points evaluated per program call.
      tickets: per k, the IMP subnetwork the copies start from (:class:`TicketSource`);
        a k without one trains dense copies.

    Example:
        The spec of the digits config, before any workdir exists:

        >>> from experiments.configs import stability_lenet_digits
        >>> from ltjax.studies.stability import StabilitySpec
        >>> spec = StabilitySpec.from_config(stability_lenet_digits.get_config("quick"),
        ...                                  "/tmp/never_written", progress=False)
        >>> spec.rewind_steps, spec.num_copies, len(spec.alphas), spec.tickets
        ((0, 18), 2, 5, {})
    """

    run: RunSpec
    rewind_steps: tuple[int, ...]
    num_copies: int
    alphas: tuple[float, ...]
    path_splits: tuple[str, ...]
    reset: dict
    recompute_batch_stats: bool
    alpha_chunk: int
    tickets: dict[int, TicketSource]

    @classmethod
    def from_config(cls, config: Any, workdir: str | pathlib.Path, *,
                    progress: bool = True) -> StabilitySpec:
        """Parse and check ``config`` (and the IMP runs it names); nothing is written.

        ``workdir`` resolves ``{workdir}`` in ``config.imp_workdir``.

        Raises:
          ValueError: bad rewind steps, copies, branch or BatchNorm reset, an IMP run that
            is missing, unfinished, of another config or without the branch (naming it).
        """
        reset = common.batch_stats_reset(config)
        parsed: dict = {}

        def check(dataset) -> None:  # before the workdir is written
            per_epoch = len(dataset.train) // config.recipe.batch_size
            ks = check_rewind_steps(config, dataset)
            branch = config.get("imp_branch", "imp")
            tickets = {}
            for k, imp_workdir in imp_runs.imp_workdirs(config, ks, per_epoch, workdir).items():
                imp_config = imp_runs.check_imp_compatible(config, imp_workdir,
                                                           dataset=dataset, rewind_step=k)
                imp_runs.check_imp_level(imp_workdir, config.imp_level)
                if branch != "imp" and branch not in (imp_config.get("controls") or ()):
                    raise ValueError(
                        f"imp_branch={branch!r}: the IMP run in {imp_workdir!r} has no such "
                        f"control (its controls: {list(imp_config.get('controls') or ())})")
                tickets[k] = (imp_workdir, imp_config)
            parsed.update(ks=tuple(ks), tickets=tickets, branch=branch)

        run = RunSpec.from_config(config, check=check, progress=progress)
        abstract = run.executor.abstract_params

        def source(imp_workdir: str, imp_config: dict) -> TicketSource:
            pruning_config = imp_config.get("pruning") or {}
            return TicketSource(
                workdir=imp_workdir, config=imp_config, level=config.imp_level,
                branch=parsed["branch"], prunable=masking.prunable(
                    abstract, include=pruning_config.get("include") or None,
                    exclude=pruning_config.get("exclude") or None))

        alphas = np.linspace(0.0, 1.0, config.num_alphas)
        return cls(run=run, rewind_steps=parsed["ks"], num_copies=int(config.num_copies),
                   alphas=tuple(float(a) for a in alphas),
                   path_splits=tuple(config.path_splits), reset=reset,
                   recompute_batch_stats=bool(config.get("recompute_batch_stats", True)),
                   alpha_chunk=int(config.get("alpha_chunk") or len(alphas)),
                   tickets={k: source(*t) for k, t in parsed["tickets"].items()})


@common.study_entry
def run_stability(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Run the instability study; resumable. See the module docstring.

    Writes into ``workdir``: ``config.json``; ``metrics.jsonl`` (training
    records tagged ``k``/``branch``, and one ``path`` record per k,
    replicate, pair, split and alpha); ``results.csv`` (one row per k,
    replicate, pair and split: instability, the alpha of the peak, endpoint
    accuracies, stable; means and stds per k and split in ``summary.csv``);
    ``plots/error_vs_alpha.png`` and ``plots/instability_vs_k.png``.

    Returns:
      ``{'rows', 'std', 'num_pairs', 'copies'}``: the mean rows of ``summary.csv``,
      the std rows in the same order, how many pairs of copies each has, and
      every trained copy's final test accuracy and density (``{'k', 'replicate',
      'copy', 'test_accuracy', 'density'}``, by k, replicate and copy).
    """
    stability = StabilitySpec.from_config(config, workdir, progress=progress)
    spec, copies = stability.run, stability.num_copies
    run = spec.open(workdir)
    workdir, executor, num = run.workdir, spec.executor, spec.num_replicates
    keys = spec.replicate_keys()
    init_keys, noise_keys = spec.keys()
    copy_keys = copy_noise_keys(keys, copies)

    state = executor.init(init_keys)
    like = executor.shard(masking.ones_like(state.params))

    rows: list[dict] = []
    path_records: list[dict] = []
    copy_rows: list[dict] = []
    for k in stability.rewind_steps:
        # The parent of every copy: the dense run (own noise) to step k.
        state = run.segment(f"parent_{k}", state=state, noise_keys=noise_keys, end=k,
                            tags={"k": k, "branch": "parent"}, desc=f"parent to step {k}").state
        masks, start = None, state
        density = np.ones(num)
        if k in stability.tickets:
            # The ticket as IMP trained it: step-k weights under the mask, and the
            # optimiser state IMP started from (fresh, or rewound with rewind_optimizer).
            ticket = stability.tickets[k]
            masks = executor.shard(imp_runs.load_imp_masks(ticket.workdir, ticket.level, like,
                                                           ticket.branch))
            density = np.asarray(jax.vmap(
                lambda m, s=ticket.prunable: masking.density(m, s))(masks))
            start = ticket_start(executor, state, masks, ticket.config)
        start = executor.shard(_repeat(start, copies))
        copy_masks = executor.shard(_repeat(masks, copies)) if masks is not None else None
        trained = run.segment(f"copies_{k}", state=start, masks=copy_masks,
                              noise_keys=copy_keys, tags={"k": k, "branch": "copies"},
                              densities=np.repeat(density, copies),
                              desc=f"{num}x{copies} copies from step {k}")
        final = trained.state
        copy_rows += [{"k": k, "replicate": m // copies, "copy": m % copies,
                       "test_accuracy": float(trained.curves.final("test", "accuracy")[m]),
                       "density": float(trained.curves.density[m])}
                      for m in range(num * copies)]
        k_rows, k_records = _pair_rows(run, stability, final, k=k)
        rows += k_rows
        path_records += k_records

    rows = sorted(rows, key=lambda r: (r["k"], r["split"]))  # stable: replicates, pairs in order
    table = results.write_table(
        workdir / "results.csv", rows, by=("k", "split"),
        fields=("instability", "loss_barrier_chord", "loss_barrier_mean_ends", "accuracy_a",
                "accuracy_b", "stable"))
    name = f"{spec.model_name} on {plots.dataset_label(spec.dataset.name)}"
    plots.plot_error_vs_alpha(path_records, workdir / "plots" / "error_vs_alpha.png",
                              title=f"{name}: error along the path between copies")
    plots.plot_instability_vs_k(rows, workdir / "plots" / "instability_vs_k.png",
                                title=f"{name}: instability vs rewind step")
    first = (rows[0]["k"], rows[0]["split"]) if rows else None
    return {**table, "num_pairs": sum((r["k"], r["split"]) == first for r in rows),
            "copies": copy_rows}


def _pair_rows(run, stability, final, *, k) -> tuple[list[dict], list[dict]]:
    """Every pair's path, evaluated once (:func:`ltjax.studies.common.path_once`).

    Returns one row per replicate, pair and split, and the paths' records (for the figure).
    """
    executor, num, copies = run.spec.executor, run.spec.num_replicates, stability.num_copies
    alphas = np.asarray(stability.alphas)
    recompute = None
    if jax.tree.leaves(final.batch_stats) and stability.recompute_batch_stats:
        def recompute(t):
            return (t[0], executor.recomputed_batch_stats(t[0], t[1], **stability.reset))
    rows, records = [], []
    for rep in range(num):
        for i, j in itertools.combinations(range(copies), 2):
            a = (tree.index(final.params, rep * copies + i),
                 tree.index(final.batch_stats, rep * copies + i))
            b = (tree.index(final.params, rep * copies + j),
                 tree.index(final.batch_stats, rep * copies + j))
            pair = f"{i}-{j}"
            for split in stability.path_splits:
                def evaluate(split=split, a=a, b=b):
                    return {split: interpolation.evaluate_path(
                        lambda t: executor.evaluate_params(t[0], t[1], split), a, b,
                        alphas, chunk_size=stability.alpha_chunk, recompute_fn=recompute)}

                curves, path_records = common.path_once(
                    run.workdir, run.log, f"paths/k_{k}/replicate_{rep}_pair_{pair}_{split}",
                    {"k": k, "branch": "path", "replicate": rep, "pair": pair}, alphas,
                    [split], evaluate)
                records += path_records
                rows.append(_path_row(*curves[split], k=k, rep=rep, pair=pair, split=split))
    return rows, records


def _path_row(alphas, accuracy, loss, *, k, rep, pair, split) -> dict:
    errors = 1.0 - accuracy
    barrier, peak = interpolation.error_barrier(alphas, errors)
    chord, chord_at = interpolation.loss_barrier(alphas, loss, baseline="chord")
    mean_ends, mean_ends_at = interpolation.loss_barrier(alphas, loss, baseline="mean_ends")
    return {"k": k, "replicate": rep, "pair": pair, "split": split,
            "instability": float(barrier), "alpha_at_max": float(peak),
            "loss_barrier_chord": float(chord), "loss_barrier_chord_alpha": float(chord_at),
            "loss_barrier_mean_ends": float(mean_ends),
            "loss_barrier_mean_ends_alpha": float(mean_ends_at),
            "accuracy_a": 1.0 - errors[0], "accuracy_b": 1.0 - errors[-1],
            "stable": bool(barrier < STABLE_BELOW)}
