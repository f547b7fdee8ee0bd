"""The instability transition (Frankle, Dziugaite, Roy & Carbin, ICML 2020, Figures 3-6).

Linear mode connectivity's central finding: a network trained with a large
learning rate is *unstable* to SGD noise at initialisation (two copies trained
from the same weights with different data orders end in minima separated by
an error barrier), becomes *stable* after a small share of training (k), and
IMP subnetworks at extreme sparsity match the dense accuracy only when rewound
to a k at which they are stable; randomly pruned subnetworks never do.

One study runs the whole experiment from other studies, each resumable in
its own folder of ``workdir``:

1. ``dense/``: the instability of the dense network at every k of
   ``config.rewind_steps`` (:func:`ltjax.studies.stability.run_stability`);
2. ``imp_<k>/`` for each k of ``config.imp_rewind_steps``: IMP rewinding to k
   for ``config.levels`` levels, with the ``random_layerwise`` control (a
   random mask keeping each layer's count, from the same step-k weights)
   (:func:`ltjax.studies.imp.run_imp`);
3. ``imp_subnetworks/`` and ``random_subnetworks/``: the instability of the
   level-``levels`` IMP subnetworks and of the random ones, at each k the run
   that rewound to k (the paper's protocol, Section 4).

Then it writes the tables the paper plots: ``dense_results.csv``,
``imp_results.csv`` and ``random_results.csv`` (the stability study's
``results.csv`` of each kind, with its ``summary.csv`` as ``<kind>_summary.csv``),
``accuracy.csv`` (each trained copy's test accuracy per k and kind, against the
dense accuracy: ``matching`` when within ``config.matching_within`` of it; means
per kind and k in ``accuracy_summary.csv``), ``mask_distance.csv`` (Hamming distance and
IoU between the IMP masks found by rewinding to different k, per replicate:
Frankle, Schwab & Morcos 2020, Section 3) and ``plots/transition.png``.

Every part shares the config's dataset, model, seed, replicates and recipe.
The dense accuracy is the mean final test accuracy of the dense copies
trained from the first k of ``config.rewind_steps`` (k = 0 by default: the
network trained normally, S x C times).

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import transition_lenet_digits
    summary = run_transition(transition_lenet_digits.get_config("quick"), "/tmp/transition")
    sorted(summary)    # ['accuracy', 'dense_accuracy', 'instability', 'matching']
    summary["instability"]["imp"]    # {k: mean test instability}
    ```

    The same run from a shell: ``python -m experiments.transition
    --config=experiments/configs/transition_lenet_digits.py:quick --workdir=/tmp/transition``.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from typing import Any

import jax
import numpy as np

from ltjax.core import masking
from ltjax.io import distributed, results
from ltjax.studies import common, imp, imp_runs, plots, stability
from ltjax.studies.spec import RunSpec

#: The fields of the stability study alone, of the IMP study alone, of this study alone.
STABILITY_FIELDS = ("num_copies", "rewind_steps", "num_alphas", "path_splits", "alpha_chunk",
                    "recompute_batch_stats", "reset_batches", "reset_augment", "imp_workdir",
                    "imp_level", "imp_mask_at_any_k", "imp_branch")
IMP_FIELDS = ("levels", "rewind_step", "rewind_optimizer", "sgd_noise", "pruning", "controls",
              "max_checkpoints", "ticket_learning_rates", "ticket_masks", "ticket_similar",
              "correlation_p", "pretrain")
TRANSITION_FIELDS = ("imp_rewind_steps", "matching_within")
#: The subnetwork kinds: the stability study's ``imp_branch`` and the tables' names.
KINDS = {"imp": "imp", "random_layerwise": "random"}


def stability_config(config: Any, **fields: Any) -> Any:
    """The stability study's config of one part (``fields`` set on a copy)."""
    out = common.without(config, IMP_FIELDS + TRANSITION_FIELDS)
    for key, value in fields.items():
        out[key] = value
    return out


def imp_config(config: Any, rewind_step: str) -> Any:
    """The IMP study's config rewinding to ``rewind_step``, with the random pruning control.

    Example:
        >>> import ml_collections
        >>> from ltjax.studies import transition
        >>> config = transition.imp_config(ml_collections.ConfigDict({"model": "mlp"}), "500it")
        >>> config.model, config.rewind_step, config.controls
        ('mlp', '500it', ('random_layerwise',))
    """
    out = common.without(config, STABILITY_FIELDS + TRANSITION_FIELDS)
    out.rewind_step = rewind_step
    out.controls = ("random_layerwise",)
    out.ticket_learning_rates = ()
    return out


def _imp_steps(config: Any, per_epoch: int, end: int) -> list[tuple[int, str]]:
    """``[(k in steps, k as written)]`` of ``config.imp_rewind_steps``, sorted, checked."""
    given = list(config.imp_rewind_steps or ())
    if not given:
        raise ValueError("config.imp_rewind_steps must list at least one rewind step, got "
                         f"{given}")
    out: dict[int, str] = {}
    for text in given:
        k = common.steps(text, per_epoch)
        if not 0 <= k < end:
            raise ValueError(f"config.imp_rewind_steps entry {text!r} ({k} steps) must be in "
                             f"[0, training_steps = {end})")
        if k in out:
            raise ValueError(f"config.imp_rewind_steps gives k = {k} steps twice "
                             f"({out[k]!r}, {text!r})")
        out[k] = str(text)
    return sorted(out.items())


def _parts(config: Any, dataset: Any) -> dict:
    """Every part's config, built and checked before any workdir is written:
    :class:`TransitionSpec`'s ``imp_steps``, ``dense`` and ``imp_runs``."""
    per_epoch = len(dataset.train) // config.recipe.batch_size
    end = common.steps(config.training_steps, per_epoch)
    within = config.get("matching_within")
    if isinstance(within, bool) or not isinstance(within, int | float) or not 0 < within < 1:
        raise ValueError(f"config.matching_within must be an accuracy share in (0, 1), e.g. "
                         f"0.005 for 0.5 pp, got {within!r}")
    if isinstance(config.levels, bool) or not isinstance(config.levels, int) or config.levels < 1:
        raise ValueError(f"config.levels must be an int >= 1 (the sparsity studied), got "
                         f"{config.levels!r}")
    if config.get("imp_workdir"):
        raise ValueError(f"config.imp_workdir={config.imp_workdir!r}: this study makes its own "
                         "IMP runs (one per k of config.imp_rewind_steps); leave it empty")
    dense = stability_config(config)
    stability.check_rewind_steps(dense, dataset)
    imp_steps = tuple(_imp_steps(config, per_epoch, end))
    imp_runs = tuple((text, imp_config(config, text)) for _, text in imp_steps)
    for _, imp_run in imp_runs:
        imp.check_config(imp_run, dataset)
    return {"imp_steps": imp_steps, "dense": dense, "imp_runs": imp_runs}


def _folder(text: str) -> str:
    """The folder of the IMP run rewinding to ``text`` (as written: ``'25it'``, ``'1ep'``)."""
    return f"imp_{text}"


def _accuracy_rows(parts: dict[str, list[dict]], dense: float, within: float,
                   instability: dict[str, list[dict]]) -> list[dict]:
    """``accuracy.csv``'s rows: one per (kind, k, replicate, copy)."""
    rows = []
    for kind, copies in parts.items():
        unstable = {}
        for r in instability[kind]:
            if r["split"] == "test":
                unstable.setdefault((int(r["k"]), int(r["replicate"])), []).append(
                    float(r["instability"]))
        for c in copies:
            barrier = float(np.mean(unstable[c["k"], c["replicate"]]))
            rows.append({"kind": kind, **c, "dense_test_accuracy": dense,
                         "matching": bool(c["test_accuracy"] >= dense - within),
                         "instability": barrier,
                         "stable": bool(barrier < stability.STABLE_BELOW)})
    return rows


@dataclasses.dataclass(frozen=True)
class TransitionSpec:
    """An instability-transition study, parsed and checked once at its entry.

    Its parts are other studies: the spec holds their configs, built once from
    this one (each part parses its own spec when it runs).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`).
      levels: the IMP level whose subnetworks are studied.
      matching_within: the accuracy share within which a subnetwork matches the dense net.
      imp_steps: ``(k in steps, k as written)`` of ``imp_rewind_steps``, sorted.
      dense: the stability study of the dense network (every k of ``rewind_steps``).
      imp_runs: ``(k as written, IMP config)`` per IMP run, as ``imp_steps``.
      subnetworks: per kind (:data:`KINDS`' values), the stability study of the
        level-``levels`` subnetworks of the IMP runs, each k from the run that rewound to k.
      prunable: the pruned leaves (``pruning.include`` / ``exclude``) of the mask distances.

    Example:
        The spec of the digits quick config, before any workdir exists:

        >>> from experiments.configs import transition_lenet_digits
        >>> from ltjax.studies.transition import TransitionSpec
        >>> spec = TransitionSpec.from_config(transition_lenet_digits.get_config("quick"),
        ...                                   progress=False)
        >>> spec.levels, spec.imp_steps, sorted(spec.subnetworks)
        (2, ((0, '0it'), (23, '1ep')), ['imp', 'random'])
    """

    run: RunSpec
    levels: int
    matching_within: float
    imp_steps: tuple[tuple[int, str], ...]
    dense: Any
    imp_runs: tuple[tuple[str, Any], ...]
    subnetworks: dict[str, Any]
    prunable: Any

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> TransitionSpec:
        """Parse and check ``config`` and every part's config; nothing is written.

        Raises:
          ValueError: a bad field of any part.
        """
        parts: dict = {}
        run = RunSpec.from_config(config, check=lambda dataset: parts.update(
            _parts(config, dataset)), progress=progress)
        imp_steps = parts["imp_steps"]
        # relative to the subnetworks' own workdir: the whole folder can be moved or copied
        runs = ",".join(f"{k}it={{workdir}}/../{_folder(text)}" for k, text in imp_steps)
        p = config.pruning
        return cls(
            run=run, levels=config.levels, matching_within=config.matching_within,
            **parts, subnetworks={kind: stability_config(
                config, rewind_steps=tuple(f"{k}it" for k, _ in imp_steps), imp_workdir=runs,
                imp_level=config.levels, imp_branch=branch) for branch, kind in KINDS.items()},
            prunable=masking.prunable(run.executor.abstract_params,
                                      include=p.get("include") or None,
                                      exclude=p.get("exclude") or None))


@common.study_entry
def run_transition(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Run the dense k-sweep, IMP per k, and the subnetworks' instability; resumable.

    See the module docstring for what it writes.

    Returns:
      ``{'instability': {kind: {k: mean}}, 'accuracy': {kind: {k: mean}},
      'matching': {kind: {k: share}}, 'dense_accuracy': float}`` with kinds
      ``'dense'``, ``'imp'`` and ``'random'`` (test split; accuracy and
      matching for the sparse kinds).

    Raises:
      ValueError: a bad field of any part (before any workdir is written).
    """
    transition = TransitionSpec.from_config(config, progress=progress)
    spec, levels = transition.run, transition.levels
    workdir = spec.open(workdir).workdir

    common.say("dense network: instability at every k", progress)
    copies = {"dense": stability.run_stability(transition.dense, workdir / "dense",
                                               progress=progress)["copies"]}
    for text, imp_run in transition.imp_runs:
        common.say(f"IMP rewinding to k = {text}, {levels} levels", progress)
        imp.run_imp(imp_run, workdir / _folder(text), progress=progress)
    for kind, subnetworks in transition.subnetworks.items():
        common.say(f"{kind} subnetworks at level {levels}: instability at each k", progress)
        copies[kind] = stability.run_stability(subnetworks, workdir / f"{kind}_subnetworks",
                                               progress=progress)["copies"]

    parts = {"dense": workdir / "dense", **{kind: workdir / f"{kind}_subnetworks"
                                            for kind in KINDS.values()}}
    tables = {kind: results.read_csv(folder / "results.csv") for kind, folder in parts.items()}
    summaries = {kind: results.read_csv(folder / "summary.csv") for kind, folder in parts.items()}
    for kind in parts:
        results.write_csv(workdir / f"{kind}_results.csv", tables[kind])
        results.write_csv(workdir / f"{kind}_summary.csv", summaries[kind])
    first_k = min(c["k"] for c in copies["dense"])
    dense = float(np.mean([c["test_accuracy"] for c in copies["dense"] if c["k"] == first_k]))
    accuracy = _accuracy_rows({kind: copies[kind] for kind in KINDS.values()}, dense,
                              transition.matching_within, tables)
    accuracy_summary = results.write_table(
        workdir / "accuracy.csv", accuracy, by=("kind", "k"), fields=(
            "test_accuracy", "density", "dense_test_accuracy", "matching", "instability",
            "stable"))
    results.write_csv(workdir / "mask_distance.csv",
                      _mask_distances(transition, workdir))

    per_pair = [{**r, "kind": kind} for kind, rows in tables.items() for r in rows
                if r["split"] == "test"]
    name = f"{spec.model_name} on {plots.dataset_label(spec.dataset.name)}"
    plots.plot_transition(
        per_pair, accuracy,
        workdir / "plots" / "transition.png", dense_accuracy=dense,
        matching_within=transition.matching_within,
        title=f"{name}: instability and accuracy vs rewind step (level {levels})")

    def means(rows: list[dict], key: str) -> dict[int, float]:
        return {int(r["k"]): float(r[key]) for r in rows
                if r["stat"] == "mean" and r.get("split", "test") == "test"}

    mean_accuracy = accuracy_summary["rows"]
    return {
        "instability": {kind: means(rows, "instability") for kind, rows in summaries.items()},
        "accuracy": {kind: means([r for r in mean_accuracy if r["kind"] == kind],
                                 "test_accuracy") for kind in KINDS.values()},
        "matching": {kind: means([r for r in mean_accuracy if r["kind"] == kind], "matching")
                     for kind in KINDS.values()},
        "dense_accuracy": dense,
    }


def _mask_distances(transition: TransitionSpec, workdir: pathlib.Path) -> list[dict]:
    """Hamming distance and IoU between the level's IMP masks of every two rewind steps."""
    params = transition.run.executor.abstract_state.params
    like = jax.tree.map(lambda x: np.ones((1, *x.shape), bool), params)
    masks = {k: imp_runs.load_imp_masks(workdir / _folder(text), transition.levels, like)
             for k, text in transition.imp_steps}
    rows = []
    for k_a, k_b in itertools.combinations(sorted(masks), 2):
        found = distributed.host(imp.mask_distances(masks[k_a], masks[k_b], transition.prunable))
        for rep in range(transition.run.num_replicates):
            rows.append({"level": transition.levels, "k_a": k_a, "k_b": k_b, "replicate": rep,
                         **{key: float(np.asarray(value)[rep]) for key, value in found.items()}})
    return rows
