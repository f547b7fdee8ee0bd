"""STR: soft-threshold weight reparameterisation for learnable sparsity.

Kusupati, Ramanujan, Somani, Wortsman, Jain, Kakade & Farhadi 2020, "Soft
Threshold Weight Reparameterization for Learnable Sparsity" (ICML 2020).
Every prunable layer ``l`` trains its weights ``W`` and one scalar threshold
``s_l``; the model runs on

    W_hat = sign(W) * relu(|W| - sigmoid(s_l)),

so weights whose magnitude is at most ``sigmoid(s_l)`` are exactly zero and
each layer learns its own sparsity. The gradients are those of the formula
(no straight-through estimator): ``dL/dW = g * 1[|W| > sigmoid(s)]`` and
``dL/ds = -sigmoid'(s) * sum_{|W| > sigmoid(s)} sign(W) * g``, with
``g = dL/dW_hat``. Sparsity is driven by the weight decay of ``s``: it pulls
``s`` from its very negative start towards 0, so ``sigmoid(s)`` grows.

Facts of the reference (RAIVNLab/STR@cc74d38, ``utils/conv_type.py``,
``main.py``) kept here:

- at ``s_init = -3200`` (its ImageNet setting) ``sigmoid(s)`` and its
  derivative are exactly 0 in float32, so ``W_hat == W`` bit for bit and
  ``s`` moves only by weight decay (``s <- s (1 - lr * decay)`` for plain SGD)
  until ``sigmoid(s)`` reaches the weights' scale: sparsity appears late in
  training. The authors suggest ``s_init`` about -100 on CIFAR (issue #2);
- every conv and linear layer is sparse, the first one and the classifier
  included (:func:`ltjax.core.masking.prunable`'s default selection: every kernel);
- the thresholds are their own optimiser group whose decay ``st_decay``
  defaults to the weight decay; batch norm and biases keep the ordinary
  decay (the reference's optional ``no_bn_decay`` is not modelled here).

Example:
    The reparameterisation on a toy layer, at its initial threshold:

    >>> import jax, jax.numpy as jnp
    >>> from ltjax.core import masking
    >>> from ltjax.methods import soft_threshold
    >>> kernel = jnp.array([[0.5, -2.0], [1.5, -0.25]])
    >>> params = {"Dense_0": {"kernel": kernel, "bias": jnp.zeros(2)}}
    >>> selection = masking.prunable(params)
    >>> r = soft_threshold.str_reparam(selection, s_init=0.0)    # shrink by sigmoid(0) = 0.5
    >>> one, _ = r.init(params, jax.random.key(0))               # one member's trainable tree
    >>> soft_threshold.learned_sparsity(one, selection)
    0.5

    Training it (not run here: it compiles a training program):

    ```python
    abstract = jax.eval_shape(lambda k: models.init(model, k, (28, 28, 1))[0],
                              jax.random.key(0))
    selection = masking.prunable(abstract)
    executor = Executor(model, dataset, recipe,
                        reparam=soft_threshold.str_reparam(selection, s_init=-5.0))
    state, _ = executor.train(executor.init(init_keys), None, noise_keys, num_steps=1000)
    one = jax.tree.map(lambda x: x[0], jax.device_get(state.params))
    soft_threshold.learned_sparsity(one, selection)
    ```
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import masking, tree
from ltjax.engine import optim, reparam

PyTree = Any

#: The optimiser label of the thresholds when ``threshold_decay`` is a number.
THRESHOLD_LABEL = "str_threshold"


def soft_threshold(w: jax.Array, s: jax.Array | float) -> jax.Array:
    """``sign(w) * relu(|w| - sigmoid(s))``, elementwise, in ``w``'s dtype.

    Args:
      w: the weights.
      s: the layer's threshold parameter (a scalar; ``sigmoid(s)`` is cast
        to ``w``'s dtype, so float32 weights give float32 output).

    Returns:
      The soft-thresholded weights: exactly 0 where ``|w| <= sigmoid(s)``,
      ``w`` shrunk towards 0 by ``sigmoid(s)`` elsewhere.

    Raises:
      ValueError: ``s`` is not a scalar.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.methods.soft_threshold import soft_threshold
        >>> soft_threshold(jnp.array([-1.0, 0.25, 0.75]), 0.0)   # sigmoid(0) = 0.5
        Array([-0.5 ,  0.  ,  0.25], dtype=float32)
    """
    w = jnp.asarray(w)
    if jnp.ndim(s) != 0:
        raise ValueError(f"s must be a scalar (one threshold per layer), got shape {jnp.shape(s)}")
    threshold = jax.nn.sigmoid(jnp.asarray(s, jnp.result_type(float))).astype(w.dtype)
    return jnp.sign(w) * jax.nn.relu(jnp.abs(w) - threshold)


# --------------------------------------------------------------------------- trees


def _flags(prunable: PyTree) -> list[bool]:
    leaves = jax.tree.leaves(prunable)
    bad = [x for x in leaves if not isinstance(x, bool | np.bool_)]
    if bad:
        raise ValueError(f"prunable must be a tree of Python bools (masking.prunable(params)); "
                         f"got leaves {bad[:3]}")
    if not any(leaves):
        raise ValueError(f"prunable has no True leaf ({len(leaves)} leaves): STR needs at least "
                         "one layer to sparsify")
    return [bool(x) for x in leaves]


def _keys(path: tuple) -> tuple[str, ...]:
    keys = []
    for entry in path:
        if not isinstance(entry, jax.tree_util.DictKey):
            raise ValueError(f"prunable leaves must sit in nested dicts (flax params); got the "
                             f"path {tree.path_name(path)!r}")
        keys.append(entry.key)
    return tuple(keys)


def _check_fits(prunable: PyTree, params: PyTree, name: str) -> None:
    if jax.tree.structure(prunable) != jax.tree.structure(params):
        raise ValueError(
            f"prunable must have the structure of {name}; prunable has leaves "
            f"{tree.names(prunable)[:6]}, {name} has {tree.names(params)[:6]}")


def _prunable_paths(prunable: PyTree) -> list[tuple[str, ...]]:
    flags = _flags(prunable)
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(prunable)[0]]
    return [_keys(p) for p, f in zip(paths, flags, strict=True) if f]


def _nested(paths: list[tuple[str, ...]], values: list[Any]) -> dict:
    out: dict = {}
    for keys, value in zip(paths, values, strict=True):
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def _lookup(thresholds: dict, keys: tuple[str, ...]) -> Any:
    node = thresholds
    for k in keys:
        node = node[k]
    return node


def _split(trainable: PyTree, prunable: PyTree) -> tuple[PyTree, dict]:
    if not (isinstance(trainable, dict) and set(trainable) == {"params", "thresholds"}):
        raise ValueError("trainable must be STR's trainable tree {'params': ..., "
                         f"'thresholds': ...}}; got {type(trainable).__name__} with keys "
                         f"{sorted(trainable) if isinstance(trainable, dict) else None}")
    _check_fits(prunable, trainable["params"], "trainable['params']")
    return trainable["params"], trainable["thresholds"]


def _thresholded(params: PyTree, thresholds: dict, prunable: PyTree) -> PyTree:
    flags = _flags(prunable)
    with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [soft_threshold(w, _lookup(thresholds, _keys(p))) if f else w
              for (p, w), f in zip(with_path, flags, strict=True)]
    return jax.tree.unflatten(treedef, leaves)


# --------------------------------------------------------------------------- the reparam


def str_reparam(prunable: PyTree, *, s_init: float,
                threshold_decay: float | None = None) -> reparam.Reparam:
    """STR as a :class:`ltjax.engine.reparam.Reparam`: weights and one threshold per prunable layer.

    The trainable tree is ``{'params': params, 'thresholds': thresholds}``
    where ``thresholds`` mirrors the nesting of the prunable leaves only
    (``thresholds['Dense_0']['kernel']`` is the float32 scalar ``s`` of
    ``params['Dense_0']['kernel']``). So the weights keep their own paths
    (IMP masks land on ``'params'`` unchanged), the thresholds carry their
    layer's path (``tree.names(thresholds)`` are the prunable layer names) and
    the checkpoint holds plain nested dicts of arrays. ``apply`` replaces every
    prunable kernel by :func:`soft_threshold` of it; the other leaves are the
    trained ones. The frozen tree is empty.

    Optimiser groups: the weights (and biases, norms) are
    :data:`ltjax.engine.optim.DEFAULT`, the member's weight decay. The thresholds:

    - ``threshold_decay=None``: the member's weight decay, as the reference's
      ``st_decay`` defaulting to ``wd``. ``group_decay`` holds numbers only
      (a per-member decay of a learning-rate x weight-decay grid is a traced
      value ``make_optimizer`` gets as ``weight_decay``), so "the member's
      decay" is expressed by labelling the thresholds ``DEFAULT``: the same
      transform (coupled or decoupled as the recipe says, same optimiser) as a
      separate group with that decay, elementwise identical;
    - a number: the label :data:`THRESHOLD_LABEL` with that decay in
      ``group_decay`` (the same for every member).

    IMP masks compose: ``trainable_masks`` puts the masks on the weights and
    all-True on the thresholds (always trainable); a masked weight is zero in
    the trainable tree, hence in ``W_hat``.

    Args:
      prunable: the static tree of Python bools of :func:`ltjax.core.masking.prunable`
        (every conv/linear kernel by default, as the reference), with the
        model's params' structure.
      s_init: the initial threshold parameter of every layer (the reference's
        ``sInit``: -3200 on ImageNet, about -100 on CIFAR; -10 to -5 sparsify
        a LeNet within a few epochs).
      threshold_decay: the thresholds' weight decay (None: the member's).

    Returns:
      The reparameterisation.

    Raises:
      ValueError: ``s_init`` is not a finite float32 number; ``threshold_decay``
        is negative or not finite; ``prunable`` is not a tree of bools with a
        True leaf in nested dicts (each naming the argument).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import soft_threshold
        >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
        ...           "Dense_1": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
        >>> selection = masking.prunable(params)
        >>> r = soft_threshold.str_reparam(selection, s_init=-3200.0,
        ...                                threshold_decay=2.2517578e-5)
        >>> trainable, frozen = r.init(params, jax.random.key(0))
        >>> trainable["thresholds"]
        {'Dense_0': {'kernel': Array(-3200., dtype=float32)},
         'Dense_1': {'kernel': Array(-3200., dtype=float32)}}
    """
    if isinstance(s_init, bool) or not isinstance(s_init, numbers.Real):
        raise ValueError(f"s_init must be a real number, got {s_init!r}")
    if not (math.isfinite(s_init) and abs(s_init) <= float(np.finfo(np.float32).max)):
        raise ValueError(f"s_init must be finite in float32, got {s_init!r}")
    if threshold_decay is not None:
        if isinstance(threshold_decay, bool) or not isinstance(threshold_decay, numbers.Real):
            raise ValueError(f"threshold_decay must be a number or None, got {threshold_decay!r}")
        if not (math.isfinite(threshold_decay) and threshold_decay >= 0):
            raise ValueError(f"threshold_decay must be finite and >= 0, got {threshold_decay!r}")
    paths = _prunable_paths(prunable)  # validates prunable
    s0 = float(s_init)
    threshold_label = optim.DEFAULT if threshold_decay is None else THRESHOLD_LABEL
    group_decay = {} if threshold_decay is None else {THRESHOLD_LABEL: float(threshold_decay)}

    def init(params: PyTree, key: jax.Array) -> tuple[PyTree, PyTree]:
        del key
        _check_fits(prunable, params, "the model's params")
        thresholds = _nested(paths, [jnp.full((), s0, jnp.float32) for _ in paths])
        return {"params": params, "thresholds": thresholds}, {}

    def apply(trainable: PyTree, frozen: PyTree, key: jax.Array | None, *,
              train: bool) -> PyTree:
        del frozen, key, train
        params, thresholds = _split(trainable, prunable)
        return _thresholded(params, thresholds, prunable)

    def labels(trainable: PyTree) -> PyTree:
        return {"params": jax.tree.map(lambda _: optim.DEFAULT, trainable["params"]),
                "thresholds": jax.tree.map(lambda _: threshold_label, trainable["thresholds"])}

    def trainable_masks(masks: PyTree, trainable: PyTree) -> PyTree:
        return {"params": masks,
                "thresholds": jax.tree.map(lambda s: jnp.ones(jnp.shape(s), bool),
                                           trainable["thresholds"])}

    decay = "member's" if threshold_decay is None else repr(float(threshold_decay))
    return reparam.Reparam(
        name=f"str(s_init={s0!r}, threshold_decay={decay})", init=init, apply=apply,
        labels=labels, group_decay=group_decay, trainable_masks=trainable_masks)


# --------------------------------------------------------------------------- export


def sparse_weights(trainable: PyTree, prunable: PyTree, *, masks: PyTree | None = None) -> PyTree:
    """The model's params of an STR trainable tree: soft-thresholded kernels, exact zeros.

    This is what the model runs on (``str_reparam(...).apply``), optionally
    with IMP ``masks`` applied as the executor does in the forward pass.
    Jittable and vmappable over a member axis (``prunable`` is static).

    Args:
      trainable: one member's ``{'params': ..., 'thresholds': ...}`` (or a
        stacked one under ``jax.vmap``).
      prunable: the tree the reparameterisation was built with.
      masks: IMP masks of the params (None: none).

    Raises:
      ValueError: ``trainable`` or ``prunable`` do not fit (naming which).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import soft_threshold
        >>> kernel = jnp.array([[0.5, -2.0], [1.5, -0.25]])
        >>> params = {"Dense_0": {"kernel": kernel, "bias": jnp.zeros(2)}}
        >>> selection = masking.prunable(params)
        >>> r = soft_threshold.str_reparam(selection, s_init=0.0)    # shrink by sigmoid(0) = 0.5
        >>> one, _ = r.init(params, jax.random.key(0))               # one member's trainable tree
        >>> soft_threshold.sparse_weights(one, selection)["Dense_0"]["kernel"]
        Array([[ 0. , -1.5],
               [ 1. , -0. ]], dtype=float32)

        These are the model's params: ``model.apply({"params": params}, x, train=False)``.
    """
    params, thresholds = _split(trainable, prunable)
    out = _thresholded(params, thresholds, prunable)
    return out if masks is None else masking.apply(out, masks)


def sparse_masks(trainable: PyTree, prunable: PyTree, *, masks: PyTree | None = None) -> PyTree:
    """The learned masks ``W_hat != 0`` on prunable leaves, all-True elsewhere.

    The masks of :mod:`ltjax.core.masking` (the params' structure, bool), e.g. to
    compare STR's budget with IMP's or to retrain the learned ticket.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import soft_threshold
        >>> kernel = jnp.array([[0.5, -2.0], [1.5, -0.25]])
        >>> params = {"Dense_0": {"kernel": kernel, "bias": jnp.zeros(2)}}
        >>> selection = masking.prunable(params)
        >>> r = soft_threshold.str_reparam(selection, s_init=0.0)    # shrink by sigmoid(0) = 0.5
        >>> one, _ = r.init(params, jax.random.key(0))               # one member's trainable tree
        >>> ticket = soft_threshold.sparse_masks(one, selection)
        >>> ticket["Dense_0"]["kernel"]
        Array([[False,  True],
               [ True, False]], dtype=bool)
    """
    weights = sparse_weights(trainable, prunable, masks=masks)
    flags = _flags(prunable)
    leaves = [w != 0 if f else jnp.ones(jnp.shape(w), bool)
              for w, f in zip(jax.tree.leaves(weights), flags, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(weights), leaves)


def learned_densities(trainable: PyTree, prunable: PyTree, *,
                      masks: PyTree | None = None) -> dict[str, float]:
    """``{layer_path: kept share}`` of the exported weights of one member.

    Args:
      trainable: one member's trainable tree (index a stacked state first).
      prunable: the tree the reparameterisation was built with.
      masks: IMP masks of the params (None: none).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import soft_threshold
        >>> kernel = jnp.array([[0.5, -2.0], [1.5, -0.25]])
        >>> params = {"Dense_0": {"kernel": kernel, "bias": jnp.zeros(2)}}
        >>> selection = masking.prunable(params)
        >>> r = soft_threshold.str_reparam(selection, s_init=0.0)    # shrink by sigmoid(0) = 0.5
        >>> one, _ = r.init(params, jax.random.key(0))               # one member's trainable tree
        >>> soft_threshold.learned_densities(one, selection)
        {'Dense_0/kernel': 0.5}
    """
    return masking.layer_densities(sparse_masks(trainable, prunable, masks=masks), prunable)


def learned_sparsity(trainable: PyTree, prunable: PyTree, *, masks: PyTree | None = None) -> float:
    """The overall share of exactly-zero prunable weights of one member (the paper's sparsity).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import soft_threshold
        >>> kernel = jnp.array([[0.5, -2.0], [1.5, -0.25]])
        >>> params = {"Dense_0": {"kernel": kernel, "bias": jnp.zeros(2)}}
        >>> selection = masking.prunable(params)
        >>> r = soft_threshold.str_reparam(selection, s_init=0.0)    # shrink by sigmoid(0) = 0.5
        >>> one, _ = r.init(params, jax.random.key(0))               # one member's trainable tree
        >>> soft_threshold.learned_sparsity(one, selection)
        0.5
    """
    ticket = sparse_masks(trainable, prunable, masks=masks)
    return 1.0 - float(masking.density(ticket, prunable))


def calibrate_weight_decay(
    sparsities_at: Callable[[np.ndarray], np.ndarray], target: float, *, low: float,
    high: float, points: int = 4, rounds: int = 3,
) -> tuple[float, list[tuple[float, float]]]:
    """The weight decay whose STR run reaches ``target`` sparsity, by bracketed grid search.

    STR's sparsity rises with the threshold's weight decay (Kusupati et al. 2020,
    Sec. 4; users of the reference ask for this search). Each round evaluates
    ``points`` log-spaced decays in the current bracket *at once* (as the
    members of one program: ``sparsities_at`` receives an array of decays and
    returns their sparsities), keeps the two neighbours around ``target`` and
    refines; a bisection in log space with ``points`` probes per round.
    Assumes sparsity is non-decreasing in the decay.

    Args:
      sparsities_at: ``decays [K] -> sparsities [K]`` (e.g. trains K members).
      target: the sparsity wanted, in (0, 1).
      low: the smallest decay of the bracket (> 0).
      high: the largest (> low).
      points: decays per round (>= 2).
      rounds: rounds (>= 1).

    Returns:
      ``(decay, history)``: the evaluated decay whose sparsity is nearest
      ``target`` (in log-sparsity-gap), and every ``(decay, sparsity)`` evaluated.

    Raises:
      ValueError: bad arguments (naming them), or ``sparsities_at`` returning
        the wrong shape.

    Example:
        >>> from ltjax.methods import soft_threshold
        >>> def sparsities_at(decays):     # e.g. train one STR member per decay, as one program
        ...     return decays / (decays + 1e-3)          # a toy, rising with the decay
        >>> decay, history = soft_threshold.calibrate_weight_decay(
        ...     sparsities_at, 0.9, low=1e-5, high=1e-1)
        >>> round(decay, 4), len(history)               # 3 rounds of 4 decays
        (0.0092, 12)
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be a sparsity in (0, 1), got {target!r}")
    if not 0.0 < low < high:
        raise ValueError(f"low and high must satisfy 0 < low < high, got {low!r}, {high!r}")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an int >= 2, got {points!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    history: list[tuple[float, float]] = []
    lo, hi = float(low), float(high)
    for _ in range(rounds):
        decays = np.geomspace(lo, hi, points)
        sparsities = np.asarray(sparsities_at(decays), np.float64)
        if sparsities.shape != decays.shape:
            raise ValueError(f"sparsities_at must return one sparsity per decay, shape "
                             f"{decays.shape}; got {sparsities.shape}")
        history += list(zip(decays.tolist(), sparsities.tolist(), strict=True))
        above = np.nonzero(sparsities >= target)[0]
        i = int(above[0]) if above.size else points - 1  # first decay reaching the target
        lo, hi = float(decays[max(i - 1, 0)]), float(decays[max(i, 1)])
    best = min(history, key=lambda h: (abs(h[1] - target), h[0]))
    return best[0], history
