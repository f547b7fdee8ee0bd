"""Perturbations of a rewound subnetwork: what of the early phase must survive?

Frankle, Schwab & Morcos 2020, "The Early Phase of Neural Network Training"
(ICLR 2020), Section 4 and Figures 4-7: IMP with rewinding gives masks ``m``
and the weights ``W_k`` at the rewind step; perturb the kept weights of
``W_k`` and train from there under ``m``. If accuracy survives a
perturbation, what it destroyed was not what the early phase learned. The
perturbations (kept entries of the ``prunable`` leaves only; pruned entries
stay exactly zero; other leaves, e.g. biases, are ``W_k``'s):

- :func:`recombine`: the signs of one tree with the magnitudes of another,
  from ``W_k``, the init ``W_0`` or a fresh init (so ``sign(W_k) * |fresh|``
  is the paper's sign-preserving magnitude randomisation and
  ``sign(fresh) * |W_k|`` its random signs);
- :func:`flip_signs`: flip the signs of exactly ``round(share * kept)``
  random kept weights of each layer;
- :func:`shuffle_weights`: permute the kept values within a layer or within
  an output channel, optionally among same-sign values only (the sign
  pattern is then kept bitwise);
- :func:`gaussian_noise`: ``W_k + scale * sigma_l * eps`` with ``sigma_l`` the
  layer's init std (measured on the model's own initialiser, :func:`init_stds`;
  ``sqrt(2 / fan_in)`` for He normal, :func:`he_normal_stds`);
- re-initialisation is :func:`ltjax.core.rewinding.rewind` of a fresh init.

:func:`effective_std` is the x axis of the paper's figures: the std of
``W' - W_k`` over the kept weights. There is no public reference code for
these perturbations (open_lth has none); the definitions follow the paper's
text.

Every function is pure, jittable and vmappable (``prunable`` and the
options are static); the same key gives the same output.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from ltjax.core import masking
    >>> from ltjax.methods import perturbations
    >>> kernel = jnp.array([[0.5, -1.0], [2.0, -0.25]])
    >>> params_k = {"Dense_0": {"kernel": kernel, "bias": jnp.zeros(2)}}   # step k
    >>> masks = {"Dense_0": {"kernel": jnp.array([[True, True], [True, False]]),
    ...                      "bias": jnp.ones(2, bool)}}
    >>> selection = masking.prunable(params_k)
    >>> stds = perturbations.he_normal_stds(params_k, selection)
    >>> noisy = perturbations.gaussian_noise(jax.random.key(0), params_k, masks, scale=1.0,
    ...                                      stds=stds)
    >>> noisy["Dense_0"]["kernel"][1, 1], noisy["Dense_0"]["bias"]     # pruned weights stay 0
    (Array(0., dtype=float32), Array([0., 0.], dtype=float32))
    >>> effective = perturbations.effective_std(noisy, params_k, masks)   # about the init std, 1
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

PyTree = Any

#: The scopes of :func:`shuffle_weights`.
SHUFFLE_WITHIN = ("layer", "channel")


def _selection(params_k: PyTree, masks: PyTree, prunable: PyTree | None) -> list[bool]:
    tree.check_same_structure(masks, params_k, name="masks", reference_name="params_k")
    if prunable is None:
        prunable = masking.prunable(params_k)
    if jax.tree.structure(prunable) != jax.tree.structure(params_k):
        raise ValueError(f"prunable must have the structure of params_k (masking.prunable); "
                         f"got leaves {tree.names(prunable)[:6]}")
    flags = [bool(f) for f in jax.tree.leaves(prunable)]
    if not any(flags):
        raise ValueError("prunable has no True leaf: nothing to perturb")
    return flags


def _map_selected(fn, params_k: PyTree, masks: PyTree, prunable: PyTree | None,
                  *others: PyTree) -> PyTree:
    """``fn(index, w_k, mask, *other_leaves)`` on selected leaves, masked; ``w_k`` elsewhere."""
    flags = _selection(params_k, masks, prunable)
    leaves_k = jax.tree.leaves(params_k)
    leaves_m = jax.tree.leaves(masks)
    rest = [jax.tree.leaves(o) for o in others]
    out = []
    for i, (w, m, f) in enumerate(zip(leaves_k, leaves_m, flags, strict=True)):
        if f:
            new = fn(i, w, m, *(r[i] for r in rest))
            out.append(jnp.where(m, new, jnp.zeros_like(w)).astype(w.dtype))
        else:
            out.append(w)
    return jax.tree.unflatten(jax.tree.structure(params_k), out)


def recombine(params_k: PyTree, masks: PyTree, *, signs: PyTree, magnitudes: PyTree,
              prunable: PyTree | None = None) -> PyTree:
    """``sign(signs) * |magnitudes|`` on the kept prunable weights.

    Args:
      params_k: the rewound weights ``W_k`` (the non-prunable leaves are kept).
      masks: the subnetwork's masks (params' structure, bool).
      signs: the tree whose signs are taken (``W_k``, the init, a fresh init).
      magnitudes: the tree whose magnitudes are taken.
      prunable: static bools of the leaves to perturb (default: every kernel).

    Returns:
      The recombined params; pruned entries are exactly zero.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import perturbations
        >>> kernel = jnp.array([[0.5, -1.0], [2.0, -0.25]])
        >>> params_k = {"Dense_0": {"kernel": kernel, "bias": jnp.zeros(2)}}   # step k
        >>> masks = {"Dense_0": {"kernel": jnp.array([[True, True], [True, False]]),
        ...                      "bias": jnp.ones(2, bool)}}
        >>> fresh = {"Dense_0": {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.zeros(2)}}
        >>> perturbations.recombine(params_k, masks, signs=params_k,
        ...                         magnitudes=fresh)["Dense_0"]["kernel"]     # sign-preserving
        Array([[ 3., -3.],
               [ 3.,  0.]], dtype=float32)
    """
    tree.check_same_structure(signs, params_k, name="signs", reference_name="params_k")
    tree.check_same_structure(magnitudes, params_k, name="magnitudes", reference_name="params_k")
    return _map_selected(lambda _, w, m, s, a: jnp.sign(s).astype(w.dtype) * jnp.abs(a).astype(
        w.dtype), params_k, masks, prunable, signs, magnitudes)


def _check_share(share: Any) -> float:
    if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be a number in [0, 1], got {share!r}")
    return float(share)


def _ranks(key: jax.Array, groups: jax.Array) -> jax.Array:
    """A uniformly random rank of each entry within its group (0 .. size - 1), flat."""
    noise = jax.random.uniform(key, groups.shape)
    order = jnp.lexsort((noise, groups))          # grouped, random within a group
    starts = jnp.searchsorted(groups[order], groups[order], side="left")
    ranks = jnp.empty_like(order).at[order].set(jnp.arange(order.size) - starts)
    return ranks


def flip_signs(key: jax.Array, params_k: PyTree, masks: PyTree, *, share: float,
               prunable: PyTree | None = None) -> PyTree:
    """Flip the signs of exactly ``round(share * kept_l)`` random kept weights of each layer.

    ``round`` is round-half-to-even. Layer ``l`` uses ``fold_in(key, l)``.

    Raises:
      ValueError: ``share`` outside [0, 1].

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import perturbations
        >>> kernel = jnp.array([[0.5, -1.0], [2.0, -0.25]])
        >>> params_k = {"Dense_0": {"kernel": kernel, "bias": jnp.zeros(2)}}   # step k
        >>> masks = {"Dense_0": {"kernel": jnp.array([[True, True], [True, False]]),
        ...                      "bias": jnp.ones(2, bool)}}
        >>> flipped = perturbations.flip_signs(jax.random.key(0), params_k, masks, share=0.5)
        >>> jnp.abs(flipped["Dense_0"]["kernel"])          # the magnitudes are kept
        Array([[0.5, 1. ],
               [2. , 0. ]], dtype=float32)
    """
    share = _check_share(share)

    def flip(i, w, m):
        flat_m = m.reshape(-1)
        groups = jnp.where(flat_m, 0, 1)
        ranks = _ranks(jax.random.fold_in(key, i), groups)
        count = jnp.round(share * flat_m.sum().astype(jnp.float32)).astype(ranks.dtype)
        flipped = flat_m & (ranks < count)
        return jnp.where(flipped, -w.reshape(-1), w.reshape(-1)).reshape(w.shape)

    return _map_selected(flip, params_k, masks, prunable)


def shuffle_weights(key: jax.Array, params_k: PyTree, masks: PyTree, *, within: str = "layer",
                    same_sign: bool = False, prunable: PyTree | None = None) -> PyTree:
    """Randomly permute the kept values within each layer or each output channel.

    The mask is unchanged and each layer's (channel's) multiset of kept values
    is kept; with ``same_sign`` positive values move only to positions of
    positive values and negative ones to negative ones (the sign pattern is
    kept bitwise, the paper's Figure 6). The output channel is the kernel's
    last axis (flax's ``[..., in, out]``). Layer ``l`` uses ``fold_in(key, l)``.

    Raises:
      ValueError: ``within`` not in :data:`SHUFFLE_WITHIN`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import perturbations
        >>> kernel = jnp.array([[0.5, -1.0], [2.0, -0.25]])
        >>> params_k = {"Dense_0": {"kernel": kernel, "bias": jnp.zeros(2)}}   # step k
        >>> masks = {"Dense_0": {"kernel": jnp.array([[True, True], [True, False]]),
        ...                      "bias": jnp.ones(2, bool)}}
        >>> shuffled = perturbations.shuffle_weights(jax.random.key(0), params_k, masks,
        ...                                          within="channel", same_sign=True)
        >>> shuffled["Dense_0"]["kernel"][1, 1]            # pruned weights stay pruned
        Array(0., dtype=float32)
    """
    if within not in SHUFFLE_WITHIN:
        raise ValueError(f"within must be one of {SHUFFLE_WITHIN}, got {within!r}")

    def shuffle(i, w, m):
        flat_w, flat_m = w.reshape(-1), m.reshape(-1)
        channel = (jnp.arange(flat_w.size) % w.shape[-1]) if within == "channel" else jnp.zeros(
            flat_w.size, jnp.int32)
        sign = jnp.sign(flat_w).astype(jnp.int32) + 1 if same_sign else jnp.zeros_like(channel)
        # Pruned entries form one group of their own: they trade places with pruned ones only.
        groups = jnp.where(flat_m, channel * 3 + sign, -1)
        order_src = jnp.lexsort((jax.random.uniform(jax.random.fold_in(key, i), groups.shape),
                                 groups))
        order_dst = jnp.lexsort((jnp.arange(groups.size), groups))
        out = jnp.zeros_like(flat_w).at[order_dst].set(flat_w[order_src])
        return out.reshape(w.shape)

    return _map_selected(shuffle, params_k, masks, prunable)


def he_normal_stds(params: PyTree, prunable: PyTree | None = None) -> PyTree:
    """``sqrt(2 / fan_in)`` for each prunable kernel (fan in = all axes but the last), else 0.

    The std of He-normal kernels (OpenLTH's init); :func:`init_stds` measures
    any model's own initialiser.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.methods import perturbations
        >>> perturbations.he_normal_stds({"Dense_0": {"kernel": jnp.zeros((784, 300))}})
        {'Dense_0': {'kernel': 0.0505...}}
    """
    if prunable is None:
        prunable = masking.prunable(params)
    return jax.tree.map(lambda w, f: math.sqrt(2.0 / math.prod(np.shape(w)[:-1])) if f else 0.0,
                        params, prunable)


def init_stds(init: Callable[[jax.Array], PyTree], key: jax.Array, *,
              prunable: PyTree | None = None, draws: int = 64) -> PyTree:
    """Each prunable leaf's init std, ``sigma_l``, measured on ``draws`` draws of ``init``.

    Frankle, Schwab & Morcos 2020 (Section 4) scale Gaussian noise by "the
    standard deviation of the initialization distribution" of each layer:
    whatever the model's initialiser (He, Glorot, truncated normal...), the std
    pooled over ``draws`` independent inits of the leaf (relative error about
    ``1 / sqrt(2 * draws * size)``: 0.3 % for a 1000-weight layer at 64 draws).
    Other leaves get 0.

    Args:
      init: ``key -> params`` (e.g. ``lambda k: models.init(model, k, shape)[0]``).
      key: the draws' key (a function of the config: the same stds on every run).
      prunable: static bools of the measured leaves (default: every kernel).
      draws: how many inits are pooled (>= 2).

    Example:
        >>> import jax
        >>> from ltjax.methods import perturbations
        >>> init = lambda k: {"w": {"kernel": jax.random.normal(k, (50, 4)) * 0.5}}
        >>> round(float(perturbations.init_stds(init, jax.random.key(0))["w"]["kernel"]), 1)
        0.5
    """
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise ValueError(f"draws must be an integer >= 2, got {draws!r}")
    samples = jax.vmap(init)(jax.random.split(key, draws))
    if prunable is None:
        prunable = masking.prunable(jax.tree.map(lambda x: x[0], samples))
    return jax.tree.map(lambda w, f: float(np.std(np.asarray(w, np.float64))) if f else 0.0,
                        samples, prunable)


def gaussian_noise(key: jax.Array, params_k: PyTree, masks: PyTree, *, scale: float,
                   stds: PyTree, prunable: PyTree | None = None) -> PyTree:
    """``W_k + scale * sigma_l * eps`` (``eps ~ N(0, 1)``) on the kept prunable weights.

    Args:
      key: layer ``l`` uses ``fold_in(key, l)``.
      params_k: the rewound weights.
      masks: the subnetwork's masks.
      scale: the noise in units of each layer's init std (>= 0; 0 is the identity).
      stds: a tree of the params' structure with each layer's init std
        (:func:`init_stds`, :func:`he_normal_stds`).
      prunable: static bools of the leaves to perturb (default: every kernel).

    Raises:
      ValueError: ``scale`` negative or not finite.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import perturbations
        >>> kernel = jnp.array([[0.5, -1.0], [2.0, -0.25]])
        >>> params_k = {"Dense_0": {"kernel": kernel, "bias": jnp.zeros(2)}}   # step k
        >>> masks = {"Dense_0": {"kernel": jnp.array([[True, True], [True, False]]),
        ...                      "bias": jnp.ones(2, bool)}}
        >>> stds = perturbations.he_normal_stds(params_k)
        >>> noisy = perturbations.gaussian_noise(jax.random.key(0), params_k, masks, scale=2.0,
        ...                                      stds=stds)
        >>> noisy["Dense_0"]["kernel"].shape
        (2, 2)
    """
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (
            math.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
    if jax.tree.structure(stds) != jax.tree.structure(params_k):
        raise ValueError(f"stds must have the structure of params_k (one std per leaf, "
                         f"init_stds or he_normal_stds); got leaves {tree.names(stds)[:6]}")
    scale = float(scale)
    return _map_selected(
        lambda i, w, m, s: w + (scale * s) * jax.random.normal(jax.random.fold_in(key, i),
                                                               w.shape, w.dtype),
        params_k, masks, prunable, stds)


def effective_std(perturbed: PyTree, params_k: PyTree, masks: PyTree,
                  prunable: PyTree | None = None) -> jax.Array:
    """The std of ``perturbed - params_k`` over the kept prunable weights (all layers pooled).

    The paper's "effective standard deviation" of a perturbation (Figure 7).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import perturbations
        >>> kernel = jnp.array([[0.5, -1.0], [2.0, -0.25]])
        >>> params_k = {"Dense_0": {"kernel": kernel, "bias": jnp.zeros(2)}}   # step k
        >>> masks = {"Dense_0": {"kernel": jnp.array([[True, True], [True, False]]),
        ...                      "bias": jnp.ones(2, bool)}}
        >>> perturbations.effective_std(params_k, params_k, masks)
        Array(0., dtype=float32)
    """
    flags = _selection(params_k, masks, prunable)
    tree.check_same_structure(perturbed, params_k, name="perturbed", reference_name="params_k")
    parts = [(a.astype(jnp.float32) - b.astype(jnp.float32), m)
             for a, b, m, f in zip(jax.tree.leaves(perturbed), jax.tree.leaves(params_k),
                                   jax.tree.leaves(masks), flags, strict=True) if f]
    count = sum(m.sum() for _, m in parts).astype(jnp.float32)
    mean = sum(jnp.where(m, d, 0.0).sum() for d, m in parts) / count
    var = sum(jnp.where(m, (d - mean) ** 2, 0.0).sum() for d, m in parts) / count
    return jnp.sqrt(var)
