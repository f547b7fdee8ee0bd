"""Pytree path helpers: names such as ``'Dense_0/kernel'``, and the shared tree checks.

:func:`check_same_structure` (structure and shapes, no broadcasting) and
:func:`check_finite` (no NaN / inf) are the checks every public function of
ltjax runs on its tree arguments; their messages name the argument and the
leaf path. Bool masks are checked by :func:`ltjax.core.masking.check`, alphas by
:func:`ltjax.core.interpolation.check_alpha`.

Example:
    >>> import jax.numpy as jnp
    >>> from ltjax.core import tree
    >>> params = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
    >>> tree.names(params)
    ['Dense_0/bias', 'Dense_0/kernel']
"""

from __future__ import annotations

import dataclasses
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


def _label(name: str, path: str) -> str:
    """``name['Dense_0/kernel']``, or ``name`` itself for a single-leaf tree."""
    return f"{name}['{path}']" if path else name


def check_same_structure(
    tree: PyTree, reference: PyTree, *, name: str, reference_name: str = "params",
    leading_axes: int = 0,
) -> None:
    """Raise ``ValueError`` naming ``name`` if ``tree`` differs from ``reference``.

    The one check of "a tree that matches another" in ltjax. Structures must
    be equal and every leaf's shape must equal the reference leaf's shape
    after ``leading_axes`` leading axes of ``tree`` (no broadcasting: a
    ``(300,)`` leaf never stands for a ``(64, 300)`` one). The message names
    the first differing leaf path and both shapes, or, for different
    structures, the first leaf path where they part. Shapes are static, so
    this also runs on tracers (under ``jit``, ``vmap``, ``grad``).

    Args:
      tree: the tree to check (arrays, tracers or shape structs).
      reference: the tree it must match.
      name: how the caller's argument is called, e.g. ``'masks'``.
      reference_name: how the reference is called, e.g. ``'params'``.
      leading_axes: extra leading (replicate, task) axes of each leaf of ``tree``.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import tree
        >>> tree.check_same_structure({"k": jnp.ones(3)}, {"k": jnp.ones((2, 3))}, name="masks")
        Traceback (most recent call last):
        ValueError: masks['k'] has shape (3,), expected (2, 3) as in params
    """
    struct_a = jax.tree.structure(tree)
    struct_b = jax.tree.structure(reference)
    if struct_a != struct_b:
        names_a, names_b = names(tree), names(reference)
        first = next((i for i, (x, y) in enumerate(zip(names_a, names_b, strict=False))
                      if x != y), min(len(names_a), len(names_b)))
        at_a = repr(names_a[first]) if first < len(names_a) else "nothing"
        at_b = repr(names_b[first]) if first < len(names_b) else "nothing"
        missing = sorted(set(names_b) - set(names_a))
        extra = sorted(set(names_a) - set(names_b))
        raise ValueError(
            f"{name} must have the pytree structure of {reference_name}; leaf {first} is "
            f"{at_a} in {name} but {at_b} in {reference_name}; missing {missing[:5]}, "
            f"unexpected {extra[:5]} (structures {struct_a} vs {struct_b})"
        )
    for path_str, leaf, ref in zip(names(tree), jax.tree.leaves(tree), jax.tree.leaves(reference),
                                   strict=True):
        full = tuple(np.shape(leaf))
        want = tuple(np.shape(ref))
        if len(full) < leading_axes or full[leading_axes:] != want:
            lead = f"{leading_axes} leading axes, then " if leading_axes else ""
            raise ValueError(
                f"{_label(name, path_str)} has shape {full}, expected {lead}{want} as in "
                f"{reference_name}"
            )


def check_finite(tree: PyTree, *, name: str, allow_inf: bool = False,
                 selection: PyTree | None = None) -> None:
    """Raise ``ValueError`` naming the first leaf of ``tree`` with NaN (or infinite) entries.

    The one check of "finite values" in ltjax (scores, BatchNorm scales).
    ``allow_inf`` refuses NaN only: ``-inf`` / ``+inf`` are ordered and some
    scores use them (SynFlow's log scores of zero, negated). Only floating
    leaves are read, and only those where ``selection`` (a static tree of
    Python bools with ``tree``'s structure) is True. Tracers are skipped: the
    values exist only at run time. One host transfer of per-leaf counts.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import tree
        >>> tree.check_finite({"k": jnp.array([1.0, jnp.nan])}, name="scores")
        Traceback (most recent call last):
        ValueError: scores['k'] has 1 non-finite (NaN or inf) entries of 2: expected finite values
    """
    paths, leaves = names(tree), jax.tree.leaves(tree)
    flags = [True] * len(leaves) if selection is None else jax.tree.leaves(selection)
    if len(flags) != len(leaves):
        raise ValueError(f"selection has {len(flags)} leaves but {name} has {len(leaves)}")
    found = []
    for path_str, leaf, flag in zip(paths, leaves, flags, strict=True):
        if not flag or isinstance(leaf, jax.core.Tracer):
            continue
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)
        if not jax.numpy.issubdtype(dtype, jax.numpy.inexact):
            continue
        xp = jax.numpy if isinstance(leaf, jax.Array) else np
        bad = xp.isnan(leaf) if allow_inf else ~xp.isfinite(leaf)
        found.append((path_str, int(np.size(leaf)), xp.sum(bad)))
    counts = jax.device_get([c for *_, c in found])
    for (path_str, size, _), count in zip(found, counts, strict=True):
        if count:
            what = "NaN" if allow_inf else "non-finite (NaN or inf)"
            expected = "expected numbers (NaN has no order)" if allow_inf else (
                "expected finite values")
            raise ValueError(f"{_label(name, path_str)} has {int(count)} {what} entries of "
                             f"{size}: {expected}")


def stack(trees: list[PyTree]) -> PyTree:
    """Stack a list of equal-structure trees along a new leading axis.

    Raises:
      ValueError: a tree whose structure or leaf shapes differ from the first's
        (:func:`check_same_structure`, naming the tree, the leaf and both shapes).
    """
    if not trees:
        raise ValueError("trees must be a non-empty list")
    for i, one in enumerate(trees[1:], start=1):
        check_same_structure(one, trees[0], name=f"trees[{i}]", reference_name="trees[0]")
    return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *trees)


def concat(trees: list[PyTree]) -> PyTree:
    """Join stacked trees ``[S_i, ...]`` of equal structure along their leading axis.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import tree
        >>> imp = {"w": jnp.zeros((2, 3))}       # 2 members' stacked trees
        >>> reinit = {"w": jnp.ones((3, 3))}     # 3 more: one program of 5 members
        >>> tree.concat([imp, reinit])["w"].shape
        (5, 3)
    """
    if not trees:
        raise ValueError("trees must be a non-empty list")
    return jax.tree.map(lambda *xs: jax.numpy.concatenate(xs), *trees)


def index(tree: PyTree, i: int) -> PyTree:
    """Leaf-wise ``x[i]``: replicate ``i`` of a stacked tree (or the rows of an index array)."""
    return jax.tree.map(lambda x: x[i], tree)


@dataclasses.dataclass(frozen=True)
class Static:
    """A tree of hashable Python leaves (bools, numbers, strings) as a static jit argument.

    Equal when the structure and the leaves are equal, so a module-level jitted function
    taking, say, the prunable selection this way builds its program once per selection
    and process, where a function jitted inside a call builds it at every call.

    Example:
        >>> import functools, jax, jax.numpy as jnp
        >>> from ltjax.core import tree
        >>> @functools.partial(jax.jit, static_argnames="prunable")
        ... def kept(masks, *, prunable):
        ...     return sum(m.sum() for m, s in zip(jax.tree.leaves(masks),
        ...                                        jax.tree.leaves(prunable.value)) if s)
        >>> masks = {"bias": jnp.ones(3, bool), "kernel": jnp.ones((2, 3), bool)}
        >>> int(kept(masks, prunable=tree.Static({"bias": False, "kernel": True})))
        6
        >>> tree.Static({"a": True}) == tree.Static({"a": True}) != tree.Static({"a": False})
        True
    """

    value: PyTree = dataclasses.field(compare=False)
    #: What equality and the hash compare: the structure and the leaves.
    key: tuple = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "key", (jax.tree.structure(self.value),
                                         tuple(jax.tree.leaves(self.value))))
