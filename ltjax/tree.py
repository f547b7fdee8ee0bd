"""Pytree path helpers: names such as ``'Dense_0/kernel'``.

Example:
    >>> params = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
    >>> names(params)
    ['Dense_0/bias', 'Dense_0/kernel']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

PyTree = Any


def path_name(path: tuple) -> str:
    """``'Dense_0/kernel'`` for a key path from ``jax.tree_util``."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def names(tree: PyTree) -> list[str]:
    """The path names of the leaves of ``tree``, in leaf order."""
    return [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def map_with_name(fn: Callable[..., Any], tree: PyTree, *rest: PyTree) -> PyTree:
    """``jax.tree.map`` whose function also receives the leaf's path name first."""
    return jax.tree_util.tree_map_with_path(lambda p, *xs: fn(path_name(p), *xs), tree, *rest)


def count(tree: PyTree) -> int:
    """Total number of elements of all leaves."""
    return int(sum(np.prod(np.shape(x), dtype=np.int64) for x in jax.tree.leaves(tree)))


def check_same_structure(
    tree: PyTree, reference: PyTree, *, name: str, reference_name: str = "params",
    leading_axes: int = 0,
) -> None:
    """Raise ``ValueError`` naming ``name`` if ``tree`` differs from ``reference``.

    Structures must be equal and every leaf's shape must equal the reference
    leaf's shape (after dropping ``leading_axes`` leading axes of ``tree``).
    """
    struct_a = jax.tree.structure(tree)
    struct_b = jax.tree.structure(reference)
    if struct_a != struct_b:
        missing = sorted(set(names(reference)) - set(names(tree)))
        extra = sorted(set(names(tree)) - set(names(reference)))
        raise ValueError(
            f"{name} must have the pytree structure of {reference_name}; "
            f"missing {missing[:5]}, unexpected {extra[:5]} (structures {struct_a} vs {struct_b})"
        )
    for path_str, leaf, ref in zip(names(tree), jax.tree.leaves(tree), jax.tree.leaves(reference),
                                   strict=True):
        shape = tuple(np.shape(leaf))[leading_axes:]
        if shape != tuple(np.shape(ref)):
            raise ValueError(
                f"{name}['{path_str}'] has shape {shape} (after {leading_axes} leading axes), "
                f"expected {tuple(np.shape(ref))} as in {reference_name}"
            )


def stack(trees: list[PyTree]) -> PyTree:
    """Stack a list of equal-structure trees along a new leading axis."""
    if not trees:
        raise ValueError("trees must be a non-empty list")
    return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *trees)


def concat(trees: list[PyTree]) -> PyTree:
    """Join stacked trees ``[S_i, ...]`` of equal structure along their leading axis.

    Example:
        >>> concat([imp_states, reinit_states])   # [S + S, ...]: the members of one program
    """
    if not trees:
        raise ValueError("trees must be a non-empty list")
    return jax.tree.map(lambda *xs: jax.numpy.concatenate(xs), *trees)


def index(tree: PyTree, i: int) -> PyTree:
    """Leaf-wise ``x[i]``: replicate ``i`` of a stacked tree (or the rows of an index array)."""
    return jax.tree.map(lambda x: x[i], tree)
