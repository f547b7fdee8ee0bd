"""Iterative magnitude pruning (IMP) with rewinding, and its controls, for S replicates at once.

The lottery ticket procedure (Frankle & Carbin 2019), with rewinding to step
k (Frankle et al. 2020; k = 0 is the original reset):

1. train the dense network to step k (the rewind point) and on to the end;
2. prune ``fraction`` of the remaining prunable weights by magnitude
   (:func:`ltjax.core.pruning.prune`: global or layerwise, per-layer rates);
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
SGD noise (``config.sgd_noise``, :func:`level_noise_keys`): ``'paired'``
(the default) gives every level and branch the same data order and
augmentation from step k on; ``'fresh'`` draws a new one per level and
branch, as OpenLTH does. Replicate r's keys are
``rng.replicate_keys(seed, S)[r]``; the controls' randomness comes from
named streams of it (``reinit``, ``random_prune``,
``small_dense``), so nothing depends on S or on which controls run (member r
of a branch gives the same numbers whatever trains beside it, to ~1e-6
relative: XLA picks kernels by batch shape).

Pretraining on altered data (Frankle, Schwab & Morcos 2020, Section 5;
``config.pretrain``, the ``:pretrain_*`` variants): with ``pretrain.kind`` one
of ``'random_labels'`` (a share ``pretrain.share`` of the training labels
redrawn, ``exclude_true`` to make every redrawn one wrong), ``'rotation'``
(4-way rotation prediction with ``np.rot90``, a 4-class head) or ``'blur'``
(x``blur_factor`` down by block means, then up), the dense network first trains
``pretrain.steps`` on that data (:func:`ltjax.io.data.altered_dataset`; its own
noise stream, ``stream(noise, 'pretrain')``); that state is step 0 of the real
task (fresh optimiser state, the schedule from 0), which trains on to the
rewind step k as usual, and every level rewinds to it. The paper pretrains
the whole network on the altered data and then runs IMP with rewinding to the
pretrained state on the real labels (rotation and blur needed ~40 epochs to
match ~500 iterations of supervised training on CIFAR-10; random labels did
not help). It does not say how the rotation task's 4-way output layer becomes
the real task's 10-way one [not verified]; here it is replaced by the
replicate's own fresh 10-class head (the head its init would have), every
other layer kept; for random labels and blur, whose classes are the real
ones, the whole pretrained network is kept. The rotated test set only
measures the pretext task (records of branch ``pretrain_altered``).

``mask_distance.csv``: per level >= 1 and replicate, the Hamming distance
(``hamming``, and as a share of the prunable weights) and the IoU between the
ticket's masks at this level and at the previous one (level 0: all kept),
with :func:`ltjax.core.masking.hamming` and :func:`ltjax.core.masking.iou`
(:func:`mask_distances`).

Sanity checks (Ma et al. 2021; Liu et al. 2021):

- ``config.ticket_learning_rates`` (e.g. ``(1.2e-4, 1.2e-3, 1.2e-2)``, must
  include the recipe's): every member of every level (the dense net at level
  0, the ticket and its controls after) trains at each of these learning
  rates, as members of the level's program with their own peak learning
  rate. ``config.ticket_masks`` says where each rate's masks come from:
  ``'own_rate'`` (default; the papers' protocol) runs the whole pipeline at
  each rate (the dense net, pruning, rewinding and retraining at that rate:
  a rate's ticket is pruned from its own previous level), the IMP runs of all
  rates as members of one program; ``'recipe_rate'`` prunes once, at the
  recipe's rate, and retrains those masks at every rate (another question:
  do the recipe's tickets survive other rates). ``results.csv`` gets
  a ``learning_rate`` column and ``ticket_classes.csv`` the verdict per
  level of :func:`ltjax.methods.sanity.classify_ticket` (jackpot / secondary prize /
  none, from the final test accuracies; ``config.ticket_similar`` is the
  paper's "similar" margin, 0.005). Needs the ``reinit`` and ``small_dense``
  controls (``small_dense`` trains at the recipe's learning rate only) unless
  ``levels=0``: then it is a dense learning-rate comparison (e.g. Liu et
  al.'s weight correlation at SGD 0.01 vs 0.1).
- ``weight_correlation`` in ``results.csv``:
  :func:`ltjax.methods.sanity.weight_correlation` ``R_p`` between each member's start
  weights (theta_k under its mask) and its trained weights, among its kept
  weights, ``p = config.correlation_p`` (default 0.1).

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import imp_lenet_digits
    summary = run_imp(imp_lenet_digits.get_config("quick"), "/tmp/imp")
    sorted(summary)                  # ['num_replicates', 'rows', 'std']
    summary["num_replicates"]        # 2
    summary["rows"]                  # results.csv's means, one row per (level, branch)
    ```

    The same run from a shell: ``python -m experiments.imp
    --config=experiments/configs/imp_lenet_digits.py:quick --workdir=/tmp/imp``.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax import models
from ltjax.core import masking, pruning, rewinding, rng, tree
from ltjax.engine import optim
from ltjax.io import data, distributed, results
from ltjax.methods import sanity
from ltjax.studies import common, plots
from ltjax.studies.spec import RunSpec

CONTROLS = ("reinit", "random_layerwise", "random_global", "oneshot", "small_dense")
SGD_NOISE = ("paired", "fresh")
#: ``config.ticket_masks``: each rate's own IMP run (Ma et al. 2021) or the recipe rate's masks.
TICKET_MASKS = ("own_rate", "recipe_rate")
#: ``config.pretrain.kind``: ``''`` (none) or a kind of :func:`ltjax.io.data.altered_dataset`.
PRETRAIN_KINDS = ("",) + data.ALTERED_KINDS


def level_noise_keys(noise_keys: jax.Array, level: int, branch: str, sgd_noise: str) -> jax.Array:
    """The noise keys ``[S]`` (data order, augmentation) of a level's branch.

    ``'paired'``: every level and branch reuses the replicates' own noise
    keys, so each sees the same batches from step k on (the SGD noise is
    held fixed and the subnetworks differ only in their masks).
    ``'fresh'`` (OpenLTH's default: an unseeded data order per run): level 0
    continues the dense run's noise, and every other (level, branch) draws
    its own, ``fold_in(stream(noise_key, 'imp/<branch>'), level)``; it does
    not depend on S or on which other branches run.

    Example:
        >>> import jax
        >>> from ltjax.studies import imp
        >>> noise_keys = jax.random.split(jax.random.key(0), 2)    # S = 2 replicates
        >>> imp.level_noise_keys(noise_keys, 3, "reinit", "fresh").shape
        (2,)
        >>> imp.level_noise_keys(noise_keys, 3, "reinit", "paired") is noise_keys
        True
    """
    if sgd_noise == "paired" or level == 0:
        return noise_keys
    streams = rng.stream(noise_keys, f"imp/{branch}")
    return jax.vmap(lambda k: jax.random.fold_in(k, level))(streams)


def small_dense_widths(
    widths: tuple[int, ...], *, input_size: int, num_classes: int, target: int,
) -> tuple[int, ...]:
    """Hidden widths scaled by one factor so the MLP has about ``target`` kernel weights.

    Example:
        >>> from ltjax.studies import imp
        >>> imp.small_dense_widths((300, 100), input_size=784, num_classes=10, target=53240)
        (66, 22)

        LeNet-300-100 at 20 % of its 266200 kernel weights: 784 x 66 + 66 x 22 + 22 x 10
        = 53416 (scaling every width by 0.2 would keep only 48440).
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


def _early_stop(curves: common.Curves, member: int) -> dict:
    """Early stopping as in the LTH paper: the eval step of minimum validation loss."""
    if "validation" not in curves.metrics:
        return {}
    loss = curves.metrics["validation"]["loss"][:, member]
    best = int(np.lexsort((curves.steps, loss))[0])  # the lowest loss, the earliest step
    return {
        "early_stop_step": int(curves.steps[best]),
        "early_stop_validation_accuracy": float(
            curves.metrics["validation"]["accuracy"][best, member]),
        "early_stop_test_accuracy": float(curves.metrics["test"]["accuracy"][best, member]),
        "best_validation_accuracy": float(curves.metrics["validation"]["accuracy"][:, member]
                                          .max()),
    }


def _summary_rows(segments: list[tuple[int, list[dict], common.Curves]],
                  correlations: dict) -> list[dict]:
    """One row per (level, branch[, learning rate], replicate), in that order.

    ``segments`` holds each trained segment's level, member tags and curves;
    ``correlations`` maps ``(level, branch, learning_rate, replicate)`` to the
    member's weight correlation (start vs trained weights); ``learning_rate``
    is None without a sweep, and the column only appears with a sweep.
    """
    order = ("imp",) + CONTROLS
    members = [(level, t, curves, m) for level, member_tags, curves in segments
               for m, t in enumerate(member_tags)]
    rows = []
    for level, t, curves, m in sorted(members, key=lambda x: (
            x[0], order.index(x[1]["branch"]), x[1].get("learning_rate") or 0.0,
            x[1]["replicate"])):
        lr = t.get("learning_rate")
        row = {"level": level, "branch": t["branch"]}
        if lr is not None:
            row["learning_rate"] = lr
        row.update({"replicate": t["replicate"], "density": float(curves.density[m]),
                    "test_accuracy": float(curves.final("test", "accuracy")[m]),
                    "test_loss": float(curves.final("test", "loss")[m])})
        if "validation" in curves.metrics:
            row["validation_accuracy"] = float(curves.final("validation", "accuracy")[m])
        row.update(_early_stop(curves, m))
        if (level, t["branch"], lr, t["replicate"]) in correlations:
            row["weight_correlation"] = correlations[level, t["branch"], lr, t["replicate"]]
        rows.append(row)
    return rows


def _ticket_classes(rows: list[dict], num: int, *, similar: float) -> list[dict]:
    """Ma et al. 2021's verdict per level from the sweep's per-replicate test accuracies."""
    def accuracies(level: int, branch: str, lr: float) -> np.ndarray:
        return np.array([r["test_accuracy"] for r in rows if isinstance(r["replicate"], int)
                         and (r["level"], r["branch"], r.get("learning_rate"))
                         == (level, branch, lr)])

    lrs = sorted({r["learning_rate"] for r in rows if "learning_rate" in r})
    out = []
    for level in sorted({r["level"] for r in rows if r["level"] > 0}):
        small = [r["test_accuracy"] for r in rows if isinstance(r["replicate"], int)
                 and (r["level"], r["branch"]) == (level, "small_dense")]
        sweep = {lr: {"dense": accuracies(0, "imp", lr), "ticket": accuracies(level, "imp", lr),
                      "reinit": accuracies(level, "reinit", lr)} for lr in lrs}
        if not small or any(len(v) != num for e in sweep.values() for v in e.values()):
            continue  # an unfinished level
        density = float(np.mean([r["density"] for r in rows if isinstance(r["replicate"], int)
                                 and (r["level"], r["branch"]) == (level, "imp")]))
        verdict = sanity.classify_ticket(sweep, small_dense=np.array(small),
                                         sparsity=1.0 - density, similar=similar)
        out.append({"level": level, "density": density, "label": verdict.label,
                    **verdict.conditions,
                    **{f"why_{k}": v for k, v in verdict.reasons.items()}})
    return out


def _check_sweep(config: Any, controls: tuple[str, ...]) -> tuple[tuple[float, ...] | None, str]:
    """The ticket learning-rate sweep (sorted floats) or None, and the ticket masks' mode
    (:data:`TICKET_MASKS`); checked before any work."""
    mode = config.get("ticket_masks", "own_rate")
    lrs = config.get("ticket_learning_rates") or ()
    lrs = [lrs] if isinstance(lrs, str) else list(lrs)  # '0.01,0.1' or ('0.01,0.1',) from flags
    lrs = [v for item in lrs for v in (item.split(",") if isinstance(item, str) else [item])
           if not isinstance(v, str) or v.strip()]
    try:
        lrs = tuple(sorted({float(v) for v in lrs}))
    except (TypeError, ValueError):
        raise ValueError(f"config.ticket_learning_rates must be numbers, got "
                         f"{config.ticket_learning_rates!r}") from None
    if not lrs:
        return None, mode
    if any(v <= 0 for v in lrs):
        raise ValueError(f"config.ticket_learning_rates must be > 0, got {lrs}")
    if float(config.recipe.learning_rate) not in lrs:
        raise ValueError(f"config.ticket_learning_rates {lrs} must include the recipe's "
                         f"learning_rate {config.recipe.learning_rate} (it finds the masks)")
    missing = [c for c in ("reinit", "small_dense") if c not in controls]
    if missing and config.levels > 0:
        raise ValueError(f"config.ticket_learning_rates needs the controls {missing} "
                         "(Ma et al. 2021's conditions compare the ticket with both)")
    if mode not in TICKET_MASKS:
        raise ValueError(f"config.ticket_masks must be one of {TICKET_MASKS}, got {mode!r}")
    if mode == "own_rate" and (config.get("pretrain") or {}).get("kind"):
        raise ValueError("config.ticket_masks='own_rate' runs IMP at each learning rate, "
                         "config.pretrain pretrains at the recipe's only: set "
                         "ticket_masks='recipe_rate' or drop the pretraining")
    return lrs, mode


def check_config(config: Any, dataset: Any) -> None:
    """Everything :func:`run_imp` checks before it writes its workdir (:meth:`ImpSpec.from_config`).

    Studies that run their own IMP call it before writing theirs.

    Raises:
      ValueError: naming the field and what was expected.
    """
    _study_fields(config, dataset)


def _study_fields(config: Any, dataset: Any) -> dict:
    """IMP's own fields of ``config``, parsed and checked against ``dataset``.

    Controls, SGD noise, the level count, the learning-rate sweep, the
    correlation share, the rewind step against the run length, the
    small_dense control against the model, the pruning settings
    (:func:`check_pruning`) and the pretraining (:func:`pretrain_dataset`):
    :class:`ImpSpec`'s fields but the run and the pruning's resolved trees.
    """
    controls = common.names_of(config.controls, field="controls", allowed=CONTROLS)
    sgd_noise = config.get("sgd_noise", "paired")
    if sgd_noise not in SGD_NOISE:
        raise ValueError(f"config.sgd_noise must be one of {SGD_NOISE}, got {sgd_noise!r}")
    if config.levels < 0:
        raise ValueError(f"config.levels must be >= 0, got {config.levels}")
    sweep, ticket_masks = _check_sweep(config, controls)
    correlation_p = common.correlation_p(config)
    per_epoch = len(dataset.train) // config.recipe.batch_size
    end = common.steps(config.training_steps, per_epoch)
    rewind_step = common.steps(config.rewind_step, per_epoch)
    if not 0 <= rewind_step < end:
        raise ValueError(
            f"rewind_step ({config.rewind_step} = {rewind_step} steps) must be before "
            f"training_steps ({config.training_steps} = {end} steps)"
        )
    if "small_dense" in controls and not hasattr(common.build_model(config, dataset), "widths"):
        others = ",".join(c for c in controls if c != "small_dense")
        raise ValueError(f"the small_dense control needs an MLP model, got {config.model!r}; "
                         f"drop it with --config.controls={others}")
    if config.levels > 0:
        check_pruning(config, dataset)
    pruning._check_fraction(config.pruning.fraction)
    altered = pretrain_dataset(config, dataset)
    return {"levels": int(config.levels), "controls": controls, "rewind_step": rewind_step,
            "rewind_optimizer": bool(config.get("rewind_optimizer", False)),
            "sgd_noise": sgd_noise, "learning_rates": sweep,
            "ticket_masks": ticket_masks,
            "ticket_similar": float(config.get("ticket_similar",
                                               sanity.SIMILAR_DROP["cifar10"])),
            "correlation_p": correlation_p,
            "pretrain": None if altered is None else PretrainSpec(
                kind=config.pretrain.kind, dataset=altered[0], steps=altered[1],
                model=common.build_model(config, altered[0]))}


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    """``config.pretrain``: the altered data the dense net trains on before IMP."""

    kind: str  # a kind of ltjax.io.data.altered_dataset
    dataset: data.Dataset  # the altered dataset
    steps: int  # steps on it (epochs count the real training set's batches)
    model: Any  # the model for its classes (4 for rotation)


@dataclasses.dataclass(frozen=True)
class ImpSpec:
    """An IMP study, parsed and checked once at its entry (Frankle & Carbin 2019; OpenLTH).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`).
      levels: pruning levels after the dense level 0.
      controls: the controls trained beside the ticket at each level (:data:`CONTROLS`).
      rewind_step: the rewind step k, in steps.
      rewind_optimizer: rewind the optimiser state to k too (else a fresh one).
      sgd_noise: ``'paired'`` or ``'fresh'`` (:func:`level_noise_keys`).
      prunable: the bool tree of the pruned leaves (``pruning.include`` / ``exclude``).
      prune_kw: :func:`ltjax.core.pruning.prune`'s ``fraction``, ``scope`` and resolved
        ``layer_rates``.
      learning_rates: the ticket sweep's rates (sorted), or None (no sweep).
      ticket_masks: where each rate's masks come from (:data:`TICKET_MASKS`).
      ticket_similar: Ma et al.'s "similar" accuracy drop.
      correlation_p: the weight correlation's share ``p``.
      pretrain: the pretraining on altered data (:class:`PretrainSpec`), or None.

    Example:
        The spec of the digits config, before any workdir exists:

        >>> from experiments.configs import imp_lenet_digits
        >>> from ltjax.studies.imp import ImpSpec
        >>> spec = ImpSpec.from_config(imp_lenet_digits.get_config("quick"), progress=False)
        >>> spec.levels, spec.controls, spec.rewind_step, spec.prune_kw["fraction"]
        (2, ('reinit', 'random_layerwise', 'random_global', 'oneshot', 'small_dense'), 0, 0.2)
    """

    run: RunSpec
    levels: int
    controls: tuple[str, ...]
    rewind_step: int
    rewind_optimizer: bool
    sgd_noise: str
    prunable: Any
    prune_kw: dict
    learning_rates: tuple[float, ...] | None
    ticket_masks: str
    ticket_similar: float
    correlation_p: float
    pretrain: PretrainSpec | None

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> ImpSpec:
        """Parse and check ``config`` (the shared fields and IMP's); nothing is written.

        Raises:
          ValueError: an unknown control, a rewind step at or past the end, a
            negative level count, bad pruning or pretraining settings (naming the field).
        """
        fields: dict = {}
        run = RunSpec.from_config(config, check=lambda dataset: fields.update(
            _study_fields(config, dataset)), progress=progress)
        p, abstract = config.pruning, run.executor.abstract_params
        prunable = masking.prunable(abstract, include=p.get("include") or None,
                                    exclude=p.get("exclude") or None)
        return cls(run=run, prunable=prunable, prune_kw=dict(
            fraction=p.fraction, scope=p.scope,
            layer_rates=common.layer_rates(p, abstract, prunable)), **fields)


def pretrain_dataset(config: Any, dataset: data.Dataset) -> tuple[data.Dataset, int] | None:
    """The altered dataset and step count of ``config.pretrain``, or None (no pretraining).

    ``config.pretrain``: ``kind`` (:data:`PRETRAIN_KINDS`), ``steps`` (a step
    string, >= 1 step; epochs count the real training set's batches),
    ``share`` and ``exclude_true`` (random labels), ``blur_factor`` and
    ``blur_method`` (blur), ``seed`` (the alteration's seed). A config
    without the block, or with ``kind=''``, does not pretrain.

    Raises:
      ValueError: a bad field, naming it (``config.pretrain.<field>``).

    Example:
        >>> import ml_collections
        >>> from ltjax.io import data
        >>> from ltjax.studies import imp
        >>> dataset = data.synthetic((8, 8, 1), 100, num_classes=3)    # 100 random 8 x 8 images
        >>> config = ml_collections.ConfigDict({"recipe": {"batch_size": 10},
        ...                                     "pretrain": {"kind": "rotation", "steps": "2ep"}})
        >>> altered, steps = imp.pretrain_dataset(config, dataset)
        >>> altered.num_classes, steps      # the 4-way rotation task, 2 epochs of 10 batches
        (4, 20)
        >>> del config["pretrain"]
        >>> imp.pretrain_dataset(config, dataset) is None
        True
    """
    p = config.get("pretrain")
    kind = "" if p is None else p.get("kind", "")
    if kind not in PRETRAIN_KINDS:
        raise ValueError(f"config.pretrain.kind must be one of {PRETRAIN_KINDS}, got {kind!r}")
    if not kind:
        return None
    per_epoch = len(dataset.train) // config.recipe.batch_size
    try:
        steps = common.steps(p.get("steps", ""), per_epoch)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config.pretrain.steps: {error}") from None
    if steps < 1:
        raise ValueError(f"config.pretrain.steps must be at least 1 step, got {p.get('steps')!r}")
    share = p.get("share", 1.0)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 <= share <= 1.0:
        raise ValueError(f"config.pretrain.share must be a number in [0, 1], got {share!r}")
    for field in ("exclude_true",):
        if not isinstance(p.get(field, False), bool):
            raise ValueError(f"config.pretrain.{field} must be True or False, got "
                             f"{p.get(field)!r}")
    seed = p.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"config.pretrain.seed must be an int >= 0, got {seed!r}")
    factor = p.get("blur_factor", 4)
    shape = dataset.input_shape
    if kind == "blur" and (isinstance(factor, bool) or not isinstance(factor, int) or factor < 1
                           or len(shape) != 3 or shape[0] % factor or shape[1] % factor):
        raise ValueError(f"config.pretrain.blur_factor must be an int >= 1 dividing the image "
                         f"size (inputs {shape}), got {factor!r}")
    method = p.get("blur_method", "bilinear")
    if kind == "blur" and method not in data.BLUR_METHODS:
        raise ValueError(f"config.pretrain.blur_method must be one of {data.BLUR_METHODS}, "
                         f"got {method!r}")
    if kind == "rotation" and (len(shape) != 3 or shape[0] != shape[1]):
        raise ValueError(f"config.pretrain.kind='rotation' needs square images [H, H, C], "
                         f"got inputs of shape {shape}")
    altered = data.altered_dataset(dataset, kind=kind, share=float(share),
                                   exclude_true=p.get("exclude_true", False),
                                   blur_factor=factor, blur_method=method, seed=seed)
    return altered, steps


def with_fresh_head(pretrained: Any, fresh: Any, *, leading_axes: int = 0) -> Any:
    """``pretrained`` params with the output layer taken from ``fresh`` (a new task's head).

    For the rotation pretraining of Frankle, Schwab & Morcos 2020 (Section 5):
    the 4-way head is dropped for the real task's freshly initialised head
    (:func:`ltjax.models.output_layer` names it); every other leaf is the
    pretrained one. Pure; the trees must have the same leaf names.

    Example:
        >>> import numpy as np
        >>> from ltjax.studies import imp
        >>> rotation_net = {"Dense_0": {"kernel": np.ones((4, 8))},
        ...                 "Dense_1": {"kernel": np.ones((8, 4))}}     # a 4-way head
        >>> fresh = {"Dense_0": {"kernel": np.zeros((4, 8))},
        ...          "Dense_1": {"kernel": np.zeros((8, 10))}}          # a 10-class head
        >>> params = imp.with_fresh_head(rotation_net, fresh)
        >>> float(params["Dense_0"]["kernel"].sum()), params["Dense_1"]["kernel"].shape
        (32.0, (8, 10))
    """
    head = models.output_layer(fresh, leading_axes=leading_axes) + "/"
    names = tree.names(fresh)
    if tree.names(pretrained) != names:
        raise ValueError("pretrained and fresh params must have the same leaf names")
    leaves = [f if name.startswith(head) else p for name, p, f in zip(
        names, jax.tree.leaves(pretrained), jax.tree.leaves(fresh), strict=True)]
    return jax.tree.unflatten(jax.tree.structure(fresh), leaves)


def mask_distances(masks_a: Any, masks_b: Any, prunable: Any) -> dict[str, jax.Array]:
    """Hamming distance and IoU of two stacked masks ``[S, ...]``, per replicate ``[S]``.

    ``hamming`` (positions that differ, :func:`ltjax.core.masking.hamming`),
    ``hamming_share`` (over the prunable weights) and ``iou``
    (:func:`ltjax.core.masking.iou`); for the IMP masks of successive levels or
    rewind points (Frankle, Schwab & Morcos 2020, Section 3). Jittable.

    Example:
        >>> import numpy as np
        >>> from ltjax.studies import imp
        >>> level_1 = {"Dense_0": {"kernel": np.array([[[1, 1, 0, 0]], [[1, 1, 0, 0]]], bool)}}
        >>> level_2 = {"Dense_0": {"kernel": np.array([[[1, 0, 1, 0]], [[1, 1, 0, 0]]], bool)}}
        >>> d = imp.mask_distances(level_1, level_2, {"Dense_0": {"kernel": True}})  # S = 2
        >>> d["hamming"].tolist(), [round(float(iou), 3) for iou in d["iou"]]
        ([2, 0], [0.333, 1.0])
    """
    def one(a, b):
        hamming = masking.hamming(a, b, prunable)
        return {"hamming": hamming, "hamming_share": hamming / masking.num_prunable(a, prunable),
                "iou": masking.iou(a, b, prunable)}

    return jax.vmap(one)(masks_a, masks_b)


def check_pruning(config: Any, dataset: Any) -> None:
    """Trace one pruning step on the model's abstract params: bad settings fail before work.

    A ``layer_rates`` pattern that matches no prunable leaf, an ``include`` /
    ``exclude`` that selects nothing, or a bad fraction or scope raise here,
    not after the first level's training.
    """
    p = config.pruning
    model = common.build_model(config, dataset)
    abstract, _ = jax.eval_shape(lambda k: models.init(model, k, dataset.input_shape),
                                 jax.random.key(0))
    selection = masking.prunable(abstract, include=p.get("include") or None,
                                 exclude=p.get("exclude") or None)
    layer_rates = common.layer_rates(p, abstract, selection)
    try:
        jax.eval_shape(lambda params: pruning.prune(
            pruning.magnitude_scores(params), masking.ones_like(params), selection,
            fraction=p.fraction, scope=p.scope, layer_rates=layer_rates), abstract)
    except ValueError as err:  # pruning's own argument names: say they are config.pruning's
        raise ValueError(f"config.pruning: {err}") from None


@common.study_entry
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
      ``{'rows', 'std', 'num_replicates'}``: the mean rows of ``results.csv``,
      the std rows in the same order, and the number of replicates.

    Raises:
      ValueError: an unknown control, a rewind step at or past the end, a
        negative level count, bad pruning settings.
    """
    imp_spec = ImpSpec.from_config(config, progress=progress)
    run = imp_spec.run.open(workdir)
    levels = _Levels(imp_spec, run)
    segments = []  # (level, member tags, curves) of every trained segment: the table's rows
    correlations: dict = {}
    distance_rows: list[dict] = []
    previous = masks = None
    for level in range(imp_spec.levels + 1):
        names = ["imp"] + [c for c in imp_spec.controls if c != "small_dense"] * (level > 0)
        member_tags = levels.member_tags(names)
        level_name = f"level_{level:02d}"
        previous_masks, members = masks, None
        # A finished level is restored without computing its start (no programs built).
        done = run.finished(level_name, member_tags=member_tags)
        if done is not None:
            common.say(f"level {level}: finished, restored", progress)
            masks = levels.executor.shard(jax.tree.map(lambda x: x[:levels.rates * levels.num],
                                                       done.masks))
        else:
            masks = levels.next_masks(level, previous, masks)
            members, done = levels.train(level, names, member_tags, masks)
        segments.append((level, member_tags, done.curves))
        correlations.update(levels.correlations(level, names, member_tags, masks, done, members))
        if level > 0:
            distance_rows += levels.distance_rows(level, previous_masks, masks)
        previous = levels.executor.shard(jax.tree.map(lambda x: x[levels.own], done.state))
        if level == 0:
            levels.dense_final = previous
        if "small_dense" in imp_spec.controls and level > 0:
            segments.append(levels.small_dense(level, masks))
    return _write_outputs(imp_spec, run.workdir, segments, correlations, distance_rows)


class _Levels:
    """IMP's members level by level: which members train (every learning rate's block of
    replicates per branch), the step-k state, each level's ticket and controls as one
    program, and what each level adds to the side tables."""

    def __init__(self, imp_spec: ImpSpec, run: Any):
        spec = imp_spec.run
        self.imp_spec, self.run, self.executor = imp_spec, run, spec.executor
        self.num = num = spec.num_replicates
        self.keys = spec.replicate_keys()
        self.init_keys, self.noise_keys = spec.keys()
        self.splits = ["test"] + (["validation"] if spec.dataset.validation is not None else [])
        self.selection, self.static = imp_spec.prunable, tree.Static(imp_spec.prunable)
        sweep = imp_spec.learning_rates
        self.lrs = sweep or (None,)
        first = 0 if sweep is None else sweep.index(float(spec.recipe.learning_rate)) * num
        # 'own_rate': one IMP run per learning rate, each a block of num members (rate-major)
        # of every branch; otherwise one run, at the recipe's rate, its masks retrained at
        # each rate.
        self.rates = rates = (len(self.lrs) if sweep is not None
                              and imp_spec.ticket_masks == "own_rate" else 1)
        self.own = slice(first, first + num) if rates == 1 else slice(0, rates * num)  # imp's
        self.recipe_run = slice(0, num) if rates == 1 else slice(first, first + num)  # of runs
        self.dense_final = None  # level 0's trained tickets (the one-shot control's source)
        self._state_k = None

    def per_rate(self, x: Any) -> Any:
        """``x`` of ``num`` members, once per IMP run."""
        return x if self.rates == 1 else tree.concat([x] * self.rates)

    def member_tags(self, names: list[str]) -> list[dict]:
        return [{"branch": n, **({} if lr is None else {"learning_rate": lr}), "replicate": r}
                for n in names for lr in self.lrs for r in range(self.num)]

    def densities(self, masks: Any) -> np.ndarray:  # eager: a jitted division may round otherwise
        return np.asarray(distributed.host(jax.vmap(
            lambda m: masking.density(m, self.selection))(masks)))

    def state_k(self) -> Any:
        """The step-k state (computed only when a level must train)."""
        if self._state_k is None:
            imp_spec, run, executor, lrs = self.imp_spec, self.run, self.executor, self.lrs
            state = executor.init(self.init_keys)
            if imp_spec.pretrain is not None:
                state = _pretrain_on_altered_data(imp_spec, run, self.splits, state,
                                                  self.init_keys, self.noise_keys)
            if self.rates > 1:
                state = executor.shard(self.per_rate(state))
            if imp_spec.rewind_step > 0:
                run_tags = ([{"learning_rate": lr, "replicate": r} for lr in lrs
                             for r in range(self.num)] if self.rates > 1 else None)
                state = run.segment(
                    "pretrain", state=state, noise_keys=self.per_rate(self.noise_keys),
                    end=imp_spec.rewind_step, tags={"level": 0, "branch": "pretrain"},
                    member_tags=run_tags, splits=self.splits,
                    hparams=None if self.rates == 1 else optim.member_hparams(
                        run.spec.recipe, self.rates * self.num,
                        learning_rate=[lr for lr in lrs for _ in range(self.num)]),
                    desc="pretrain to the rewind step").state
            self._state_k = state
        return self._state_k

    def rewound(self, state_k: Any, masks: Any) -> Any:
        opt = None if self.imp_spec.rewind_optimizer else self.executor.fresh_opt_state(
            masking.apply(state_k.params, masks))
        return self.executor.shard(rewinding.rewind_state(state_k, masks, fresh_opt_state=opt))

    def next_masks(self, level: int, previous: Any, masks: Any) -> Any:
        """Level 0's all-True masks, else magnitude pruning of the previous level's tickets."""
        return self.executor.shard(
            masking.ones_like(self.state_k().params) if level == 0
            else _pruned(previous.params, masks, prunable=self.static,
                         prune_kw=tree.Static(self.imp_spec.prune_kw)))

    def members(self, level: int, names: list[str], masks: Any) -> tuple[Any, Any]:
        """The level's members (the IMP ticket and its controls) and their masks."""
        state_k, executor, selection = self.state_k(), self.executor, self.selection
        branches = [("imp", self.rewound(state_k, masks), masks)]
        for control in names[1:]:
            if control == "reinit":
                fresh = executor.init(self.per_rate(rng.stream(self.keys, "reinit")), masks)
                # schedule resumes at k, as OpenLTH's randomly_reinitialize
                branches.append((control, fresh.replace(step=state_k.step), masks))
            elif control in ("random_layerwise", "random_global"):
                scope = control.split("_")[1]
                level_keys = jax.vmap(lambda k, lv=level: jax.random.fold_in(k, lv))(
                    self.per_rate(rng.stream(self.keys, "random_prune")))
                cmasks = jax.vmap(
                    lambda k, m, s=scope: pruning.random_prune_like(k, m, selection, scope=s))(
                        level_keys, masks)
                branches.append((control, self.rewound(state_k, cmasks), cmasks))
            elif control == "oneshot":
                cmasks = jax.vmap(
                    lambda p_, m: pruning.prune_to_match(pruning.magnitude_scores(p_), m,
                                                         selection,
                                                         scope=self.imp_spec.prune_kw["scope"]))(
                        self.dense_final.params, masks)
                branches.append((control, self.rewound(state_k, cmasks), cmasks))
        repeat = len(self.lrs) // self.rates  # each branch's block once per rate
        return (executor.shard(tree.concat([b[1] for b in branches for _ in range(repeat)])),
                executor.shard(tree.concat([b[2] for b in branches for _ in range(repeat)])))

    def train(self, level: int, names: list[str], member_tags: list[dict],
              masks: Any) -> tuple[Any, Any]:
        """The level's start state and its trained segment: every branch as one program."""
        members, member_masks = self.members(level, names, masks)
        hparams = None if self.imp_spec.learning_rates is None else optim.member_hparams(
            self.run.spec.recipe, len(member_tags),
            learning_rate=[t["learning_rate"] for t in member_tags])
        done = self.run.segment(
            f"level_{level:02d}", state=members, masks=member_masks,
            noise_keys=jnp.concatenate([level_noise_keys(self.noise_keys, level, name,
                                                         self.imp_spec.sgd_noise)
                                        for name in names for _ in self.lrs]),
            tags={"level": level}, member_tags=member_tags,
            densities=self.densities(member_masks), hparams=hparams, splits=self.splits,
            desc=f"level {level} ({100 * self.densities(masks)[0]:.1f}%): {', '.join(names)}")
        return members, done

    def correlations(self, level: int, names: list[str], member_tags: list[dict], masks: Any,
                     done: Any, members: Any) -> dict:
        """Each member's weight correlation between its start and its trained weights."""
        corr = common.computed_once(  # a finished level's start is rebuilt only if missing
            self.run.workdir, f"correlation_level_{level:02d}",
            lambda: _correlations(
                (members if members is not None else self.members(level, names, masks)[0]
                 ).params, done.state.params, done.masks, prunable=self.static,
                p=self.imp_spec.correlation_p),
            like=jax.ShapeDtypeStruct((len(member_tags),), np.float32))
        return {(level, t["branch"], t.get("learning_rate"), t["replicate"]): float(corr[m])
                for m, t in enumerate(member_tags)}

    def distance_rows(self, level: int, previous_masks: Any, masks: Any) -> list[dict]:
        """The recipe rate's mask distances from the previous level, per replicate."""
        distance = distributed.host(_distances(previous_masks, masks, prunable=self.static))
        kept = self.densities(masks)[self.recipe_run]
        distance = {k: np.asarray(v)[self.recipe_run] for k, v in distance.items()}
        return [{"level": level, "previous_level": level - 1, "replicate": r,
                 "density": float(kept[r]), **{k: float(v[r]) for k, v in distance.items()}}
                for r in range(self.num)]

    def small_dense(self, level: int, masks: Any) -> tuple[int, list[dict], Any]:
        """The level's small dense control, as a segment of the table."""
        small = _run_small_dense(
            self.run, self.splits, self.keys, self.noise_keys,
            self.executor.shard(jax.tree.map(lambda x: x[self.recipe_run], masks)),
            self.selection, f"level_{level:02d}/small_dense",
            {"level": level, "branch": "small_dense"}, f"level {level} small_dense")
        return level, [{"branch": "small_dense", "replicate": r}
                       for r in range(self.num)], small.curves


def _write_outputs(imp_spec: ImpSpec, workdir: pathlib.Path, segments: list, correlations: dict,
                   distance_rows: list[dict]) -> dict:
    """``results.csv`` (mean/std), the mask distances, the ticket classes and the plots."""
    spec, num = imp_spec.run, imp_spec.run.num_replicates
    rows = _summary_rows(segments, correlations)
    swept = ("learning_rate",) if any("learning_rate" in r for r in rows) else ()
    table = results.write_table(workdir / "results.csv", rows, by=("level", "branch", *swept))
    if distance_rows:
        results.write_table(workdir / "mask_distance.csv", distance_rows,
                            by=("level", "previous_level"),
                            fields=("density", "hamming", "hamming_share", "iou"))
    if imp_spec.learning_rates is not None and imp_spec.levels > 0:
        results.write_csv(workdir / "ticket_classes.csv", _ticket_classes(
            rows, num, similar=imp_spec.ticket_similar))
    plots.plot_accuracy_vs_density(
        rows, workdir / "plots" / "accuracy_vs_density.png",
        title=f"IMP on {spec.model_name} / {plots.dataset_label(spec.dataset.name)}: "
              f"{num} replicates")
    plots.plot_level_curves(
        [r for level, member_tags, curves in segments
         for r in curves.records(member_tags, {"level": level}) if r["branch"] == "imp"],
        workdir / "plots" / "learning_curves_imp.png",
        title=f"IMP learning curves ({spec.model_name}, test accuracy, mean over replicates)",
    )
    return {**table, "num_replicates": num}


# A run's stacked programs, built once per selection and process (tree.Static).
@functools.partial(jax.jit, static_argnames=("prunable", "prune_kw"))
def _pruned(params: Any, masks: Any, *, prunable: tree.Static, prune_kw: tree.Static) -> Any:
    """The next level's masks ``[S]``: magnitude pruning of the trained ``params`` ``[S]``."""
    return jax.vmap(lambda p, m: pruning.prune(pruning.magnitude_scores(p), m, prunable.value,
                                               **prune_kw.value))(params, masks)


@functools.partial(jax.jit, static_argnames=("prunable", "p"))
def _correlations(start: Any, trained: Any, masks: Any, *, prunable: tree.Static,
                  p: float) -> jax.Array:
    return jax.vmap(lambda a, b, m: sanity.weight_correlation(
        a, b, prunable.value, p=p, masks=m))(start, trained, masks)


@functools.partial(jax.jit, static_argnames="prunable")
def _distances(masks_a: Any, masks_b: Any, *, prunable: tree.Static) -> dict[str, jax.Array]:
    return mask_distances(masks_a, masks_b, prunable.value)


def _pretrain_on_altered_data(imp_spec, run, splits, init_state, init_keys, noise_keys):
    """The dense net after ``config.pretrain`` on altered data, as step 0 of the real task.

    Trains a model of the altered data's classes (4 for rotation) from the
    replicates' init (same keys: every layer but a resized head starts as the
    unpretrained run's) with the noise stream ``'pretrain'``; resumable
    (``checkpoints/pretrain_altered``). Then a new head for rotation
    (:func:`with_fresh_head`), the step set to 0 and a fresh optimiser state.
    """
    executor, dataset, pretrain = run.spec.executor, run.spec.dataset, imp_spec.pretrain
    altered, steps, kind = pretrain.dataset, pretrain.steps, pretrain.kind
    pre_executor = executor.like(model=pretrain.model, dataset=altered)
    state = run.segment("pretrain_altered", state=pre_executor.init(init_keys),
                        noise_keys=rng.stream(noise_keys, "pretrain"), end=steps,
                        tags={"level": 0, "branch": "pretrain_altered", "pretext": kind},
                        splits=splits, executor=pre_executor,
                        desc=f"pretrain on altered data ({kind})").state
    params = state.params
    if altered.num_classes != dataset.num_classes:
        params = with_fresh_head(params, init_state.params, leading_axes=1)
    return executor.shard(init_state.replace(
        params=params, batch_stats=state.batch_stats,
        opt_state=executor.fresh_opt_state(params)))


def _run_small_dense(run, splits, keys, noise_keys, masks, selection, name, ctags,
                     desc) -> Any:
    """Train an MLP whose kernel count matches the level's kept weights, from scratch.

    Returns its :class:`ltjax.studies.runner.Segment` (restored when finished).
    """
    executor, dataset = run.spec.executor, run.spec.dataset
    first = jax.tree.map(lambda x: np.asarray(x[0]), distributed.host(masks))  # host: no compiles
    kept = sum(int(np.sum(m)) for m, s in zip(jax.tree.leaves(first), jax.tree.leaves(selection),
                                              strict=True) if s)
    total = masking.num_prunable(first, selection)
    widths = small_dense_widths(tuple(executor.model.widths),
                                input_size=int(np.prod(dataset.input_shape)),
                                num_classes=dataset.num_classes, target=kept)
    small = models.create("mlp", num_classes=dataset.num_classes, widths=widths)
    small_executor = executor.like(model=small, recipe=run.spec.recipe)
    num = int(keys.shape[0])
    count = masking.num_prunable(small_executor.abstract_params,
                                 masking.prunable(small_executor.abstract_params))
    # Restored, not rebuilt, when finished.
    return run.segment(name, state=lambda: small_executor.init(rng.stream(keys, "small_dense")),
                noise_keys=noise_keys, tags=ctags, densities=np.full(num, count / total),
                splits=splits, executor=small_executor, desc=f"{desc} {widths}")
