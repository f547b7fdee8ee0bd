"""Masks as pytrees: one ``bool`` leaf per parameter, exactly the params' treedef.

Leaves that are never pruned are all-True (never ``None``, which breaks
``jax.tree.map`` and vmap axes; jaxpruner makes the same choice). The word
"mask" means an element-wise mask only. Which leaves *may* be pruned is a
separate static tree of Python bools, ``prunable`` (:func:`prunable`), bound
by closure and never traced.

Every function here takes plain pytrees of arrays and works on stacked
(``[S, ...]``) trees under ``jax.vmap``; nothing imports flax.

Example:
    >>> import jax.numpy as jnp
    >>> from ltjax.core import masking
    >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    >>> selection = masking.prunable(params)      # kernels of dense and conv layers
    >>> selection
    {'Dense_0': {'bias': False, 'kernel': True}}
    >>> masks = masking.ones_like(params)
    >>> params = masking.apply(params, masks)
    >>> float(masking.density(masks, selection))
    1.0
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import tree

PyTree = Any


def ones_like(params: PyTree) -> PyTree:
    """All-True masks with the structure and shapes of ``params`` (works on stacked params)."""
    return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), dtype=bool), params)


def apply(params: PyTree, masks: PyTree) -> PyTree:
    """``params`` with masked-out entries set to exactly zero.

    Raises:
      ValueError: a mask leaf that is not bool or not of its param's shape
        (no broadcasting: a ``(300,)`` mask never spreads over a ``(64, 300)``
        kernel), naming the leaf (:func:`check`).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> masking.apply({"w": jnp.ones(3)}, {"w": jnp.array([True, False, True])})
        {'w': Array([1., 0., 1.], dtype=float32)}
    """
    check(masks, params)
    return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros((), x.dtype)), params, masks)


def check_bool(masks: PyTree, *, name: str = "masks") -> None:
    """Raise ``ValueError`` naming the first leaf of ``masks`` that is not ``bool``.

    The one check of "bool masks" in ltjax: a float mask of 0.5 is neither
    kept nor pruned, so it is refused rather than read as truthy. Dtypes are
    static: this also runs on tracers.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> masking.check_bool({"k": jnp.full(3, 0.5)}, name="masks")
        Traceback (most recent call last):
        ValueError: masks['k'] must be bool, got float32
    """
    for path, leaf in zip(tree.names(masks), jax.tree.leaves(masks), strict=True):
        dtype = jnp.result_type(leaf)
        if dtype != jnp.bool_:
            label = f"{name}['{path}']" if path else name
            raise ValueError(f"{label} must be bool, got {dtype}")


def check(masks: PyTree, params: PyTree, *, leading_axes: int = 0, name: str = "masks",
          reference_name: str = "params") -> None:
    """Raise ``ValueError`` unless ``masks`` matches ``params`` leaf for leaf and is bool.

    :func:`ltjax.core.tree.check_same_structure` (same structure, same shapes, no
    broadcasting) then :func:`check_bool`; messages name the argument, the
    leaf and both shapes or the dtype. Static: also runs on tracers.

    Args:
      masks: the masks to check (bool leaves).
      params: the reference params (arrays or shape structs).
      leading_axes: how many leading (replicate) axes ``masks`` has beyond ``params``.
      name: the masks' argument name in messages.
      reference_name: the reference's argument name in messages.
    """
    tree.check_same_structure(masks, params, name=name, reference_name=reference_name,
                              leading_axes=leading_axes)
    check_bool(masks, name=name)


def prunable(
    params: PyTree, *, include: str | None = None, exclude: str | None = None,
    leading_axes: int = 0,
) -> PyTree:
    """The static tree of Python bools saying which leaves may be pruned.

    By default the kernels of dense and conv layers (leaves named ``kernel``
    with at least 2 dimensions); biases and normalisation parameters never.
    ``include`` keeps only the kernels whose path (``'Dense_0/kernel'``)
    matches the regex (``re.search``); ``exclude`` then drops matching ones
    (OpenLTH's ``pruning_layers_to_ignore``).

    Args:
      params: a params tree (arrays or shape structs).
      include: regex of kernel paths to keep in the selection.
      exclude: regex of kernel paths to leave dense.
      leading_axes: replicate axes in front of each param's own shape.

    Returns:
      A tree with the structure of ``params`` and ``bool`` leaves.

    Raises:
      ValueError: the selection is empty.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
        ...           "Dense_1": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
        >>> masking.prunable(params, exclude="Dense_1")   # leave the output layer dense
        {'Dense_0': {'bias': False, 'kernel': True}, 'Dense_1': {'bias': False, 'kernel': False}}
    """

    def select(name: str, leaf) -> bool:
        if not (name.split("/")[-1] == "kernel" and np.ndim(leaf) - leading_axes >= 2):
            return False
        if include is not None and not re.search(include, name):
            return False
        return not (exclude is not None and re.search(exclude, name))

    selection = tree.map_with_name(select, params)
    if not any(jax.tree.leaves(selection)):
        raise ValueError(
            f"no prunable leaves in params with include={include!r}, exclude={exclude!r}; "
            f"kernels are {[n for n in tree.names(params) if n.endswith('kernel')]}"
        )
    return selection


def _selected(masks: PyTree, prunable: PyTree) -> list[tuple[str, jax.Array]]:
    names = tree.names(masks)
    leaves = jax.tree.leaves(masks)
    flags = jax.tree.leaves(prunable)
    if len(flags) != len(leaves):
        raise ValueError(
            f"prunable has {len(flags)} leaves but masks have {len(leaves)}; build it with "
            "masking.prunable(params)"
        )
    return [(n, m) for n, m, f in zip(names, leaves, flags, strict=True) if f]


def counts(masks: PyTree, prunable: PyTree) -> dict[str, tuple[int, int]]:
    """``{path: (kept, total)}`` for each prunable leaf of one replicate's masks."""
    return {n: (int(np.sum(np.asarray(m))), int(np.size(m)))
            for n, m in _selected(masks, prunable)}


def layer_densities(masks: PyTree, prunable: PyTree) -> dict[str, float]:
    """``{path: kept / total}`` for each prunable leaf of one replicate's masks."""
    return {n: kept / total for n, (kept, total) in counts(masks, prunable).items()}


def num_kept(masks: PyTree, prunable: PyTree) -> jax.Array:
    """Kept prunable weights (jittable; a scalar per replicate under vmap)."""
    return sum(jnp.sum(m, dtype=jnp.int32) for _, m in _selected(masks, prunable))


def num_prunable(masks: PyTree, prunable: PyTree) -> int:
    """All prunable weights of one replicate (static)."""
    return int(sum(np.size(m) for _, m in _selected(masks, prunable)))


def density(masks: PyTree, prunable: PyTree) -> jax.Array:
    """Kept fraction of the prunable weights (jittable)."""
    return num_kept(masks, prunable) / num_prunable(masks, prunable)


def _pairs(masks_a: PyTree, masks_b: PyTree, prunable: PyTree) -> list[tuple]:
    """The selected leaves of two masks, after checking they are bool and of equal shapes."""
    check_bool(masks_a, name="masks_a")
    check(masks_b, masks_a, name="masks_b", reference_name="masks_a")
    return [(a, b) for (_, a), (_, b) in zip(_selected(masks_a, prunable),
                                             _selected(masks_b, prunable), strict=True)]


def overlap(masks_a: PyTree, masks_b: PyTree, prunable: PyTree) -> jax.Array:
    """Prunable weights kept by both masks: ``|a AND b|``.

    Raises:
      ValueError: masks that are not bool, or leaves of different shapes
        (never broadcast), naming the leaf (:func:`check`).
    """
    return sum(jnp.sum(a & b, dtype=jnp.int32) for a, b in _pairs(masks_a, masks_b, prunable))


def hamming(masks_a: PyTree, masks_b: PyTree, prunable: PyTree) -> jax.Array:
    """Prunable positions where the masks differ: ``|a XOR b|``.

    Raises:
      ValueError: masks that are not bool, or leaves of different shapes
        (never broadcast), naming the leaf (:func:`check`).
    """
    return sum(jnp.sum(a ^ b, dtype=jnp.int32) for a, b in _pairs(masks_a, masks_b, prunable))


def iou(masks_a: PyTree, masks_b: PyTree, prunable: PyTree) -> jax.Array:
    """Intersection over union of the kept prunable weights (1 when both are empty).

    Raises:
      ValueError: masks that are not bool, or leaves of different shapes
        (never broadcast), naming the leaf (:func:`check`).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> a = {"w": jnp.array([[True, True], [False, False]])}
        >>> b = {"w": jnp.array([[True, False], [True, False]])}
        >>> round(float(masking.iou(a, b, {"w": True})), 4)     # 1 kept by both, 3 by either
        0.3333
        >>> float(masking.iou(a, a, {"w": True}))
        1.0
    """
    pairs = _pairs(masks_a, masks_b, prunable)
    inter = sum(jnp.sum(a & b, dtype=jnp.int32) for a, b in pairs)
    union = sum(jnp.sum(a | b, dtype=jnp.int32) for a, b in pairs)
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0).astype(jnp.float32)
