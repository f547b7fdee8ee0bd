"""Masks as pytrees: one ``bool`` leaf per parameter, exactly the params' treedef.

Leaves that are never pruned are all-True (never ``None``, which breaks
``jax.tree.map`` and vmap axes; jaxpruner makes the same choice). The word
"mask" means an element-wise mask only.

Example:
    >>> masks = ones_like(params)
    >>> params = apply(params, masks)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ltjax import tree

PyTree = Any


def ones_like(params: PyTree) -> PyTree:
    """All-True masks with the structure and shapes of ``params`` (works on stacked params)."""
    return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), dtype=bool), params)


def apply(params: PyTree, masks: PyTree) -> PyTree:
    """``params`` with masked-out entries set to exactly zero.

    ``masks`` must have the structure of ``params``; leaves broadcast, so one
    mask can serve stacked params only if it is stacked too.

    Example:
        >>> apply({"w": jnp.ones(3)}, {"w": jnp.array([True, False, True])})
        {'w': Array([1., 0., 1.], dtype=float32)}
    """
    return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros((), x.dtype)), params, masks)


def check(masks: PyTree, params: PyTree, *, leading_axes: int = 0) -> None:
    """Raise ``ValueError`` unless ``masks`` matches ``params`` leaf for leaf.

    Args:
      masks: the masks to check (bool leaves).
      params: the reference params.
      leading_axes: how many leading (replicate) axes ``masks`` has beyond ``params``.
    """
    tree.check_same_structure(masks, params, name="masks", leading_axes=leading_axes)
    for name, leaf in zip(tree.names(masks), jax.tree.leaves(masks), strict=True):
        if jnp.result_type(leaf) != jnp.bool_:
            raise ValueError(f"masks['{name}'] must be bool, got {jnp.result_type(leaf)}")
