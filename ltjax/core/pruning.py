"""Pruning: scores, and masks that remove the lowest-scoring weights.

The semantics are the lottery-ticket papers' (Frankle & Carbin 2019;
Frankle et al. 2020), checked against OpenLTH's ``sparse_global`` strategy:

- :func:`prune` removes exactly ``ceil(fraction * remaining)`` of the
  remaining (unmasked) prunable weights in scope, lowest scores first, ties
  broken by position (earlier leaf in tree order, then lower flat index,
  removed first). Scope ``'global'`` ranks all prunable weights together;
  ``'layerwise'`` prunes each layer by its own count. ``layer_rates``
  overrides the fraction for layers whose path matches a regex; those layers
  are pruned on their own (the original LTH code pruned the output layer at
  half the rate of the others).
- :func:`prune_to_density`: one-shot pruning to a target density.
- :func:`random_prune_like`: random pruning that keeps each layer's count
  (``'layerwise'``, OpenLTH's ``randomly_prune`` branch) or only the total
  count (``'global'``), the controls of Frankle et al. 2021 / Ma et al. 2021.
- :func:`inverted_scores`: negated scores, so pruning keeps the lowest (the
  inversion ablation of Frankle et al. 2021).

Differences from OpenLTH's ``sparse_global``, on purpose: it computes the
threshold as ``sorted(|w|)[k]`` and keeps only ``|w| > threshold``, which
removes ``k + 1`` weights (more on ties), and it counts the remaining weights
of ignored layers in ``k``. Here exactly ``k`` are removed and ``k`` counts
only the weights in scope. ``ceil`` is exact: the fraction is read by
:func:`ltjax.core.topk.rational` (a float as the decimal typed, 0.2 as 1/5; a
:class:`fractions.Fraction` as it is), and OpenLTH's float product can round
up one more. Counts and rankings are :mod:`ltjax.core.topk`'s
(:func:`ltjax.core.topk.count`, :func:`ltjax.core.topk.masks`).

All functions are jittable and vmappable over a replicate axis (``prunable``
is static, bound by closure) and take plain pytrees.

Example:
    >>> import jax.numpy as jnp
    >>> from ltjax.core import masking, pruning
    >>> params = {"Dense_0": {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.zeros(2)},
    ...           "Dense_1": {"kernel": jnp.arange(4.0).reshape(2, 2) - 2, "bias": jnp.zeros(2)}}
    >>> selection = masking.prunable(params)
    >>> masks = pruning.prune(pruning.magnitude_scores(params), masking.ones_like(params),
    ...                       selection, fraction=0.2)      # the 2 zeros of 10 weights go
    >>> masking.counts(masks, selection)                     # (kept, total) per layer
    {'Dense_0/kernel': (5, 6), 'Dense_1/kernel': (3, 4)}
"""

from __future__ import annotations

import fractions
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import masking, topk, tree

PyTree = Any
SCOPES = ("global", "layerwise")
#: Named per-layer rate presets of :func:`preset_rates`.
PRESETS = ("conv10_fc20",)


def magnitude_scores(params: PyTree) -> PyTree:
    """``|w|`` for every leaf: the score of magnitude pruning."""
    return jax.tree.map(jnp.abs, params)


def random_scores(key: jax.Array, params: PyTree) -> PyTree:
    """Uniform random scores, one independent draw per leaf (from ``fold_in(key, i)``)."""
    leaves, treedef = jax.tree.flatten(params)
    return treedef.unflatten([
        jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(x)) for i, x in enumerate(leaves)
    ])


def inverted_scores(scores: PyTree) -> PyTree:
    """Negated scores: pruning them keeps the *lowest* original scores.

    The inversion ablation of Frankle, Dziugaite, Roy & Carbin 2021 ("Pruning
    Neural Networks at Initialization: Why Are We Missing the Mark?", ICLR
    2021). Their reference (ganguli-lab/Synaptic-Flow, ``Pruner.invert``)
    computes ``v / v**2 = 1 / v`` instead, which reverses the ranking only
    when all scores are positive: for signed scores such as GraSP's it keeps
    the negative scores nearest zero, not the lowest. Negation is exact in
    floating point, so equal scores stay equal (ties are still broken by
    position), and ``-inf`` (a zero SynFlow log score) becomes the highest.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import pruning
        >>> scores = pruning.magnitude_scores({"w": jnp.array([[3.0, -1.0], [0.5, 2.0]])})
        >>> pruning.prune_to_density(pruning.inverted_scores(scores), {"w": True},
        ...                          density=0.5)["w"]         # keeps the smallest
        Array([[False,  True],
               [ True, False]], dtype=bool)
    """
    return jax.tree.map(jnp.negative, scores)


def _check_fraction(fraction: float, name: str = "fraction") -> fractions.Fraction:
    """A share in [0, 1) as an exact fraction (:func:`ltjax.core.topk.rational`)."""
    topk.check_share(fraction, name=name, zero=True, one=False)
    return topk.rational(fraction)


def _check_density(density: Any) -> float:
    """A kept share in (0, 1] as a float (:func:`ltjax.core.topk.check_share`)."""
    return topk.check_share(density, name="density")


def _check_scores(scores: PyTree, prunable: PyTree) -> None:
    """No NaN in the ranked (prunable) leaves: NaN has no rank, pruning would go by position.

    ``-inf`` / ``+inf`` are ordered and allowed (SynFlow's log scores of zero
    and their inversion). Skipped on tracers.
    """
    tree.check_finite(scores, name="scores", allow_inf=True, selection=prunable)


def _keep_highest(scores: list, alive: list, kept: Any) -> list:
    """The ``kept`` highest-scoring alive entries of a group of leaves, ranked together.

    Ties: the later position (leaf order, then flat index) is kept, i.e. among
    equal scores the earlier one is removed first. Scores rank as float32.
    """
    return topk.masks([jnp.asarray(s) for s in scores], kept, ties="last",
                      alive=[jnp.asarray(a) for a in alive])


def _groups(
    names: list[str], selected: list[bool], *, scope: str, fraction: fractions.Fraction,
    layer_rates: Mapping[str, float] | None,
) -> list[tuple[list[int], fractions.Fraction]]:
    """Leaf indices pruned together, with their rate."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    rates: dict[int, fractions.Fraction] = {}
    for pattern, rate in (layer_rates or {}).items():
        matched = [i for i, n in enumerate(names) if selected[i] and re.search(pattern, n)]
        if not matched:
            raise ValueError(
                f"layer_rates pattern {pattern!r} matches no prunable leaf; prunable are "
                f"{[n for n, s in zip(names, selected, strict=True) if s]}"
            )
        for i in matched:
            rates[i] = _check_fraction(rate, f"layer_rates[{pattern!r}]")
    groups = [([i], rate) for i, rate in sorted(rates.items())]
    rest = [i for i, s in enumerate(selected) if s and i not in rates]
    if scope == "layerwise":
        groups += [([i], fraction) for i in rest]
    elif rest:
        groups.append((rest, fraction))
    return groups


def preset_rates(params: PyTree, prunable: PyTree, *, preset: str) -> dict[str, float]:
    """Per-layer rates of a named preset, as exact ``layer_rates`` patterns.

    ``'conv10_fc20'``: every prunable conv kernel (4-D) at 10 % per level and
    every prunable dense kernel (2-D) at 20 %, each layer pruned on its own:
    the rates of Frankle & Carbin 2019's Conv-2/4/6 (Figure 2; the paper
    prunes their output layer at 10 %, which ``layer_rates`` adds on top,
    e.g. the studies' ``'@output:0.1'``). OpenLTH's ``sparse_global`` has no
    per-layer rates: its CIFAR defaults prune 20 % globally and leave the
    output layer dense (``pruning_layers_to_ignore='fc.weight'``), which is
    ``scope='global'`` with the output layer excluded, not this preset.

    Args:
      params: the params tree (arrays or ``jax.ShapeDtypeStruct``), unstacked.
      prunable: static bool tree from :func:`ltjax.core.masking.prunable`.
      preset: one of :data:`PRESETS`, or ``''`` (no preset: ``{}``).

    Returns:
      ``{'^<leaf name>$': rate}`` for :func:`prune`'s ``layer_rates``; leaves
      of other ranks are left to the level's ``fraction``.

    Raises:
      ValueError: an unknown preset.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import masking, pruning
        >>> params = {"Conv_0": {"kernel": jnp.ones((3, 3, 1, 4))},
        ...           "Dense_0": {"kernel": jnp.ones((4, 2))}}
        >>> pruning.preset_rates(params, masking.prunable(params), preset="conv10_fc20")
        {'^Conv_0/kernel$': 0.1, '^Dense_0/kernel$': 0.2}
    """
    if not preset:
        return {}
    if preset not in PRESETS:
        raise ValueError(f"unknown pruning preset {preset!r}; presets: {', '.join(PRESETS)}")
    by_rank = {4: 0.1, 2: 0.2}
    rates = {}
    for name, leaf, selected in zip(tree.names(params), jax.tree.leaves(params),
                                    jax.tree.leaves(prunable), strict=True):
        rate = by_rank.get(len(leaf.shape if hasattr(leaf, "shape") else np.shape(leaf)))
        if selected and rate is not None:
            rates[f"^{re.escape(name)}$"] = rate
    return rates


def prune(
    scores: PyTree, masks: PyTree, prunable: PyTree, *, fraction: float, scope: str = "global",
    layer_rates: Mapping[str, float] | None = None,
) -> PyTree:
    """One pruning level: remove ``ceil(fraction * remaining)`` lowest-scoring weights.

    Args:
      scores: per-weight scores (e.g. :func:`magnitude_scores` of the trained params).
      masks: the current masks (bool, structure of ``scores``).
      prunable: static bool tree from :func:`ltjax.core.masking.prunable`.
      fraction: share of the *remaining* weights of each group to remove, in [0, 1).
      scope: ``'global'`` (one ranking over all prunable layers) or ``'layerwise'``.
      layer_rates: ``{regex: rate}``; matching layers are pruned on their own at
        that rate (e.g. ``{'Dense_2': 0.1}`` for LeNet's output layer).

    Returns:
      New masks; leaves outside ``prunable`` are returned unchanged.

    Raises:
      ValueError: masks not bool or not of the scores' shapes, NaN scores in
        a prunable leaf (named; checked when concrete), a bad fraction or scope.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import masking, pruning
        >>> params = {"Dense_0": {"kernel": jnp.arange(6.0).reshape(3, 2)},
        ...           "Dense_1": {"kernel": jnp.arange(4.0).reshape(2, 2) - 2}}
        >>> selection = masking.prunable(params)
        >>> masks = pruning.prune(pruning.magnitude_scores(params), masking.ones_like(params),
        ...                       selection, fraction=0.2, scope="layerwise",
        ...                       layer_rates={"Dense_1": 0.5})
        >>> masking.counts(masks, selection)
        {'Dense_0/kernel': (4, 6), 'Dense_1/kernel': (2, 4)}
    """
    rate = _check_fraction(fraction)
    masking.check(masks, scores, reference_name="scores")  # structure, shapes, bool leaves
    names = tree.names(masks)
    score_leaves = jax.tree.leaves(scores)
    mask_leaves, treedef = jax.tree.flatten(masks)
    selected = jax.tree.leaves(prunable)
    if len(selected) != len(mask_leaves):
        raise ValueError("prunable must have the structure of masks (masking.prunable(params))")
    _check_scores(scores, prunable)
    out = list(mask_leaves)
    for indices, group_rate in _groups(names, selected, scope=scope, fraction=rate,
                                       layer_rates=layer_rates):
        alive = [mask_leaves[i] for i in indices]
        remaining = sum(jnp.sum(a, dtype=jnp.int32) for a in alive)
        removed = topk.count(remaining, group_rate, rounding="ceil")
        new = _keep_highest([score_leaves[i] for i in indices], alive, remaining - removed)
        for i, leaf in zip(indices, new, strict=True):
            out[i] = leaf
    return treedef.unflatten(out)


def prune_to_density(
    scores: PyTree, prunable: PyTree, *, density: float, scope: str = "global",
    masks: PyTree | None = None,
) -> PyTree:
    """One-shot pruning: keep the ``round(density * total)`` highest scores.

    With ``scope='global'`` the count is over all prunable weights; with
    ``'layerwise'`` each layer keeps ``round(density * layer_size)``: exact,
    ties to even (:func:`ltjax.core.topk.count`, ``'half_even'``; the density read
    by :func:`ltjax.core.topk.rational`). Among equal scores the later position is
    kept.
    ``masks`` (default all-True) are the masks to prune further.

    Raises:
      ValueError: ``density`` not a real scalar in (0, 1] (Python, NumPy or
        concrete JAX), NaN scores in a prunable leaf (named; ``-inf`` and
        ``+inf`` rank as lowest and highest), or (with concrete masks) a
        target that keeps more weights than ``masks`` still have.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import masking, pruning
        >>> trained = {"Dense_0": {"kernel": jnp.arange(6.0).reshape(3, 2)},
        ...            "Dense_1": {"kernel": jnp.arange(4.0).reshape(2, 2) - 2}}
        >>> selection = masking.prunable(trained)
        >>> oneshot = pruning.prune_to_density(pruning.magnitude_scores(trained), selection,
        ...                                    density=0.5)
        >>> masking.counts(oneshot, selection)       # 5 of 10 kept, ranked globally
        {'Dense_0/kernel': (4, 6), 'Dense_1/kernel': (1, 4)}
    """
    _check_density(density)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    masks = masking.ones_like(scores) if masks is None else masks
    tree.check_same_structure(masks, scores, name="masks", reference_name="scores")
    mask_leaves, treedef = jax.tree.flatten(masks)
    score_leaves = jax.tree.leaves(scores)
    selected = jax.tree.leaves(prunable)
    if len(selected) != len(mask_leaves):
        raise ValueError("prunable must have the structure of scores (masking.prunable(params))")
    _check_scores(scores, prunable)
    indices = [i for i, s in enumerate(selected) if s]
    groups = [indices] if scope == "global" else [[i] for i in indices]
    out = list(mask_leaves)
    for group in groups:
        total = int(sum(np.size(mask_leaves[i]) for i in group))
        keep = topk.count(total, density, rounding="half_even")
        alive = [mask_leaves[i] for i in group]
        remaining = sum(jnp.sum(a, dtype=jnp.int32) for a in alive)
        if not isinstance(remaining, jax.core.Tracer) and keep > int(remaining):
            raise ValueError(
                f"density={density} keeps {keep} weights but the masks have only "
                f"{int(remaining)} left: cannot prune to a higher density"
            )
        new = _keep_highest([score_leaves[i] for i in group], alive, keep)
        for i, leaf in zip(group, new, strict=True):
            out[i] = leaf
    return treedef.unflatten(out)


def prune_to_match(
    scores: PyTree, like_masks: PyTree, prunable: PyTree, *, scope: str = "layerwise",
) -> PyTree:
    """Keep the highest scores with the counts of ``like_masks``: per layer, or in total.

    One-shot pruning to an IMP level's sparsity: with ``'layerwise'`` each
    prunable layer keeps as many weights as it does in ``like_masks``; with
    ``'global'`` only the total count is matched. Pruning starts from
    all-True masks; leaves outside ``prunable`` come from ``like_masks``.

    Raises:
      ValueError: ``like_masks`` not of the scores' structure and shapes, NaN
        scores in a prunable leaf (named; checked when concrete), a bad scope.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import masking, pruning
        >>> trained = {"a": {"kernel": jnp.arange(6.0).reshape(3, 2)},
        ...            "b": {"kernel": jnp.arange(4.0).reshape(2, 2) / 4}}
        >>> selection = masking.prunable(trained)
        >>> ticket = {"a": {"kernel": jnp.eye(3, 2, dtype=bool)},      # 2 + 2 kept
        ...           "b": {"kernel": jnp.eye(2, dtype=bool)}}
        >>> oneshot = pruning.prune_to_match(pruning.magnitude_scores(trained), ticket,
        ...                                  selection, scope="global")
        >>> masking.counts(oneshot, selection)      # the 4 largest of all, wherever they are
        {'a/kernel': (4, 6), 'b/kernel': (0, 4)}
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    tree.check_same_structure(like_masks, scores, name="like_masks", reference_name="scores")
    mask_leaves, treedef = jax.tree.flatten(like_masks)
    score_leaves = jax.tree.leaves(scores)
    if len(jax.tree.leaves(prunable)) != len(mask_leaves):
        raise ValueError("prunable must have the structure of scores (masking.prunable(params))")
    _check_scores(scores, prunable)
    indices = [i for i, s in enumerate(jax.tree.leaves(prunable)) if s]
    groups = [indices] if scope == "global" else [[i] for i in indices]
    out = list(mask_leaves)
    for group in groups:
        kept = sum(jnp.sum(mask_leaves[i], dtype=jnp.int32) for i in group)
        ones = [jnp.ones(jnp.shape(mask_leaves[i]), bool) for i in group]
        new = _keep_highest([score_leaves[i] for i in group], ones, kept)
        for i, leaf in zip(group, new, strict=True):
            out[i] = leaf
    return treedef.unflatten(out)


def random_prune_like(
    key: jax.Array, masks: PyTree, prunable: PyTree, *, scope: str = "layerwise",
) -> PyTree:
    """Random masks with the counts of ``masks``: per layer, or only in total.

    ``'layerwise'`` shuffles the kept positions within each prunable layer
    (each layer keeps its count: OpenLTH's ``randomly_prune``, layerwise);
    ``'global'`` keeps the same total count spread uniformly over all
    prunable weights.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking, pruning
        >>> ticket = {"a": {"kernel": jnp.eye(3, 2, dtype=bool)},
        ...           "b": {"kernel": jnp.ones((2, 2), bool)}}
        >>> selection = masking.prunable(ticket)
        >>> control = pruning.random_prune_like(jax.random.key(0), ticket, selection,
        ...                                     scope="layerwise")
        >>> masking.counts(control, selection)      # each layer's count, new positions
        {'a/kernel': (2, 6), 'b/kernel': (4, 4)}
    """
    return prune_to_match(random_scores(key, masks), masks, prunable, scope=scope)


#: The keep ratio of the last layer in Su et al. 2020's random tickets (the reference's
#: ``--linear_keep_ratio`` default).
SMART_RATIO_LAST_DENSITY = 0.3


def _smart_ratio_fractions(sizes: Sequence[int], density: Any,
                           last_density: Any) -> list[fractions.Fraction]:
    """The smart-ratio keep ratios as exact fractions (:func:`smart_ratio_densities`)."""
    sizes = [int(n) for n in sizes]
    if len(sizes) < 2 or any(n < 1 for n in sizes):
        raise ValueError(f"sizes must list at least two layers of >= 1 weight, got {sizes}")
    topk.check_share(density, name="density")
    topk.check_share(last_density, name="last_density")
    d, q = topk.rational(density), topk.rational(last_density)
    depth, total = len(sizes), sum(sizes)
    rest = d * total - q * sizes[-1]  # what the layers before the last keep together
    if rest <= 0 or rest > sum(sizes[:-1]):
        low = q * sizes[-1] / total
        high = (sum(sizes[:-1]) + q * sizes[-1]) / total
        raise ValueError(
            f"density={density} is outside the smart ratio's range ({float(low):.6g}, "
            f"{float(high):.6g}] for these layers: the last layer keeps "
            f"last_density={last_density} of its {sizes[-1]} weights and the others at most all")
    # Su et al. 2020's smart ratio: layer l = 1..L-1 keeps c * ((L-l+1)^2 + (L-l+1)).
    weight = [(depth - layer + 1) ** 2 + (depth - layer + 1) for layer in range(1, depth)]
    dense: set[int] = set()  # layers clipped at keep ratio 1
    c = fractions.Fraction(0)
    while free := [i for i in range(depth - 1) if i not in dense]:
        c = (rest - sum(sizes[i] for i in dense)) / sum(weight[i] * sizes[i] for i in free)
        over = {i for i in free if c * weight[i] > 1}
        if not over:
            break
        dense |= over
    return [fractions.Fraction(1) if i in dense else c * weight[i]
            for i in range(depth - 1)] + [q]


def smart_ratio_densities(sizes: Sequence[int], density: float, *,
                          last_density: float = SMART_RATIO_LAST_DENSITY) -> tuple[float, ...]:
    """Su et al. 2020's "smart ratio" keep ratios of ``L`` layers, input layer first.

    Su, Chen, Cai, Wu, Gao, Wang & Lee 2020 ("Sanity-Checking Pruning Methods:
    Random Tickets can Win the Jackpot", NeurIPS 2020, "random tickets";
    reference ``JingtongSu/sanity-checking-pruning``, ``pruner/SmartRatio.py``):
    layer ``l = 1..L-1`` keeps ``p_l = c * ((L - l + 1)**2 + (L - l + 1))``, a
    keep ratio that decreases quadratically with depth, and the last layer
    keeps ``last_density`` (the reference's ``linear_keep_ratio``, 0.3). ``c``
    is solved so that ``sum(p_l * n_l) == density * sum(n_l)`` exactly (in
    rational arithmetic, :func:`ltjax.core.topk.rational`). A layer whose ratio
    would pass 1 keeps all its weights and ``c`` is solved again over the
    others, so the total stays exact; the reference clips such layers at 1
    and loses their surplus (its redistribution loop breaks before it runs),
    so at high densities its total falls short of the target.

    The reference's nets (VGG, ResNet) have convolutions and one linear
    classifier, which it keeps at 0.3; here the last layer in ``sizes`` plays
    the classifier and every other layer (the hidden dense layers of LeNet or
    an MLP) follows the quadratic. The reference's ratio for VGG is further
    divided by ``l**2`` (its ``args.arch != 'resnet'`` branch); that variant
    is not offered.

    Args:
      sizes: the number of weights of each prunable layer, in forward order
        (:func:`forward_order`); at least two layers.
      density: the kept share of all ``sum(sizes)`` weights, in (0, 1].
      last_density: the keep ratio of the last layer, in (0, 1].

    Returns:
      The keep ratio of each layer, in the order of ``sizes``.

    Raises:
      ValueError: fewer than two layers, a density or last_density outside
        (0, 1], or a density the ratios cannot reach (the last layer alone
        keeps more, or the others would need more than all their weights).

    Example:
        >>> from ltjax.core import pruning
        >>> [round(p, 4) for p in pruning.smart_ratio_densities([235200, 30000, 1000], 0.1)]
        [0.1052, 0.0526, 0.3]
    """
    return tuple(float(p) for p in _smart_ratio_fractions(sizes, density, last_density))


def _apportion(targets: Sequence[fractions.Fraction], total: int) -> list[int]:
    """Whole counts summing to ``total``, each the floor or ceiling of its exact target.

    Largest remainders (Hamilton): the floors, then one more for the largest
    fractional parts, ties to the earlier layer.
    """
    floors = [int(t // 1) for t in targets]
    order = sorted(range(len(targets)), key=lambda i: (-(targets[i] - floors[i]), i))
    for i in order[:total - sum(floors)]:
        floors[i] += 1
    return floors


def forward_order(forward_fn: Callable[[PyTree], Any], params: PyTree,
                  prunable: PyTree) -> tuple[str, ...]:
    """The prunable leaves' names in the order the forward pass first uses them.

    Read from the jaxpr of ``forward_fn(params)`` (no computation): a leaf
    comes before another when the first operation that reads it does.
    Depth order for the bundled models, which leaf order (by name) is not,
    e.g. ResNet's stem ``conv_init`` sorts after its ``Block_*``.

    Args:
      forward_fn: ``params -> output``, closed over the input and the model.
      params: the params (arrays or ``jax.ShapeDtypeStruct``), unstacked.
      prunable: static bool tree (:func:`ltjax.core.masking.prunable`).

    Raises:
      ValueError: a prunable leaf that ``forward_fn`` never reads (named).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import masking, pruning
        >>> params = {"out": {"kernel": jnp.ones((3, 2))}, "stem": {"kernel": jnp.ones((4, 3))}}
        >>> def forward(p):
        ...     return jnp.ones(4) @ p["stem"]["kernel"] @ p["out"]["kernel"]
        >>> pruning.forward_order(forward, params, masking.prunable(params))
        ('stem/kernel', 'out/kernel')
    """
    jaxpr = jax.make_jaxpr(forward_fn)(params).jaxpr
    position = {id(v): i for i, v in enumerate(jaxpr.invars)}
    first: dict[int, int] = {}
    for step, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            first.setdefault(position.get(id(v), -1), step)
    names = tree.names(params)
    selected = [i for i, s in enumerate(jax.tree.leaves(prunable)) if s]
    unused = [names[i] for i in selected if i not in first]
    if unused:
        raise ValueError(f"forward_fn never reads the prunable leaves {unused}")
    return tuple(names[i] for i in sorted(selected, key=lambda i: (first[i], i)))


def smart_ratio_prune(
    key: jax.Array, params: PyTree, prunable: PyTree, *, density: float,
    layers: Sequence[str], last_density: float = SMART_RATIO_LAST_DENSITY,
) -> PyTree:
    """Su et al. 2020's random ticket: random masks with the smart-ratio count of each layer.

    Each prunable layer keeps a uniformly random subset of its weights, of the
    size its keep ratio of :func:`smart_ratio_densities` gives; the counts add
    up to ``round(density * total)`` exactly (ties to even, as
    :func:`prune_to_density`), each the floor or the ceiling of its exact
    target (largest remainders). The positions are those of
    :func:`random_prune_like` (layerwise) of a mask with those counts, as the
    reference sets the first ``num_keep`` entries and permutes them.

    Args:
      key: a JAX key (the draw of the positions).
      params: the params (or masks) whose prunable leaves' shapes are pruned.
      prunable: static bool tree (:func:`ltjax.core.masking.prunable`).
      density: the kept share of all prunable weights.
      layers: the prunable leaves' names in forward order
        (:func:`forward_order`); the last one keeps ``last_density``.
      last_density: the last layer's keep ratio.

    Returns:
      Masks of the structure of ``params``; leaves outside ``prunable`` all-True.

    Raises:
      ValueError: ``layers`` not the prunable leaves' names, or the errors of
        :func:`smart_ratio_densities`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking, pruning
        >>> params = {"out": {"kernel": jnp.ones((3, 2))}, "stem": {"kernel": jnp.ones((4, 3))}}
        >>> def forward(p):
        ...     return jnp.ones(4) @ p["stem"]["kernel"] @ p["out"]["kernel"]
        >>> selection = masking.prunable(params)
        >>> layers = pruning.forward_order(forward, params, selection)
        >>> ticket = pruning.smart_ratio_prune(jax.random.key(0), params, selection,
        ...                                    density=0.5, layers=layers)
        >>> masking.counts(ticket, selection)      # 9 of 18 kept, the last layer's at 0.3
        {'out/kernel': (2, 6), 'stem/kernel': (7, 12)}
    """
    names = tree.names(params)
    leaves, treedef = jax.tree.flatten(params)
    selected = [n for n, s in zip(names, jax.tree.leaves(prunable), strict=True) if s]
    if sorted(layers) != sorted(selected) or len(set(layers)) != len(layers):
        raise ValueError(f"layers must name each prunable leaf once, in forward order: "
                         f"got {list(layers)}, prunable {selected}")
    sizes = [int(np.size(leaves[names.index(n)])) for n in layers]
    ratios = _smart_ratio_fractions(sizes, density, last_density)
    counts = dict(zip(layers, _apportion(
        [p * n for p, n in zip(ratios, sizes, strict=True)],
        topk.count(sum(sizes), density, rounding="half_even")), strict=True))
    like = [jnp.arange(np.size(x)).reshape(np.shape(x)) < counts[n] if n in counts
            else jnp.ones(np.shape(x), bool) for n, x in zip(names, leaves, strict=True)]
    return random_prune_like(key, treedef.unflatten(like), prunable, scope="layerwise")
