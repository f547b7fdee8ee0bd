"""Pruning at initialisation and its ablations, S replicates, every mask a member of one program.

Frankle, Dziugaite, Roy & Carbin 2021 ("Pruning Neural Networks at
Initialization: Why Are We Missing the Mark?", ICLR 2021) ask whether the
masks found at initialisation carry more than their per-layer densities. For
each method, density and ablation, replicate r's mask is computed from its
initialisation theta_0 and the masked net is trained from theta_0:

================ ============================================================
``magnitude``    ``|theta_0|`` (magnitude at init)
``snip``         ``|theta_0 * dL/dtheta|`` on ``score_examples`` training examples
``grasp``        ``theta_0 * Hg`` (logits / ``grasp_temperature``), prunable ``g``
``grasp_abs``    ``|theta_0 * Hg|`` (same ``Hg``), keep the highest: the
                 ``|GraSP|`` variant that the paper recommends over GraSP
``synflow``      iterative SynFlow, ``synflow_rounds`` rounds, data-free
``random``       uniform random scores, global (each layer about ``density``)
``oneshot_lth``  one-shot lottery ticket with rewinding to k = 0: the mask of
                 the magnitudes of the dense net trained to the end, trained
                 from theta_0 (older results, e.g.
                 ``docs/results/prune_at_init_lenet_mnist``, call it ``oneshot``)
``lr_rewinding`` magnitude pruning *after* training: the same mask on the
                 trained weights theta_T, retrained for the full budget with
                 the original learning-rate schedule from step 0 and a fresh
                 optimiser (Renda, Frankle & Carbin 2020's learning-rate
                 rewinding; the paper's post-training baseline)
``imp``          the IMP ticket of ``imp_workdir`` at the level nearest each density
``snip@random_labels``, ``grasp@random_labels``
                 SNIP / GraSP scored on the same batch with random labels
                 (Su et al. 2020's sanity check; :func:`ltjax.methods.sanity.corrupt_batch`)
``snip@random_pixels``, ``grasp@random_pixels``
                 ... with random labels and each image's pixels permuted
``smart_ratio``  Su et al. 2020's random ticket: a random mask of each layer
                 with the smart-ratio count (:func:`ltjax.core.pruning.smart_ratio_prune`,
                 layers in forward order, the output layer at 30 %), theta_0
================ ============================================================

All scores are taken in eval mode, in global scope (``config.scope``), with
exact counts and deterministic ties (:func:`ltjax.core.pruning.prune_to_density`;
the reference's ``kthvalue`` with ``<=`` prunes every tied weight). The
ablations (``config.ablations``):

============ ==================================================================
``none``     the mask as pruned, theta_0
``shuffle``  the mask shuffled within each layer (same per-layer counts), theta_0
``reinit``   the mask with a new initialisation (named stream ``reinit``)
``invert``   the lowest scores kept (score negation; SynFlow: in every round)
============ ==================================================================

``random``, ``lr_rewinding`` and Su et al.'s cells (``@`` and ``smart_ratio``)
have only ``none`` (``lr_rewinding``'s mask is ``oneshot_lth``'s, so its
reinit would be ``oneshot_lth``'s); ``invert``
is defined for the score-at-init methods (magnitude, SNIP, GraSP, ``|GraSP|``,
SynFlow), not for ``oneshot_lth`` or ``imp``. Inverted SynFlow negates the
scores in each of the ``synflow_rounds`` rounds before ranking
(:func:`ltjax.methods.saliency.synflow_prune` with ``invert=True``), as the reference
(``prune.py:prune_loop`` calls ``pruner.invert()`` every round): each round
keeps the lowest flow of the net that the previous round kept, which is not
the one-shot inversion of one score. The scoring
batch of replicate r is ``score_examples`` training examples drawn by its
named stream ``score_batch`` (the reference draws a random, not class-balanced,
subset of ``10 * classes`` examples). The corrupted batches are that batch,
corrupted by :func:`ltjax.methods.sanity.corrupt_batch` with replicate r's named
stream ``score_corruption`` (the labels drawn once, shared by both
corruptions); the reference draws a class-balanced batch of the corrupted
training set (10 per random label).

Every member of replicate r reads replicate r's data order (its ``noise``
key), so the methods differ only in their masks and initial weights. All
members of one density grid are one program (``config.densities`` x methods x
ablations x replicates), one checkpoint folder; the dense run that
``oneshot_lth`` and ``lr_rewinding`` prune is its own program.

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import prune_at_init_lenet_digits
    summary = run_prune_at_init(prune_at_init_lenet_digits.get_config("quick"), "/tmp/pai")
    summary["num_replicates"]        # 2
    summary["rows"]                  # results.csv's means per (method, density, ablation)
    ```

    The same run from a shell: ``python -m experiments.prune_at_init
    --config=experiments/configs/prune_at_init_lenet_digits.py:quick --workdir=/tmp/pai``.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import masking, pruning, rng, tree
from ltjax.engine import train
from ltjax.io import data, results
from ltjax.methods import saliency, sanity
from ltjax.studies import common, imp_runs, plots
from ltjax.studies.spec import RunSpec

# New methods go at the end: a method's index salts its shuffle ablation's key.
METHODS = ("magnitude", "snip", "grasp", "synflow", "random", "oneshot_lth", "imp",
           "lr_rewinding", "grasp_abs", "snip@random_labels", "snip@random_pixels",
           "grasp@random_labels", "grasp@random_pixels", "smart_ratio")
ABLATIONS = ("none", "shuffle", "reinit", "invert")
_INVERTIBLE = ("magnitude", "snip", "grasp", "grasp_abs", "synflow")
# Su et al. 2020's sanity checks: SNIP / GraSP scored on corrupted data, and random tickets.
_CORRUPTED = tuple(m for m in METHODS if "@" in m)
_NONE_ONLY = ("random", "lr_rewinding", *_CORRUPTED, "smart_ratio")


def ablations_of(method: str, ablations: tuple[str, ...]) -> tuple[str, ...]:
    """The ablations of ``ablations`` that are defined for ``method`` (see the module docstring).

    Example:
        >>> from ltjax.studies import prune_at_init
        >>> prune_at_init.ablations_of("random", ("none", "shuffle"))
        ('none',)
        >>> prune_at_init.ablations_of("synflow", ("none", "invert"))
        ('none', 'invert')
    """
    if method in _NONE_ONLY:
        return tuple(a for a in ablations if a == "none")
    return tuple(a for a in ablations if a != "invert" or method in _INVERTIBLE)


def _names_and_grid(config: Any) -> tuple[tuple[str, ...], tuple[str, ...], tuple[float, ...]]:
    """The methods, ablations and densities, checked with the scalar fields (no dataset)."""
    try:
        methods = common.names_of(config.methods, field="methods", allowed=METHODS)
    except ValueError as error:
        try:  # the only unknown name is the old one: say what it became
            common.names_of(config.methods, field="methods", allowed=(*METHODS, "oneshot"))
        except ValueError:
            raise error from None
        raise ValueError("config.methods: 'oneshot' is now 'oneshot_lth' (the one-shot ticket "
                         "reset to theta_0, k = 0); magnitude pruning after training is "
                         "'lr_rewinding'") from None
    ablations = common.names_of(config.ablations, field="ablations", allowed=ABLATIONS)
    if not methods:
        raise ValueError("config.methods must name at least one method")
    if "none" not in ablations:
        raise ValueError(f"config.ablations must include 'none', got {ablations}")
    densities = tuple(float(d) for d in (config.densities or ()))
    if not densities or any(not 0.0 < d <= 1.0 for d in densities):
        raise ValueError(f"config.densities must be numbers in (0, 1], got {config.densities!r}")
    if len(set(densities)) != len(densities):
        raise ValueError(f"config.densities has duplicates: {densities}")
    if not isinstance(config.score_examples, int) or config.score_examples < 1:
        raise ValueError(f"config.score_examples must be an int >= 1, got "
                         f"{config.score_examples!r}")
    if (not isinstance(config.synflow_rounds, int) or isinstance(config.synflow_rounds, bool)
            or config.synflow_rounds < 1):
        raise ValueError(f"config.synflow_rounds must be an int >= 1, got "
                         f"{config.synflow_rounds!r}")
    if not config.grasp_temperature > 0:
        raise ValueError(f"config.grasp_temperature must be > 0, got {config.grasp_temperature}")
    if config.scope not in pruning.SCOPES:
        raise ValueError(f"config.scope must be one of {pruning.SCOPES}, got {config.scope!r}")
    if "smart_ratio" in methods and config.scope != "global":
        raise ValueError("method 'smart_ratio' sets its own layer densities: it needs "
                         f"config.scope='global', got {config.scope!r}")
    if ("imp" in methods) != bool(config.get("imp_workdir")):
        raise ValueError("method 'imp' needs config.imp_workdir (an IMP run of the same seed, "
                         "model and dataset), and imp_workdir needs method 'imp'")
    return methods, ablations, densities


@dataclasses.dataclass(frozen=True)
class PruneAtInitSpec:
    """A pruning-at-initialisation study, parsed and checked once at its entry.

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`).
      methods: the pruning methods (:data:`METHODS`), in the config's order.
      ablations: the ablations (:data:`ABLATIONS`), ``'none'`` among them.
      densities: the target densities, each in (0, 1], no duplicates.
      score_examples: the training examples SNIP and GraSP score on.
      synflow_rounds: SynFlow's pruning rounds.
      grasp_temperature: GraSP's logit temperature.
      scope: ``'global'`` or ``'layerwise'`` (:data:`ltjax.core.pruning.SCOPES`).
      imp_workdir: the finished IMP run method ``'imp'`` reads its tickets from
        (checked compatible), else None.
      imp_masks: per target density, the masks ``[S]`` of that run's level nearest to it
        (each within half a pruning step), else None.
      prunable: the pruned leaves (the model's prunable kernels).
      smart_layers: the prunable layers in forward order for ``'smart_ratio'``
        (every density checked reachable), else None.

    Example:
        The spec of the digits quick config, before any workdir exists:

        >>> from experiments.configs import prune_at_init_lenet_digits
        >>> from ltjax.studies.prune_at_init import PruneAtInitSpec
        >>> spec = PruneAtInitSpec.from_config(prune_at_init_lenet_digits.get_config("quick"),
        ...                                    progress=False)
        >>> len(spec.methods), spec.ablations, spec.densities
        (13, ('none', 'shuffle', 'reinit', 'invert'), (0.1,))
        >>> spec.smart_layers    # smart_ratio's layers in forward order
        ('Dense_0/kernel', 'Dense_1/kernel', 'Dense_2/kernel')
    """

    run: RunSpec
    methods: tuple[str, ...]
    ablations: tuple[str, ...]
    densities: tuple[float, ...]
    score_examples: int
    synflow_rounds: int
    grasp_temperature: float
    scope: str
    imp_workdir: str | None
    imp_masks: dict[float, Any] | None
    prunable: Any
    smart_layers: tuple[str, ...] | None

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> PruneAtInitSpec:
        """Parse and check ``config``; nothing is written.

        Raises:
          ValueError: unknown methods or ablations (the former ``oneshot`` is named
            with its new name ``oneshot_lth``), densities outside (0, 1] (for
            ``smart_ratio``: outside the range its ratios reach on the model),
            ``score_examples`` or ``synflow_rounds`` below 1, method ``imp``
            without a compatible ``imp_workdir``.
        """
        methods, ablations, densities = _names_and_grid(config)
        imp_workdir = config.get("imp_workdir") or None

        def check(dataset) -> None:
            if config.score_examples > len(dataset.train):
                raise ValueError(f"config.score_examples={config.score_examples} is more than "
                                 f"the {len(dataset.train)} training examples")
            if imp_workdir is not None:  # the IMP run's inits and levels, before the workdir
                imp_runs.check_imp_compatible(config, imp_workdir)
                imp_runs.check_imp_finished(imp_workdir, dataset)

        run = RunSpec.from_config(config, check=check, progress=progress)
        abstract = run.executor.abstract_state.params
        selection, imp_masks = masking.prunable(abstract), None
        if imp_workdir is not None:  # the tickets, read (not trained) before the workdir
            imp_masks = _imp_level_masks(imp_workdir, densities, jax.tree.map(
                lambda x: jnp.ones((run.num_replicates, *x.shape), bool), abstract), selection)
        return cls(run=run, methods=methods, ablations=ablations, densities=densities,
                   score_examples=config.score_examples, synflow_rounds=config.synflow_rounds,
                   grasp_temperature=config.grasp_temperature, scope=config.scope,
                   imp_workdir=imp_workdir, imp_masks=imp_masks, prunable=selection,
                   smart_layers=(_smart_ratio_layers(run, densities)
                                 if "smart_ratio" in methods else None))


def _loss(model: Any, params: Any, batch_stats: Any, x: jax.Array, y: jax.Array,
          temperature: float) -> jax.Array:
    """Mean cross-entropy of the eval-mode logits divided by ``temperature``."""
    logits = train.logits(model, params, batch_stats, x, train=False)
    return jnp.mean(train.cross_entropy(logits / temperature, y))


def _imp_level_masks(imp_workdir: str, densities: tuple[float, ...], like_masks: Any,
                     selection: Any) -> dict[float, Any]:
    """Per target density: the masks ``[S]`` of the IMP level nearest to it (log scale).

    The IMP run must be finished (:func:`ltjax.studies.imp_runs.check_imp_finished`,
    checked before the workdir is written). Its levels' densities are a grid of
    ratio about ``1 - fraction``; a target density farther from its nearest level
    than half the grid's largest step (in log density) is refused, so no row
    trains a ticket of another density than it names.

    Raises:
      ValueError: a target density has no IMP level within that tolerance.
    """
    root = pathlib.Path(imp_workdir) / "checkpoints"
    levels = sorted(int(p.name.split("_")[1]) for p in root.glob("level_*"))
    found = [(float(masking.density(jax.tree.map(lambda x: x[0], masks), selection)), masks)
             for masks in (imp_runs.load_imp_masks(imp_workdir, level, like_masks)
                           for level in levels)]
    logs = np.log([f[0] for f in found])
    tolerance = (np.abs(np.diff(logs)).max() / 2 if len(found) > 1 else 0.0) + 1e-6
    out = {}
    for d in densities:
        distance, index = min((abs(log_d - np.log(d)), i) for i, log_d in enumerate(logs))
        if distance > tolerance:
            raise ValueError(
                f"config.densities has {d:g}, but the IMP run in "
                f"imp_workdir={imp_workdir!r} has levels at densities "
                f"{[round(f[0], 4) for f in found]}: the nearest ({found[index][0]:.4g}) is "
                f"more than half a pruning step away; run IMP to more levels or drop {d:g}")
        out[d] = found[index][1]
    return out


@common.study_entry
def run_prune_at_init(config: Any, workdir: str | pathlib.Path, *,
                      progress: bool = True) -> dict:
    """Prune at initialisation by every method, ablate the masks, train them; resumable.

    Writes into ``workdir``: ``config.json``, ``metrics.jsonl``,
    ``results.csv`` (per method, density, ablation and replicate: the final
    test accuracy and loss and the mask's actual density; mean and std rows;
    the dense net as method ``dense``), ``layer_densities.csv`` (per method,
    density, ablation, replicate and prunable layer), ``plots/prune_at_init.png``
    and ``checkpoints/`` (``dense/`` and ``pruned/``).

    Args:
      config: a ConfigDict as in ``experiments/configs/prune_at_init_lenet_mnist.py``.
      workdir: the output folder.
      progress: show progress bars.

    Returns:
      ``{'rows', 'std', 'num_replicates'}``: the mean rows of ``results.csv``,
      the std rows in the same order, and the number of replicates.

    Raises:
      ValueError: unknown methods or ablations (the former ``oneshot`` is named
        with its new name ``oneshot_lth``), densities outside (0, 1] (for
        ``smart_ratio``: outside the range its ratios reach on the model),
        ``score_examples`` or ``synflow_rounds`` below 1, method ``imp``
        without a compatible ``imp_workdir`` (all before any work).
    """
    pai = PruneAtInitSpec.from_config(config, progress=progress)
    spec = pai.run
    run = spec.open(workdir)
    workdir, dataset, executor = run.workdir, spec.dataset, spec.executor
    num = spec.num_replicates
    keys = spec.replicate_keys()
    init_keys, noise_keys = spec.keys()
    selection = pai.prunable

    state0 = executor.init(init_keys)
    params0 = state0.params
    batch_stats0 = state0.batch_stats
    rows: list[dict] = []

    # The dense net: the source of oneshot_lth and lr_rewinding, and the reference accuracy.
    dense = run.segment("dense", state=state0, noise_keys=noise_keys,
                        tags=common.member_tags_of([{"method": "dense", "density": 1.0,
                                                     "ablation": "none"}])[0],
                        desc=f"dense x{num}")
    dense_eval, dense = dense.curves.final_metrics("test"), dense.state
    rows += [{"method": "dense", "density": 1.0, "ablation": "none", "replicate": r,
              "kept_density": 1.0, "test_accuracy": float(dense_eval["accuracy"][r]),
              "test_loss": float(dense_eval["loss"][r])} for r in range(num)]

    scores = _scores(pai, keys, state0, dense.params, progress)
    make = _Masks(pai, keys, params0, batch_stats0, scores)
    # Every (density, method, ablation) x replicate is a member: masks and start params.
    member_tags, member_masks, member_sources, layer_rows = _members(pai, make, progress)
    reinit_params = executor.init(rng.stream(keys, "reinit")).params
    stacked_masks = executor.shard(tree.concat(member_masks))
    members = _member_starts(executor, state0, reinit_params, dense, stacked_masks,
                             member_sources)
    replicate_of = np.array([t["replicate"] for t in member_tags])
    kept = np.asarray(jax.vmap(lambda m: masking.density(m, selection))(stacked_masks))
    final = run.segment("pruned", state=executor.shard(members), masks=stacked_masks,
                        noise_keys=noise_keys[replicate_of],
                        member_tags=common.member_tags_of(member_tags), densities=kept,
                        desc=f"{len(member_tags)} pruned members")
    metrics, final = final.curves.final_metrics("test"), final.state
    rows += [{**tag, "kept_density": float(kept[m]),
              "test_accuracy": float(metrics["accuracy"][m]),
              "test_loss": float(metrics["loss"][m])} for m, tag in enumerate(member_tags)]
    table = results.write_table(workdir / "results.csv", rows, by=("method", "density", "ablation"),
                                fields=("kept_density", "test_accuracy", "test_loss"))
    results.write_csv(workdir / "layer_densities.csv", layer_rows)
    plots.plot_prune_at_init(
        rows, workdir / "plots" / "prune_at_init.png",
        title=f"Pruning at init, {spec.model_name} on {plots.dataset_label(dataset.name)}: "
              f"{num} replicates")
    return {**table, "num_replicates": num}


def _members(pai: PruneAtInitSpec, make: _Masks,
             progress: bool) -> tuple[list[dict], list[Any], list[str], list[dict]]:
    """Every (density, method, ablation)'s masks ``[S]``: the members' tags, their masks,
    where each starts (``'init'``, ``'reinit'``, ``'trained'``) and the layer densities."""
    num = pai.run.num_replicates
    member_tags, member_masks, member_sources, layer_rows = [], [], [], []
    for d_index, density in enumerate(pai.densities):
        for method in pai.methods:
            with common.timed(f"{method} masks at {100 * density:g} % density x{num}",
                              progress):
                masks = jax.block_until_ready(make.base(method, d_index, density))
            for ablation in ablations_of(method, pai.ablations):
                amasks = make.ablated(masks, method, ablation, d_index, density)
                member_masks.append(amasks)
                member_sources.append("reinit" if ablation == "reinit" else
                                      "trained" if method == "lr_rewinding" else "init")
                member_tags += [{"method": method, "density": density, "ablation": ablation,
                                 "replicate": r} for r in range(num)]
                layer_rows += _layer_densities(amasks, pai.prunable, method, density, ablation)
    return member_tags, member_masks, member_sources, layer_rows


def _member_starts(executor: Any, state0: Any, reinit_params: Any, dense: Any,
                   stacked_masks: Any, member_sources: list[str]) -> Any:
    """The members' start states: at step 0 with a fresh optimiser, from theta_0, a new init,
    or (lr_rewinding) the trained theta_T with its batch statistics, the schedule rewound."""
    params0, batch_stats0 = state0.params, state0.batch_stats
    start_params = {"init": params0, "reinit": reinit_params, "trained": dense.params}
    start_stats = {"init": batch_stats0, "reinit": batch_stats0, "trained": dense.batch_stats}
    start = executor.shard(tree.concat([start_params[s] for s in member_sources]))
    start = masking.apply(start, stacked_masks)
    num_members = len(member_sources) * state0.step.shape[0]  # a block of S per source
    return state0.replace(
        step=jnp.zeros(num_members, jnp.int32), params=start,
        batch_stats=tree.concat([start_stats[s] for s in member_sources]),
        opt_state=executor.fresh_opt_state(start))


def _scores(pai: PruneAtInitSpec, keys: jax.Array, state0: Any, dense_params: Any,
            progress: bool) -> dict[str, Any]:
    """Every score-based method's scores ``[S]``: at initialisation in eval mode (magnitude,
    SNIP, GraSP, ``|GraSP|``; SNIP and GraSP on the corrupted batches too), and the dense
    net's trained magnitudes (``oneshot_lth``, ``lr_rewinding``)."""
    run = pai.run
    dataset, model, num = run.dataset, run.executor.model, run.num_replicates
    selection = pai.prunable
    params0, batch_stats0 = state0.params, state0.batch_stats
    batch_index = np.asarray(jax.vmap(lambda k: jax.random.choice(
        k, len(dataset.train), (pai.score_examples,), replace=False))(
            rng.stream(keys, "score_batch")))
    score_x, score_y = dataset.train.x[batch_index], dataset.train.y[batch_index]

    @jax.jit
    def scores_at_init(params, batch_stats, x, y):
        def one(p, b, xb, yb):
            xb = data.normalize(xb, dataset.mean, dataset.std)
            snip = saliency.snip_scores(lambda q: _loss(model, q, b, xb, yb, 1.0), p)
            grasp = saliency.grasp_scores(
                lambda q: _loss(model, q, b, xb, yb, pai.grasp_temperature), p,
                prunable=selection)
            return {"magnitude": pruning.magnitude_scores(p), "snip": snip, "grasp": grasp,
                    "grasp_abs": jax.tree.map(jnp.abs, grasp)}
        return jax.vmap(one)(params, batch_stats, x, y)

    with common.timed(f"scores at init (magnitude, SNIP, GraSP, |GraSP|) on "
                      f"{pai.score_examples} examples x{num}", progress):
        scores = jax.block_until_ready(scores_at_init(params0, batch_stats0, score_x, score_y))
    # Su et al. 2020: the same batch corrupted, scored by the same program.
    for corruption in dict.fromkeys(m.split("@")[1] for m in pai.methods if m in _CORRUPTED):
        bad_x, bad_y = jax.vmap(functools.partial(
            sanity.corrupt_batch, corruption=corruption, num_classes=dataset.num_classes))(
                rng.stream(keys, "score_corruption"), score_x, score_y)
        with common.timed(f"scores at init on {corruption.replace('_', ' ')} (SNIP, GraSP) "
                          f"x{num}", progress):
            bad = jax.block_until_ready(scores_at_init(params0, batch_stats0, bad_x, bad_y))
        scores |= {f"{m}@{corruption}": bad[m] for m in ("snip", "grasp")}
    # After training: one mask, from theta_0 (the one-shot ticket) or theta_T (LR rewinding).
    scores["oneshot_lth"] = jax.vmap(pruning.magnitude_scores)(dense_params)
    scores["lr_rewinding"] = scores["oneshot_lth"]
    return scores


class _Masks:
    """The replicate-stacked masks ``[S]`` of each method, density and ablation."""

    def __init__(self, pai: PruneAtInitSpec, keys: jax.Array, params0: Any,
                 batch_stats0: Any, scores: dict[str, Any]):
        run = pai.run
        self.pai, self.keys, self.params0, self.scores = pai, keys, params0, scores
        self.selection = selection = pai.prunable
        ones = jnp.ones((1, *run.dataset.input_shape), jnp.float32)
        self.synflow_forward = [
            _synflow_forward(run.executor.model, jax.tree.map(lambda x, r=r: jnp.abs(x[r]),
                                                              batch_stats0), ones)
            for r in range(run.num_replicates)]

        @functools.partial(jax.jit, static_argnames=("density",))
        def prune_all(stacked_scores, density):
            return jax.vmap(lambda s: pruning.prune_to_density(
                s, selection, density=density, scope=pai.scope))(stacked_scores)

        @jax.jit
        def shuffled(key, masks):
            return jax.vmap(lambda k, m: pruning.random_prune_like(
                k, m, selection, scope="layerwise"))(key, masks)

        @functools.partial(jax.jit, static_argnames=("density",))
        def smart_ratio_masks(level_keys, density):
            one = jax.tree.map(lambda x: x[0], params0)
            return jax.vmap(lambda k: pruning.smart_ratio_prune(
                k, one, selection, density=density, layers=pai.smart_layers))(level_keys)

        self.prune_all, self.shuffled, self.smart_ratio_masks = (
            prune_all, shuffled, smart_ratio_masks)

    def synflow(self, density: float, invert: bool) -> Any:
        """Iterative SynFlow masks (``invert``: every round inverted)."""
        return tree.stack([
            saliency.synflow_prune(forward, jax.tree.map(lambda x, r=r: x[r], self.params0),
                                   self.selection, density=density,
                                   rounds=self.pai.synflow_rounds, scope=self.pai.scope,
                                   invert=invert)
            for r, forward in enumerate(self.synflow_forward)])

    def base(self, method: str, d_index: int, density: float) -> Any:
        """The masks of one method at one density (the ``'none'`` ablation)."""
        if method in self.scores:
            return self.prune_all(self.scores[method], density)
        if method == "smart_ratio":
            return self.smart_ratio_masks(jax.vmap(lambda k: jax.random.fold_in(k, d_index))(
                rng.stream(self.keys, "smart_ratio")), density)
        if method == "random":
            level_keys = jax.vmap(lambda k: jax.random.fold_in(k, d_index))(
                rng.stream(self.keys, "random_prune"))
            return self.prune_all(jax.vmap(pruning.random_scores)(level_keys, self.params0),
                                  density)
        if method == "synflow":
            return self.synflow(density, invert=False)
        return jax.tree.map(jnp.asarray, self.pai.imp_masks[density])

    def ablated(self, masks: Any, method: str, ablation: str, d_index: int,
                density: float) -> Any:
        """``masks`` (the method's at ``density``) under ``ablation``."""
        if ablation == "shuffle":
            salt = 1000 * METHODS.index(method) + d_index
            return self.shuffled(jax.vmap(lambda k: jax.random.fold_in(k, salt))(
                rng.stream(self.keys, "shuffle")), masks)
        if ablation == "invert" and method == "synflow":
            return self.synflow(density, invert=True)
        if ablation == "invert":
            return self.prune_all(pruning.inverted_scores(self.scores[method]), density)
        return masks


def _smart_ratio_layers(run: RunSpec, densities: tuple[float, ...]) -> tuple[str, ...]:
    """The model's prunable layers in forward order, every density checked reachable.

    Raises:
      ValueError: a density outside the smart ratio's range (names ``config.densities``).
    """
    executor = run.executor
    params, stats = executor.abstract_state.params, executor.abstract_state.batch_stats
    stats = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats)
    selection = masking.prunable(params)
    ones = jnp.ones((1, *run.dataset.input_shape), jnp.float32)
    layers = pruning.forward_order(
        lambda p: train.logits(executor.model, p, stats, ones, train=False), params, selection)
    sizes = dict(zip(tree.names(params), (int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
                     strict=True))
    for d in densities:
        try:
            pruning.smart_ratio_densities([sizes[n] for n in layers], d)
        except ValueError as error:
            raise ValueError(f"config.densities has {d:g}, which method 'smart_ratio' cannot "
                             f"reach on {run.model_name}: {error}") from None
    return layers


def _synflow_forward(model: Any, abs_batch_stats: Any, ones: jax.Array):
    """``params -> logits`` on an all-ones input in eval mode, BN statistics abs'ed (reference)."""
    def forward(params):
        stats = jax.tree.map(lambda s, p=params: s.astype(jax.tree.leaves(p)[0].dtype),
                             abs_batch_stats)
        return train.logits(model, params, stats, ones.astype(jax.tree.leaves(params)[0].dtype),
                            train=False)
    return forward


def _layer_densities(masks: Any, selection: Any, method: str, density: float,
                     ablation: str) -> list[dict]:
    names = [n for n, s in zip(tree.names(selection), jax.tree.leaves(selection), strict=True)
             if s]
    leaves = [np.asarray(m) for m, s in zip(jax.tree.leaves(masks), jax.tree.leaves(selection),
                                            strict=True) if s]
    return [{"method": method, "density": density, "ablation": ablation, "replicate": r,
             "layer": name, "layer_density": float(leaf[r].mean())}
            for r in range(leaves[0].shape[0]) for name, leaf in zip(names, leaves, strict=True)]
