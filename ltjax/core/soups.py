"""Averaging many fine-tuned models: soups and WiSE-FT.

Wortsman et al. 2022 ("Model soups", ICML; and "Robust fine-tuning of
zero-shot models", CVPR 2022):

- :func:`uniform_soup`: the (optionally weighted) mean of K ingredients.
- :func:`greedy_soup`: add ingredients in order of held-out accuracy while
  the soup's held-out accuracy does not drop.
- :func:`learned_soup`: per-layer softmax mixing weights fitted on held-out
  data with optax.
- :func:`wise_ft` and :func:`wise_ft_sweep`: ``(1 - alpha) theta_0 + alpha
  theta_1`` between a pre-trained and a fine-tuned model, optionally keeping
  the fine-tuned head.

Plain pytrees in, no flax. Held-out evaluation is a callable passed in; nets
with BatchNorm pass ``recompute_fn`` (running statistics are never averaged
silently).

Example:
    >>> import jax.numpy as jnp
    >>> from ltjax.core import soups
    >>> ingredients = [{"w": jnp.full(2, v)} for v in (0.5, 1.5, 1.25, 3.0)]
    >>> soups.uniform_soup(ingredients)
    {'w': Array([1.5625, 1.5625], dtype=float32)}
    >>> def heldout_accuracy(params):         # a toy held-out accuracy, best at w = 1
    ...     return float(1 - jnp.abs(params["w"][0] - 1) / 4)
    >>> soups.greedy_soup(ingredients, heldout_accuracy).members
    (2, 0, 1)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ltjax.core import interpolation, tree

PyTree = Any


# --------------------------------------------------------------------------- soups


def _num_ingredients(ingredients: Any, *, stacked: bool) -> int:
    """K, after checking that ``ingredients`` is a non-empty list or stack of equal trees."""
    if stacked:
        leaves = jax.tree.leaves(ingredients)
        if not leaves:
            raise ValueError("ingredients (stacked=True) has no array leaves")
        sizes = sorted({int(np.shape(x)[0]) if np.ndim(x) else -1 for x in leaves})
        if len(sizes) != 1 or sizes[0] < 0:
            raise ValueError(
                "ingredients (stacked=True) must carry one leading ingredient axis [K, ...] on "
                f"every leaf; got leading sizes {sizes} (-1: a scalar leaf)"
            )
        if sizes[0] == 0:
            raise ValueError("ingredients is empty: its leading ingredient axis has size 0")
        return sizes[0]
    if not isinstance(ingredients, (list, tuple)):
        raise TypeError(
            "ingredients must be a list of trees, or a tree stacked along a leading axis "
            f"[K, ...] with stacked=True; got {type(ingredients).__name__}"
        )
    if not ingredients:
        raise ValueError("ingredients is empty: a soup needs at least one tree")
    for i, other in enumerate(ingredients[1:], start=1):
        tree.check_same_structure(other, ingredients[0], name=f"ingredients[{i}]",
                                  reference_name="ingredients[0]")
    return len(ingredients)


def _as_list(ingredients: Any, *, stacked: bool) -> list[PyTree]:
    num = _num_ingredients(ingredients, stacked=stacked)
    return [tree.index(ingredients, i) for i in range(num)] if stacked else list(ingredients)


def _soup_weights(weights: Any, num: int) -> np.ndarray:
    if weights is None:
        return np.ones(num)
    w = np.asarray(weights, np.float64)
    if w.shape != (num,):
        raise ValueError(f"weights must have one entry per ingredient, shape ({num},), "
                         f"got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w


def uniform_soup(ingredients: Sequence[PyTree] | PyTree, *, weights: Any = None,
                 stacked: bool = False) -> PyTree:
    """The uniform soup: the mean of the ingredients' weights (Wortsman et al. 2022).

    ``sum_i w_i theta_i / sum_i w_i`` (``w_i = 1`` by default), computed as the
    running mean ``soup_i = lerp(w_i / (w_1 + ... + w_i), soup_{i-1},
    theta_i)``, so the soup of identical ingredients is exactly that
    ingredient. Non-float leaves (step counters) come from the first ingredient
    of nonzero weight. Nets with BatchNorm: recompute the running statistics
    of the result (:meth:`ltjax.engine.executor.Executor.recomputed_batch_stats`) rather
    than using the averaged ones.

    Args:
      ingredients: a list of trees of equal structure, or (``stacked=True``)
        one tree whose leaves carry a leading ingredient axis ``[K, ...]``.
      weights: optional non-negative weights ``[K]`` (normalised here).
      stacked: whether ``ingredients`` is a stacked tree.

    Returns:
      The soup, one tree of the ingredients' structure.

    Raises:
      ValueError: no ingredients, ingredients of different structure or
        shapes, bad weights.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import soups
        >>> soups.uniform_soup([{"w": jnp.zeros(2)}, {"w": jnp.ones(2)}])
        {'w': Array([0.5, 0.5], dtype=float32)}
    """
    trees = _as_list(ingredients, stacked=stacked)
    weights = _soup_weights(weights, len(trees))
    soup, total = None, 0.0
    for ingredient, weight in zip(trees, weights, strict=True):
        if weight == 0:
            continue
        total += float(weight)
        if soup is None:
            soup = jax.tree.map(jnp.asarray, ingredient)
        else:
            soup = interpolation.lerp(float(weight) / total, soup, ingredient)
    return soup


def _accuracy(value: Any, what: str) -> float:
    try:
        accuracy = float(np.asarray(value, np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number (held-out accuracy), got {value!r}") from None
    if not np.isfinite(accuracy):
        raise ValueError(
            f"{what} returned a held-out accuracy of {accuracy}: it must be finite "
            "(is the held-out split empty?)"
        )
    return accuracy


class GreedySoup(NamedTuple):
    """The result of :func:`greedy_soup`.

    Attributes:
      soup: the soup (after ``recompute_fn``, if given and more than one member).
      members: indices of the ingredients in the soup, in the order they were added.
      accuracy: the soup's held-out accuracy.
      order: all ingredient indices by decreasing held-out accuracy (ties: lower index first).
      history: one record per candidate in ``order``: ``{'ingredient', 'accuracy'`` (of
        the soup with it), ``'accepted'}``; the first is the best ingredient alone.
    """

    soup: PyTree
    members: tuple[int, ...]
    accuracy: float
    order: tuple[int, ...]
    history: tuple[dict, ...]


def greedy_soup(
    ingredients: Sequence[PyTree] | PyTree, evaluate_fn: Callable[[PyTree], Any], *,
    stacked: bool = False, strict: bool = False, accuracies: Any = None,
    recompute_fn: Callable[[PyTree], PyTree] | None = None,
) -> GreedySoup:
    """The greedy soup of Wortsman et al. 2022 ("Model soups", ICML, Recipe 1).

    Sort the ingredients by held-out accuracy (best first); start the soup
    with the best; try each next one and keep it if the uniform soup with it
    is at least as accurate on held-out data as the soup without it. The
    paper's Recipe 1 keeps ties (``>=``, ``strict=False``, the default); the
    reference code (mlfoundations/model-soups) keeps only strict improvements
    (``>``, ``strict=True``). The held-out accuracy never ends below the best
    ingredient's.

    Args:
      ingredients: a list of trees of equal structure, or a stacked tree ``[K, ...]``
        with ``stacked=True``.
      evaluate_fn: ``fn(tree) -> float``: held-out accuracy of one (unstacked) tree.
      stacked: whether ``ingredients`` is a stacked tree.
      strict: keep an ingredient only if it strictly improves the accuracy.
      accuracies: the ingredients' held-out accuracies ``[K]`` if already
        known (saves K calls of ``evaluate_fn``).
      recompute_fn: optional ``fn(tree) -> tree`` applied to every candidate
        soup before ``evaluate_fn``, e.g. recomputing BatchNorm statistics.

    Returns:
      A :class:`GreedySoup`: the soup, its members, accuracy, the candidate
      order and the accept/reject history.

    Raises:
      ValueError: no ingredients, different structures, ``accuracies`` of the
        wrong length, or a non-finite held-out accuracy (e.g. an empty split).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import soups
        >>> finetuned = [{"w": jnp.float32(v)} for v in (0.5, 1.5, 1.25, 3.0)]
        >>> def heldout_accuracy(params):         # a toy held-out accuracy, best at w = 1
        ...     return float(1 - jnp.abs(params["w"] - 1) / 4)
        >>> result = soups.greedy_soup(finetuned, heldout_accuracy)
        >>> result.order                          # by the ingredients' own accuracy
        (2, 0, 1, 3)
        >>> result.members, round(result.accuracy, 4)    # 3 (w = 3.0) would lower it
        ((2, 0, 1), 0.9792)
    """
    trees = _as_list(ingredients, stacked=stacked)
    num = len(trees)
    if accuracies is None:
        accs = np.array([_accuracy(evaluate_fn(t), f"evaluate_fn(ingredients[{i}])")
                         for i, t in enumerate(trees)])
    else:
        accs = np.asarray(accuracies, np.float64)
        if accs.shape != (num,):
            raise ValueError(f"accuracies must hold one held-out accuracy per ingredient, "
                             f"shape ({num},), got shape {accs.shape}")
        if not np.all(np.isfinite(accs)):
            raise ValueError(f"accuracies must be finite, got {accs.tolist()}")
    order = tuple(sorted(range(num), key=lambda i: -accs[i]))  # stable: ties by index
    members = [order[0]]
    mean = soup = jax.tree.map(jnp.asarray, trees[order[0]])
    current = float(accs[order[0]])
    history = [{"ingredient": order[0], "accuracy": current, "accepted": True}]
    for i in order[1:]:
        # The running mean: bit for bit uniform_soup([members..., i]).
        candidate_mean = interpolation.lerp(1.0 / (len(members) + 1), mean, trees[i])
        candidate = recompute_fn(candidate_mean) if recompute_fn is not None else candidate_mean
        acc = _accuracy(evaluate_fn(candidate), f"evaluate_fn(soup + ingredients[{i}])")
        accepted = acc > current if strict else acc >= current
        history.append({"ingredient": i, "accuracy": acc, "accepted": bool(accepted)})
        if accepted:
            members.append(i)
            mean, soup, current = candidate_mean, candidate, acc
    return GreedySoup(soup=soup, members=tuple(members), accuracy=current, order=order,
                      history=tuple(history))


class LearnedSoup(NamedTuple):
    """The result of :func:`learned_soup`.

    Attributes:
      soup: the mixed tree.
      weights: ``{group: [K]}``: each group's mixing weights (a softmax: >= 0,
        sum 1); a group is a parameter tensor (``'Dense_0/kernel'``), a layer
        (``'Dense_0'``) or ``'all'``.
      losses: the held-out loss before each optimiser step, ``[num_steps]``.
      logits: the learned pre-softmax parameters ``[G, K]`` (groups in ``weights`` order).
      temperature: the learned logit scale (1.0 when not learned).
    """

    soup: PyTree
    weights: dict[str, np.ndarray]
    losses: np.ndarray
    logits: np.ndarray
    temperature: float


GRANULARITIES = ("tensor", "layer", "model")


def layer_name(leaf_name: str) -> str:
    """A leaf's layer: its path without the last part (``'Dense_0/kernel'`` -> ``'Dense_0'``)."""
    return leaf_name.rsplit("/", 1)[0] if "/" in leaf_name else leaf_name


def learned_soup(
    ingredients: Sequence[PyTree] | PyTree,
    loss_fn: Callable[[PyTree, PyTree, jax.Array], jax.Array],
    heldout: PyTree,
    *,
    stacked: bool = False,
    granularity: str = "tensor",
    temperature: bool = True,
    num_steps: int = 100,
    learning_rate: float = 0.05,
    batch_size: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    seed: int = 0,
) -> LearnedSoup:
    """A learned soup (Wortsman et al. 2022, "Model soups", Appendix I).

    Each parameter tensor ``t`` mixes the ingredients with its own weights
    ``softmax(logits[t])`` (``theta_t = sum_i w_{t,i} theta_{i,t}``), and a
    temperature ``beta`` scales the model's logits; the logits start at 0
    (the uniform soup), ``beta`` at 1, and both are fitted by ``num_steps``
    AdamW steps (weight decay 0, learning rate 0.05: the reference's
    ``learned_bylayer.py``, ``AlphaWrapper``) on the held-out loss.
    ``granularity='layer'`` shares one weight vector per layer (a leaf's path
    without its last part: a kernel and its bias), ``'model'`` one for the
    whole model. Non-float leaves come from the first ingredient. Nets with
    BatchNorm: let ``loss_fn`` use batch statistics, then recompute the
    result's running statistics.

    Args:
      ingredients: a list of trees of equal structure, or a stacked tree
        ``[K, ...]`` with ``stacked=True``.
      loss_fn: ``fn(soup, batch, logit_scale) -> scalar``, jittable and
        differentiable in ``soup`` and ``logit_scale``: the held-out loss of a
        mixed tree on a batch of ``heldout``, its logits multiplied by
        ``logit_scale`` (the learned temperature; 1.0 when not learned).
      heldout: the held-out data: a tree of arrays sharing a leading example
        axis ``[N, ...]`` (e.g. ``(images, labels)``).
      stacked: whether ``ingredients`` is a stacked tree.
      granularity: ``'tensor'`` (the reference's), ``'layer'`` or ``'model'``.
      temperature: learn the logit scale ``beta`` (the reference does).
      num_steps: optimiser steps.
      learning_rate: AdamW's learning rate (ignored when ``optimizer`` is given).
      batch_size: examples per step, drawn without replacement from
        ``seed`` and the step; None: the whole held-out set every step.
      optimizer: an optax transformation to use instead of AdamW.
      seed: seed of the batch draws.

    Returns:
      A :class:`LearnedSoup` (the soup, the weights per group, the losses,
      the logits and the temperature).

    Raises:
      ValueError: no ingredients, different structures, an empty or ragged
        ``heldout``, bad ``batch_size`` / ``num_steps`` / ``learning_rate`` /
        ``granularity``.
      FloatingPointError: the held-out loss became NaN or inf.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from ltjax.core import soups
        >>> finetuned = [{"Dense_0": {"kernel": jnp.eye(2)}}, {"Dense_0": {"kernel": -jnp.eye(2)}}]
        >>> val_x, val_y = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), jnp.array([0, 1, 1])
        >>> def loss_fn(params, batch, scale):
        ...     x, y = batch
        ...     logits = scale * (x @ params["Dense_0"]["kernel"])
        ...     return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        >>> result = soups.learned_soup(finetuned, loss_fn, (val_x, val_y), num_steps=20)
        >>> weights = result.weights["Dense_0/kernel"]   # [K], a softmax
        >>> round(float(weights.sum()), 4), bool(weights[0] > weights[1])
        (1.0, True)
        >>> result.losses.shape, bool(result.losses[-1] < result.losses[0])
        ((20,), True)
    """
    num = _num_ingredients(ingredients, stacked=stacked)
    stack = ingredients if stacked else tree.stack(list(ingredients))
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    held_leaves = jax.tree.leaves(heldout)
    sizes = sorted({int(np.shape(x)[0]) if np.ndim(x) else -1 for x in held_leaves})
    if not held_leaves or len(sizes) != 1 or sizes[0] < 0:
        raise ValueError("heldout must be a tree of arrays sharing a leading example axis "
                         f"[N, ...]; got leading sizes {sizes}")
    num_examples = sizes[0]
    if num_examples == 0:
        raise ValueError("heldout is empty (0 examples): the learned soup is fitted on "
                         "held-out data")
    if batch_size is not None and not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size must be in [1, {num_examples}] (the held-out size) or "
                         f"None, got {batch_size}")

    leaves, treedef = jax.tree.flatten(stack)
    names = tree.names(stack)
    floats = [jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in leaves]
    group_of = {"tensor": lambda n: n, "layer": layer_name, "model": lambda n: "all"}[granularity]
    leaf_groups = [group_of(n) if f else None for n, f in zip(names, floats, strict=True)]
    groups = list(dict.fromkeys(name for name in leaf_groups if name is not None))
    if not groups:
        raise ValueError("ingredients have no float leaves to mix")
    index = [None if name is None else groups.index(name) for name in leaf_groups]

    def mix(logits, stack):
        w = jax.nn.softmax(logits, axis=-1)
        out = [x[0] if i is None else jnp.tensordot(w[i].astype(x.dtype), x, axes=1)
               for x, i in zip(jax.tree.leaves(stack), index, strict=True)]
        return jax.tree.unflatten(treedef, out)

    tx = optimizer if optimizer is not None else optax.adamw(learning_rate, weight_decay=0.0)

    def objective(learned, stack, batch):
        scale = learned["temperature"] if temperature else jnp.float32(1.0)
        return loss_fn(mix(learned["logits"], stack), batch, scale)

    # One jitted step per Python iteration, not a rolled scan: XLA:CPU runs convs inside
    # loops many times slower (FACTS.md). The stack and the data are arguments, not constants.
    @jax.jit
    def step(learned, opt_state, stack, heldout, key, t):
        batch = heldout
        if batch_size is not None:
            rows = jax.random.permutation(jax.random.fold_in(key, t), num_examples)
            batch = jax.tree.map(lambda x: x[rows[:batch_size]], heldout)
        loss, grad = jax.value_and_grad(objective)(learned, stack, batch)
        if not temperature:
            grad = {**grad, "temperature": jnp.zeros_like(grad["temperature"])}
        updates, opt_state = tx.update(grad, opt_state, learned)
        return optax.apply_updates(learned, updates), opt_state, loss

    learned = {"logits": jnp.zeros((len(groups), num), jnp.float32),
               "temperature": jnp.ones((), jnp.float32)}
    opt_state, key, losses = tx.init(learned), jax.random.key(seed), []
    for t in range(num_steps):
        learned, opt_state, loss = step(learned, opt_state, stack, heldout, key, t)
        losses.append(loss)
    soup = jax.jit(mix)(learned["logits"], stack)
    losses = np.asarray(jnp.stack(losses))
    if not np.all(np.isfinite(losses)):
        bad = int(np.argmin(np.isfinite(losses)))
        raise FloatingPointError(f"the held-out loss of the learned soup is {losses[bad]} at "
                                 f"step {bad}; lower learning_rate")
    weights = np.asarray(jax.nn.softmax(learned["logits"], axis=-1))
    return LearnedSoup(soup=soup, weights={name: weights[i] for i, name in enumerate(groups)},
                       losses=losses, logits=np.asarray(learned["logits"]),
                       temperature=float(learned["temperature"]) if temperature else 1.0)


# --------------------------------------------------------------------------- WiSE-FT


def _head_leaves(theta_1: PyTree, keep_head: str) -> list[bool]:
    """Which leaves of ``theta_1`` the regex ``keep_head`` selects (``re.search`` on the path)."""
    try:
        pattern = re.compile(keep_head)
    except (re.error, TypeError) as err:
        raise ValueError(f"keep_head must be a regex of leaf names, got {keep_head!r} "
                         f"({err})") from None
    names = tree.names(theta_1)
    selected = [bool(pattern.search(n)) for n in names]
    if not any(selected):
        raise ValueError(f"keep_head={keep_head!r} matches no leaf of theta_1 (leaves: "
                         f"{names[:8]}{' ...' if len(names) > 8 else ''})")
    return selected


def wise_ft(alpha: float | jax.Array, theta_0: PyTree, theta_1: PyTree, *,
            keep_head: str | None = None) -> PyTree:
    """WiSE-FT (Wortsman et al., CVPR 2022): ``(1 - alpha) * theta_0 + alpha * theta_1``.

    ``theta_0`` is the pre-trained (zero-shot) model, ``theta_1`` the
    fine-tuned one; this is :func:`lerp`, so ``alpha = 0`` gives exactly
    ``theta_0`` and ``alpha = 1`` exactly ``theta_1`` (non-float leaves, such as
    step counters, come from ``theta_0``). ``keep_head`` (a regex
    of leaf names, ``re.search``, e.g. ``'Dense_2'``) selects the head: those
    leaves keep the fine-tuned values at every alpha (the paper's variant for
    a head that only the fine-tuned model has); None interpolates everything.

    Raises:
      ValueError: ``alpha`` outside [0, 1], different structures, a
        ``keep_head`` that matches nothing.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import soups
        >>> pretrained = {"Dense_0": {"kernel": jnp.zeros(2)}, "Dense_1": {"kernel": jnp.zeros(2)}}
        >>> finetuned = {"Dense_0": {"kernel": jnp.ones(2)}, "Dense_1": {"kernel": jnp.ones(2)}}
        >>> soups.wise_ft(0.5, pretrained, finetuned)["Dense_1"]["kernel"]
        Array([0.5, 0.5], dtype=float32)
        >>> robust = soups.wise_ft(0.5, pretrained, finetuned, keep_head="Dense_1")
        >>> robust["Dense_0"]["kernel"], robust["Dense_1"]["kernel"]    # the head kept
        (Array([0.5, 0.5], dtype=float32), Array([1., 1.], dtype=float32))
    """
    mixed = interpolation.lerp(alpha, theta_0, theta_1)
    if keep_head is None:
        return mixed
    head = _head_leaves(theta_1, keep_head)
    leaves = [jnp.asarray(b) if h else m for m, b, h in
              zip(jax.tree.leaves(mixed), jax.tree.leaves(theta_1), head, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(mixed), leaves)


def wise_ft_sweep(
    evaluate_fn: Callable[[PyTree], dict], theta_0: PyTree, theta_1: PyTree, alphas: Any, *,
    keep_head: str | None = None, chunk_size: int | None = None,
    recompute_fn: Callable[[PyTree], PyTree] | None = None,
) -> dict[str, np.ndarray]:
    """Evaluate :func:`wise_ft` at many alphas (:func:`evaluate_path` with the head kept).

    Args:
      evaluate_fn: ``fn(stacked_tree [C, ...]) -> {metric: [C]}``, as for :func:`evaluate_path`.
      theta_0: the pre-trained model (alpha = 0).
      theta_1: the fine-tuned model (alpha = 1).
      alphas: ``[A]`` values in [0, 1].
      keep_head: regex of the head's leaves, kept fine-tuned at every alpha (None: none).
      chunk_size: alphas per ``evaluate_fn`` call (default: all).
      recompute_fn: optional ``fn(stacked_tree) -> stacked_tree`` applied after the
        head is set (e.g. recomputing BatchNorm statistics).

    Returns:
      ``{metric: [A]}`` as NumPy arrays.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import soups
        >>> theta_0 = {"body": jnp.zeros(2), "head": jnp.zeros(2)}
        >>> theta_1 = {"body": jnp.ones(2), "head": jnp.full(2, 2.0)}
        >>> def evaluate_fn(stacked):        # [C, ...] -> {metric: [C]}, a toy metric
        ...     return {"sum": stacked["body"].sum(axis=1) + stacked["head"].sum(axis=1)}
        >>> soups.wise_ft_sweep(evaluate_fn, theta_0, theta_1, [0, 0.5, 1],
        ...                     keep_head="head")["sum"]
        array([4., 5., 6.], dtype=float32)

        A network's ``evaluate_fn`` is e.g. ``lambda t: executor.evaluate_params(*t,
        "test")`` with ``t = (params, batch_stats)``.
    """
    transform = recompute_fn
    if keep_head is not None:
        head = _head_leaves(theta_1, keep_head)
        kept = jax.tree.leaves(theta_1)

        def transform(stacked):
            leaves = [jnp.broadcast_to(b, s.shape) if h else s
                      for s, b, h in zip(jax.tree.leaves(stacked), kept, head, strict=True)]
            out = jax.tree.unflatten(jax.tree.structure(stacked), leaves)
            return recompute_fn(out) if recompute_fn is not None else out

    return interpolation.evaluate_path(evaluate_fn, theta_0, theta_1, alphas,
                                       chunk_size=chunk_size, recompute_fn=transform)
