"""Permutation symmetries of networks and Git Re-Basin matching.

Ainsworth, Hayase & Srinivasa, "Git Re-Basin: Merging Models modulo
Permutation Symmetries" (ICLR 2023). Hidden units of a network can be
permuted without changing its function; matching finds the permutation of
model B that brings it closest to model A, after which the two can be
interpolated or averaged.

- :class:`PermutationSpec`: which axis of which leaf each permutation acts
  on, keyed on path names (``'Dense_0/kernel'``); the bundled models build
  theirs next to their definition (:func:`ltjax.models.permutation_spec`).
- :func:`check_spec`: the spec against a params (and batch-stats) tree.
- :func:`apply_permutation`: permute params, batch statistics or masks alike
  (:func:`check_perms`: the perms are permutations of the right lengths).
- :func:`weight_matching`: the paper's Algorithm 1 (coordinate descent over
  permutations in random order, each step a linear assignment), with
  restarts that keep the best objective.
- :func:`activation_matching`: one assignment per permutation from the
  correlation of the two models' activations on the same data (section 3.1).
- :func:`ste_matching`: the straight-through estimator (Algorithm 3).
- :func:`merge_many`: MergeMany (Algorithm 2): match each model to the mean
  of the others until no permutation changes.

Permutations are dicts ``{name: int array [n]}``; ``perm[i] = j`` means unit
``j`` of model B moves to position ``i`` (``jnp.take(w, perm, axis)``), so
unit ``i`` of the permuted B faces unit ``i`` of A.

Plain pytrees in, no flax (the bundled models build their specs with
:func:`ltjax.models.permutation_spec`). The examples use a two-layer MLP with 4
hidden units ``h``; model B is model A with its hidden units shuffled:

    >>> import jax.numpy as jnp
    >>> from ltjax.core import matching
    >>> spec = matching.PermutationSpec(params={
    ...     "Dense_0/kernel": (None, "h"), "Dense_0/bias": ("h",),
    ...     "Dense_1/kernel": ("h", None), "Dense_1/bias": (None,)})
    >>> params_a = {"Dense_0": {"kernel": jnp.arange(8.0).reshape(2, 4), "bias": jnp.zeros(4)},
    ...             "Dense_1": {"kernel": jnp.arange(8.0).reshape(4, 2), "bias": jnp.zeros(2)}}
    >>> params_b = matching.apply_permutation(spec, {"h": jnp.array([2, 0, 3, 1])}, params_a)
    >>> result = matching.weight_matching(spec, params_a, params_b, seed=0)
    >>> result.perms                                   # undoes the shuffle
    {'h': Array([1, 3, 0, 2], dtype=int32)}
    >>> params_b_aligned = matching.apply_permutation(spec, result.perms, params_b)
    >>> bool(jnp.array_equal(params_b_aligned["Dense_0"]["kernel"], params_a["Dense_0"]["kernel"]))
    True
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from ltjax.core import tree

PyTree = Any
Perms = dict[str, jax.Array]
#: What an axis of a leaf carries: no permutation (None), a permutation name,
#: or ``(name, repeats)`` for an axis of ``repeats * n`` entries read as
#: ``[repeats, n]`` (channels fastest), e.g. the input axis of a dense layer
#: after flattening NHWC feature maps.
Axis = str | tuple[str, int] | None

SOLVERS = ("scipy", "optax")


# ----------------------------------------------------------------------------
# The spec
# ----------------------------------------------------------------------------


def _parse_axis(entry: Axis, where: str) -> tuple[str | None, int]:
    if entry is None:
        return None, 1
    if isinstance(entry, str):
        return entry, 1
    if (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)
            and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 1):
        return entry[0], entry[1]
    raise ValueError(
        f"{where}: an axis must be None, a permutation name or (name, repeats >= 1), got {entry!r}"
    )


@dataclasses.dataclass(frozen=True)
class PermutationSpec:
    """Which permutation acts on which axis of which leaf.

    Attributes:
      params: ``{path: (axis_0, axis_1, ...)}``, one entry per axis of the
        params leaf at ``path`` (``'Dense_0/kernel'``): ``None`` (not
        permuted), a permutation name, or ``(name, repeats)``. Every leaf of
        the params has an entry.
      batch_stats: the same for the batch statistics (``'BatchNorm_0/mean'``).
      activations: optional ``{permutation: (module path, ...)}``: modules
        whose output's last axis carries the permutation, for
        :func:`activation_matching` and REPAIR.

    Example:
        >>> from ltjax.core import matching
        >>> spec = matching.PermutationSpec(params={
        ...     "Dense_0/kernel": (None, "h"), "Dense_0/bias": ("h",),
        ...     "Dense_1/kernel": ("h", None), "Dense_1/bias": (None,)})
        >>> spec.perm_to_axes["h"]
        (('Dense_0/bias', 0), ('Dense_0/kernel', 1), ('Dense_1/kernel', 0))
    """

    params: Mapping[str, tuple[Axis, ...]]
    batch_stats: Mapping[str, tuple[Axis, ...]] = dataclasses.field(default_factory=dict)
    activations: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for field in ("params", "batch_stats"):
            axes = {}
            for path, entries in getattr(self, field).items():
                if not isinstance(path, str) or not isinstance(entries, tuple | list):
                    raise ValueError(f"spec {field} must map path strings to tuples of axes, "
                                     f"got {path!r}: {entries!r}")
                for entry in entries:
                    _parse_axis(entry, f"spec {field}[{path!r}]")
                axes[path] = tuple(entries)
            object.__setattr__(self, field, dict(sorted(axes.items())))
        both = sorted(set(self.params) & set(self.batch_stats))
        if both:
            raise ValueError(f"spec paths {both} are in both params and batch_stats")
        names = set(self.perm_to_axes)
        activations = {}
        for perm, modules in self.activations.items():
            if perm not in names:
                raise ValueError(
                    f"spec activations name permutation {perm!r}, which no axis carries "
                    f"(permutations: {sorted(names)})"
                )
            activations[perm] = tuple(modules)
        object.__setattr__(self, "activations", dict(sorted(activations.items())))

    def __hash__(self) -> int:  # a static argument of jitted functions
        key = (tuple(self.params.items()), tuple(self.batch_stats.items()),
               tuple(self.activations.items()))
        return key.__hash__()

    @functools.cached_property
    def axes(self) -> dict[str, tuple[Axis, ...]]:
        """Params and batch-stats entries in one map (their paths never collide)."""
        return {**self.params, **self.batch_stats}

    @functools.cached_property
    def perm_to_axes(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """``{permutation: ((params path, axis), ...)}``, names and paths sorted."""
        out: dict[str, list[tuple[str, int]]] = {}
        for path, entries in self.params.items():
            for axis, entry in enumerate(entries):
                name, _ = _parse_axis(entry, path)
                if name is not None:
                    out.setdefault(name, []).append((path, axis))
        for path, entries in self.batch_stats.items():
            for entry in entries:
                name, _ = _parse_axis(entry, path)
                if name is not None and name not in out:
                    raise ValueError(f"permutation {name!r} of batch_stats[{path!r}] acts on "
                                     "no params axis")
        return {name: tuple(out[name]) for name in sorted(out)}

    @property
    def names(self) -> tuple[str, ...]:
        """The permutation names, sorted."""
        return tuple(self.perm_to_axes)


def check_spec(spec: PermutationSpec, params: PyTree, batch_stats: PyTree | None = None,
               ) -> dict[str, int]:
    """Check ``spec`` against a params tree (and, if given, its batch statistics).

    Every leaf must have a spec entry and every spec entry a leaf, with one
    axis entry per dimension, and all the axes one permutation acts on must
    have the same size.

    Returns:
      ``{permutation: size}``.

    Raises:
      ValueError: naming the paths missing from the spec or from the trees,
        a leaf whose number of axes differs, or a permutation with
        inconsistent axis sizes (listing them).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import matching
        >>> spec = matching.PermutationSpec(params={
        ...     "Dense_0/kernel": (None, "h"), "Dense_0/bias": ("h",),
        ...     "Dense_1/kernel": ("h", None), "Dense_1/bias": (None,)})
        >>> params_a = {"Dense_0": {"kernel": jnp.arange(8.0).reshape(2, 4), "bias": jnp.zeros(4)},
        ...             "Dense_1": {"kernel": jnp.arange(8.0).reshape(4, 2), "bias": jnp.zeros(2)}}
        >>> matching.check_spec(spec, params_a)
        {'h': 4}
    """
    if not isinstance(spec, PermutationSpec):
        raise TypeError(f"spec must be a PermutationSpec, got {type(spec).__name__}")
    sizes: dict[str, dict[int, list[str]]] = {}
    for tree_name, sub in (("params", params), ("batch_stats", batch_stats)):
        if sub is None:
            continue
        entries_of = getattr(spec, tree_name)
        shapes = {path: tuple(np.shape(leaf))
                  for path, leaf in zip(tree.names(sub), jax.tree.leaves(sub), strict=True)}
        missing = sorted(set(shapes) - set(entries_of))
        if missing:
            raise ValueError(
                f"{tree_name} leaves {missing} have no entry in the permutation spec "
                "(give unpermuted leaves an entry of None axes)"
            )
        unknown = sorted(set(entries_of) - set(shapes))
        if unknown:
            raise ValueError(f"spec {tree_name} paths {unknown} are not leaves of the {tree_name}")
        for path, shape in shapes.items():
            entries = entries_of[path]
            if len(entries) != len(shape):
                raise ValueError(
                    f"spec {tree_name}[{path!r}] has {len(entries)} axis entries but "
                    f"{tree_name}['{path}'] has shape {shape}"
                )
            for axis, name, size, _ in _permuted_axes(entries, shape, path,
                                                      f"spec {tree_name}[{path!r}]"):
                sizes.setdefault(name, {}).setdefault(size, []).append(f"{path}[{axis}]")
    for name, by_size in sizes.items():
        if len(by_size) > 1:
            detail = "; ".join(f"size {n}: {', '.join(w)}" for n, w in sorted(by_size.items()))
            raise ValueError(f"permutation {name!r} acts on axes of inconsistent sizes ({detail})")
    return {name: next(iter(sizes[name])) for name in sorted(sizes)}


def _check_names(spec: PermutationSpec, mapping: Mapping[str, Any], name: str) -> None:
    missing = sorted(set(spec.names) - set(mapping))
    unknown = sorted(set(mapping) - set(spec.names))
    if missing or unknown:
        raise ValueError(
            f"{name} must have one entry per permutation of the spec {list(spec.names)}; "
            f"missing {missing}, unknown {unknown}"
        )


#: Where a permutation acts: ``(path, axis, n, repeats)`` per leaf axis.
_Where = list[tuple[str, int, int, int]]


def _spec_where(spec: PermutationSpec, sizes: Mapping[str, int]) -> dict[str, _Where]:
    """The params axes of each permutation, of the sizes :func:`check_spec` found."""
    return {name: [(path, axis, sizes[name], _parse_axis(spec.params[path][axis], path)[1])
                   for path, axis in spec.perm_to_axes[name]] for name in sizes}


def _tree_where(spec: PermutationSpec, tree_: PyTree, leading_axes: int = 0,
                ) -> dict[str, _Where]:
    """The axes of ``tree_``'s leaves each permutation acts on; checks the leaves fit the spec."""
    out: dict[str, _Where] = {}
    for path, leaf in zip(tree.names(tree_), jax.tree.leaves(tree_), strict=True):
        if path not in spec.axes:
            raise ValueError(f"leaf {path!r} of the tree has no entry in the permutation spec")
        entries = spec.axes[path]
        shape = tuple(np.shape(leaf))[leading_axes:]
        if len(entries) != len(shape):
            raise ValueError(
                f"spec axes[{path!r}] has {len(entries)} entries but the leaf has shape "
                f"{np.shape(leaf)} (for stacked trees, jax.vmap apply_permutation)"
            )
        for axis, name, size, repeats in _permuted_axes(entries, shape, path,
                                                          f"spec axes[{path!r}]"):
            out.setdefault(name, []).append((path, axis, size, repeats))
    return out


def _permuted_axes(entries: Sequence[Any], shape: tuple[int, ...], path: str,
                   label: str) -> list[tuple[int, str, int, int]]:
    """``(axis, permutation, size, repeats)`` of each permuted axis of a leaf's spec entries.

    Raises:
      ValueError: an axis whose size is not a multiple of its entry's repeats
        (the message starts with ``label``).
    """
    out = []
    for axis, entry in enumerate(entries):
        name, repeats = _parse_axis(entry, path)
        if name is None:
            continue
        if shape[axis] % repeats:
            raise ValueError(f"{label}[{axis}] = {entry!r}: size {shape[axis]} "
                             f"is not a multiple of {repeats}")
        out.append((axis, name, shape[axis] // repeats, repeats))
    return out


def _brief(values: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def _check_perm(label: str, perm: Any, where: _Where, *, leading_axes: int = 0) -> None:
    """One permutation ``[*leading, n]``: integer dtype, rank, length, and values when concrete."""
    acts = f" (it permutes axis {where[0][1]} of {where[0][0]!r})" if where else ""
    dtype = np.dtype(perm.dtype) if hasattr(perm, "dtype") else np.asarray(perm).dtype
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"{label} must have an integer dtype, got {dtype}{acts}")
    shape = tuple(np.shape(perm))
    if len(shape) != 1 + leading_axes:
        hint = " (for stacked perms, jax.vmap the call)" if len(shape) > 1 + leading_axes else ""
        raise ValueError(
            f"{label} must have shape [{', '.join(['S'] * leading_axes + ['n'])}], "
            f"got {shape}{acts}{hint}")
    n = shape[-1]
    for path, axis, size, repeats in where:
        if n != size:
            read = f", read as [{repeats}, {size}]" if repeats > 1 else ""
            raise ValueError(f"{label} has length {n}, expected {size}: it permutes axis {axis} "
                             f"of {path!r}{read}")
    if isinstance(perm, jax.core.Tracer):
        return  # traced (inside jit or vmap): only the shape and dtype are known
    rows = np.asarray(perm).reshape(-1, n)
    for index, row in enumerate(rows):
        if np.array_equal(np.sort(row), np.arange(n)):
            continue
        inside = row[(row >= 0) & (row < n)]
        counts = np.bincount(inside, minlength=n)
        problems = []
        outside = sorted({int(v) for v in row if not 0 <= v < n})
        if outside:
            problems.append(f"out of range {_brief(outside)}")
        repeated = np.flatnonzero(counts > 1).tolist()
        if repeated:
            problems.append("repeated " + _brief([f"{v} ({counts[v]}x)" for v in repeated]))
        missing = np.flatnonzero(counts == 0).tolist()
        if missing:
            problems.append(f"missing {_brief(missing)}")
        at = (f"[{', '.join(str(int(i)) for i in np.unravel_index(index, shape[:-1]))}]"
              if leading_axes else "")
        raise ValueError(f"{label}{at} is not a permutation of range({n}){acts}: "
                         f"{'; '.join(problems)}")


def _check_perms(spec: PermutationSpec, perms: Mapping[str, Any], where: Mapping[str, _Where],
                 name: str = "perms", *, leading_axes: int = 0) -> None:
    """Names of ``perms`` against ``spec``; then each one's dtype, rank, length and values.

    ``where``: the leaf axes each permutation acts on (its length is checked
    against them; a permutation absent from it gets no length check).
    """
    _check_names(spec, perms, name)
    for perm in spec.names:
        _check_perm(f"{name}[{perm!r}]", perms[perm], where.get(perm, []),
                    leading_axes=leading_axes)


def check_perms(spec: PermutationSpec, perms: Mapping[str, Any], tree_: PyTree = None, *,
                leading_axes: int = 0) -> None:
    """Raise ``ValueError`` unless ``perms`` are permutations for ``spec`` (and ``tree_``).

    One entry per permutation of the spec, each an integer array ``[n]``
    that holds every ``0..n-1`` once; with ``tree_`` (params, batch
    statistics or masks), ``n`` must be the size of every axis it permutes.
    :func:`apply_permutation` runs this check itself, but inside ``jax.jit``
    or ``jax.vmap`` the perms are traced and only their shape and dtype can be
    checked: check stacked perms ``[S, n]`` with ``leading_axes=1`` before
    vmapping over them.

    Args:
      spec: the :class:`PermutationSpec`.
      perms: ``{name: int array [*leading, n]}``.
      tree_: optional tree the perms will permute (its leaves with the same
        ``leading_axes``).
      leading_axes: stacked axes in front of each permutation (and leaf).

    Raises:
      ValueError: naming the permutation and the leaf axis it acts on: a
        missing or unknown name, a non-integer dtype, a wrong length, or
        values that are not a permutation (listing the repeated, missing or
        out-of-range ones).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import matching
        >>> spec = matching.PermutationSpec(params={
        ...     "Dense_0/kernel": (None, "h"), "Dense_0/bias": ("h",),
        ...     "Dense_1/kernel": ("h", None), "Dense_1/bias": (None,)})
        >>> params_a = {"Dense_0": {"kernel": jnp.arange(8.0).reshape(2, 4), "bias": jnp.zeros(4)},
        ...             "Dense_1": {"kernel": jnp.arange(8.0).reshape(4, 2), "bias": jnp.zeros(2)}}
        >>> matching.check_perms(spec, {"h": jnp.zeros(4, jnp.int32)}, params_a)
        Traceback (most recent call last):
        ValueError: perms['h'] is not a permutation of range(4) (it permutes axis 0 of
        'Dense_0/bias'): repeated [0 (4x)]; missing [1, 2, 3]
    """
    where = {} if tree_ is None else _tree_where(spec, tree_, leading_axes)
    _check_perms(spec, perms, where, leading_axes=leading_axes)


def _permute_leaf(leaf: jax.Array, entries: Sequence[Axis], perms: Mapping[str, jax.Array],
                  ) -> jax.Array:
    split, where = _split(leaf, _signature(entries))
    return _permuted(split, _axis_perms(entries, perms), where).reshape(leaf.shape)


def apply_permutation(spec: PermutationSpec, perms: Mapping[str, jax.Array], tree_: PyTree,
                      ) -> PyTree:
    """Permute ``tree_`` (params, batch statistics or masks) by ``perms``.

    Leaf ``path`` becomes ``take(leaf, perms[p], axis)`` along each axis the
    spec gives a permutation ``p``. Masks have the params' paths, so
    ``apply_permutation(spec, perms, masks)`` keeps them aligned with the
    permuted params. For trees stacked over seeds ``[S, ...]``, ``jax.vmap``
    it (perms stacked ``[S, n]`` or broadcast).

    ``perms`` are checked before any work (:func:`check_perms`): each must be
    an integer array whose length is the size of every axis of ``tree_`` it
    permutes and, when concrete, hold every ``0..n-1`` once. Inside
    ``jax.jit`` or ``jax.vmap`` (stacked perms ``[S, n]``) the perms are
    traced and only their shape and dtype are checked: check stacked perms
    with ``check_perms(spec, perms, leading_axes=1)`` before the vmap.

    Raises:
      ValueError: a leaf of ``tree_`` has no spec entry or a different number
        of axes; ``perms`` lacks a permutation, has one of a non-integer
        dtype or of the wrong length (naming the leaf axis it permutes), or
        one that is not a permutation (e.g. all zeros: naming the repeated
        and missing values).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import matching
        >>> spec = matching.PermutationSpec(params={
        ...     "Dense_0/kernel": (None, "h"), "Dense_0/bias": ("h",),
        ...     "Dense_1/kernel": ("h", None), "Dense_1/bias": (None,)})
        >>> params_a = {"Dense_0": {"kernel": jnp.arange(8.0).reshape(2, 4), "bias": jnp.zeros(4)},
        ...             "Dense_1": {"kernel": jnp.arange(8.0).reshape(4, 2), "bias": jnp.zeros(2)}}
        >>> import jax
        >>> perms = {"h": jnp.array([2, 0, 3, 1])}
        >>> params_b = matching.apply_permutation(spec, perms, params_a)
        >>> params_b["Dense_0"]["kernel"]                   # the columns in the order 2, 0, 3, 1
        Array([[2., 0., 3., 1.],
               [6., 4., 7., 5.]], dtype=float32)
        >>> masks = jax.tree.map(lambda w: w > 4, params_a)        # masks are permuted alike
        >>> matching.apply_permutation(spec, perms, masks)["Dense_0"]["kernel"]
        Array([[False, False, False, False],
               [ True, False,  True,  True]], dtype=bool)
    """
    _check_perms(spec, perms, _tree_where(spec, tree_))
    return _apply_permutation(spec, {name: jnp.asarray(p) for name, p in perms.items()}, tree_)


@functools.partial(jax.jit, static_argnums=0)
def _apply_permutation(spec: PermutationSpec, perms: Perms, tree_: PyTree) -> PyTree:
    def one(path: str, leaf: Any) -> Any:  # leaves checked by _tree_where
        return _permute_leaf(jnp.asarray(leaf), spec.axes[path], perms)

    return tree.map_with_name(one, tree_)


def identity_perms(sizes: Mapping[str, int]) -> Perms:
    """``{name: arange(n)}`` for ``sizes`` as returned by :func:`check_spec`."""
    return {name: jnp.arange(n, dtype=jnp.int32) for name, n in sizes.items()}


def random_perms(key: jax.Array, sizes: Mapping[str, int]) -> Perms:
    """Uniformly random permutations, one stream per name (sorted order).

    The key comes first, as in every random function of ltjax (before
    2026-12-07 it came second: the old order raises a ``TypeError``).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import matching
        >>> spec = matching.PermutationSpec(params={
        ...     "Dense_0/kernel": (None, "h"), "Dense_0/bias": ("h",),
        ...     "Dense_1/kernel": ("h", None), "Dense_1/bias": (None,)})
        >>> params_a = {"Dense_0": {"kernel": jnp.arange(8.0).reshape(2, 4), "bias": jnp.zeros(4)},
        ...             "Dense_1": {"kernel": jnp.arange(8.0).reshape(4, 2), "bias": jnp.zeros(2)}}
        >>> import jax
        >>> perms = matching.random_perms(jax.random.key(0), matching.check_spec(spec, params_a))
        >>> sorted(perms["h"].tolist())
        [0, 1, 2, 3]
    """
    if isinstance(key, Mapping) or not isinstance(sizes, Mapping):
        raise TypeError("random_perms(key, sizes): the key first, then the sizes "
                        "{permutation name: size} (check_spec's result)")
    names = sorted(sizes)
    keys = jax.random.split(key, len(names))
    return {name: jax.random.permutation(k, sizes[name]).astype(jnp.int32)
            for name, k in zip(names, keys, strict=True)}


def inverse(perms: Mapping[str, jax.Array]) -> Perms:
    """The inverse permutations: ``apply(inverse(p), apply(p, t)) == t``.

    Raises:
      ValueError: a permutation of a non-integer dtype or not 1-D, or (when
        concrete) not a permutation of ``range(n)``, named by its key.
    """
    for name, p in perms.items():
        _check_perm(f"perms[{name!r}]", p, [])
    return {name: jnp.argsort(jnp.asarray(p)).astype(jnp.int32) for name, p in perms.items()}


# ----------------------------------------------------------------------------
# Linear assignment
# ----------------------------------------------------------------------------


@jax.jit
def _optax_assignment(similarity: jax.Array) -> jax.Array:
    rows, cols = optax.assignment.hungarian_algorithm(-similarity)
    # optax returns the pairs ordered by column (scipy: by row).
    return jnp.full((similarity.shape[0],), -1, jnp.int32).at[rows].set(cols.astype(jnp.int32))


def solve_assignment(similarity: jax.Array, solver: str = "scipy") -> jax.Array:
    """The permutation ``perm`` maximising ``sum_i similarity[i, perm[i]]``.

    Args:
      similarity: ``[n, n]``.
      solver: ``'scipy'`` (``scipy.optimize.linear_sum_assignment``, on the
        host) or ``'optax'`` (``optax.assignment.hungarian_algorithm``,
        jitted, on the array's device).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import matching
        >>> matching.solve_assignment(jnp.array([[0.0, 1.0], [1.0, 0.0]]))
        Array([1, 0], dtype=int32)
    """
    if solver == "scipy":
        rows, cols = scipy.optimize.linear_sum_assignment(np.asarray(similarity), maximize=True)
        assert np.array_equal(rows, np.arange(len(rows)))
        return jnp.asarray(cols, jnp.int32)
    if solver == "optax":
        return _optax_assignment(jnp.asarray(similarity, jnp.float32))
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


# ----------------------------------------------------------------------------
# Weight matching
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MatchResult:
    """What a matching returns.

    Attributes:
      perms: ``{name: int32 [n]}``, to apply to model B.
      objective: ``sum over leaves <params_a, permuted params_b>`` (weight
        matching) or the summed activation inner products (activation
        matching), for the returned ``perms``.
      iterations: sweeps over all permutations of the best restart.
      objectives: the final objective of every restart.
      history: extra per-method trace (e.g. the STE losses).
    """

    perms: Perms
    objective: float
    iterations: int = 0
    objectives: tuple[float, ...] = ()
    history: tuple[float, ...] = ()


def _split(leaf: jax.Array, signature: tuple) -> tuple[jax.Array, list[int]]:
    """``leaf`` with each repeated axis split into ``[repeats, n]``; where each axis went."""
    shape, where = [], []
    for size, repeats in zip(leaf.shape, signature, strict=True):
        if repeats is not None and repeats > 1:
            shape += [repeats, size // repeats]
        else:
            shape.append(size)
        where.append(len(shape) - 1)
    return leaf.reshape(shape), where


def _permuted(w: jax.Array, perms: tuple, where: list[int]) -> jax.Array:
    for k, perm in enumerate(perms):
        if perm is not None:
            w = jnp.take(w, perm, axis=where[k])
    return w


def _gram_along(w_a: jax.Array, w_b: jax.Array, axis: int) -> jax.Array:
    """``[n, n]``: contract every axis but ``axis``."""
    others = tuple(i for i in range(w_a.ndim) if i != axis)
    return jnp.tensordot(w_a, w_b, axes=(others, others), precision=jax.lax.Precision.HIGHEST)


# The jitted kernels below take a shape-only signature -- ``repeats`` per axis,
# None where no permutation acts -- so layers of the same shape share one compile.
# ``perms[k]`` permutes axis ``k`` of ``w_b`` (None: no permutation there).


@functools.partial(jax.jit, static_argnames=("signature", "axis"))
def _contribution(w_a: jax.Array, w_b: jax.Array, perms: tuple, signature: tuple,
                  axis: int) -> jax.Array:
    """One leaf's term of a similarity matrix: ``[n, n]``, unit i of A vs unit j of B."""
    w_a, where = _split(w_a, signature)
    w_b, _ = _split(w_b, signature)
    return _gram_along(w_a, _permuted(w_b, perms, where), where[axis])


@functools.partial(jax.jit, static_argnames=("signature", "axis", "dep_axis"))
def _contribution_update(w_a: jax.Array, w_b: jax.Array, perms: tuple, rows: jax.Array,
                         new_rows: jax.Array, old_rows: jax.Array, valid: jax.Array,
                         signature: tuple, axis: int, dep_axis: int) -> jax.Array:
    """The change of :func:`_contribution` when axis ``dep_axis``'s permutation changed.

    Only positions ``rows`` of that axis moved (from units ``old_rows`` of B
    to ``new_rows``; ``valid`` zeroes the padding), so only they are contracted.
    ``perms`` holds the other axes' (unchanged) permutations.
    """
    w_a, where = _split(w_a, signature)
    w_b, _ = _split(w_b, signature)
    w_b = _permuted(w_b, perms, where)
    dep = where[dep_axis]
    a = jnp.take(w_a, rows, axis=dep)
    diff = jnp.take(w_b, new_rows, axis=dep) - jnp.take(w_b, old_rows, axis=dep)
    shape = [1] * diff.ndim
    shape[dep] = valid.shape[0]
    return _gram_along(a, diff * valid.reshape(shape), where[axis])


def _signature(entries: Sequence[Axis]) -> tuple:
    return tuple(None if e is None else _parse_axis(e, "")[1] for e in entries)


def _axis_perms(entries: Sequence[Axis], perms: Mapping[str, jax.Array],
                skip_axis: int | None = None) -> tuple:
    return tuple(None if e is None or k == skip_axis else perms[_parse_axis(e, "")[0]]
                 for k, e in enumerate(entries))


def _flat(params: PyTree) -> dict[str, jax.Array]:
    return {path: jnp.asarray(leaf) for path, leaf in
            zip(tree.names(params), jax.tree.leaves(params), strict=True)}


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_pair(spec: PermutationSpec, params_a: PyTree, params_b: PyTree) -> dict[str, int]:
    tree.check_same_structure(params_b, params_a, name="params_b", reference_name="params_a")
    return check_spec(spec, params_a)


def objective(spec: PermutationSpec, params_a: PyTree, params_b: PyTree,
              perms: Mapping[str, Any]) -> float:
    """The weight-matching objective ``sum over params leaves <w_a, P(w_b)>``, in float64.

    What :func:`weight_matching` maximises (its ``MatchResult.objective``
    holds the same value, summed from its similarity matrices).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import matching
        >>> spec = matching.PermutationSpec(params={
        ...     "Dense_0/kernel": (None, "h"), "Dense_0/bias": ("h",),
        ...     "Dense_1/kernel": ("h", None), "Dense_1/bias": (None,)})
        >>> params_a = {"Dense_0": {"kernel": jnp.arange(8.0).reshape(2, 4), "bias": jnp.zeros(4)},
        ...             "Dense_1": {"kernel": jnp.arange(8.0).reshape(4, 2), "bias": jnp.zeros(2)}}
        >>> params_b = matching.apply_permutation(spec, {"h": jnp.array([2, 0, 3, 1])}, params_a)
        >>> matching.objective(spec, params_a, params_b, {"h": jnp.arange(4)})
        230.0
        >>> matching.objective(spec, params_a, params_b, {"h": jnp.array([1, 3, 0, 2])})  # aligned
        280.0
    """
    sizes = _check_pair(spec, params_a, params_b)
    _check_perms(spec, perms, _spec_where(spec, sizes))
    host = {name: np.asarray(p) for name, p in perms.items()}
    total = 0.0
    for path, w_a, w_b in zip(tree.names(params_a), jax.tree.leaves(params_a),
                              jax.tree.leaves(params_b), strict=True):
        w_a, w_b = np.asarray(w_a, np.float64), np.asarray(w_b, np.float64)
        for axis, entry in enumerate(spec.params[path]):
            if entry is None:
                continue
            name, repeats = _parse_axis(entry, path)
            split = w_b.reshape(*w_b.shape[:axis], repeats, -1, *w_b.shape[axis + 1:])
            w_b = np.take(split, host[name], axis=axis + 1).reshape(w_a.shape)
        total += float(np.vdot(w_a, w_b))
    return total


#: Incremental updates of a cached similarity term: only when at most this
#: share of a permutation's entries moved, and at most this many times in a
#: row before a full recomputation (bounding the accumulated rounding).
_UPDATE_SHARE = 0.25
_MAX_UPDATES = 8


class _Term:
    """A cached similarity term: one params leaf's contribution to one permutation."""

    def __init__(self, axis: int, entries: tuple, w_a: jax.Array, w_b: jax.Array):
        self.axis, self.w_a, self.w_b = axis, w_a, w_b
        self.signature = _signature(entries)
        self.deps = {k: _parse_axis(e, "")[0] for k, e in enumerate(entries)
                     if e is not None and k != axis}
        self.value: jax.Array | None = None
        self.used: dict[int, tuple[int, jax.Array]] = {}  # axis -> (version, perm)
        self.updates = 0

    def inputs(self, versions: Mapping[str, int]) -> tuple:
        return tuple(versions[name] for name in self.deps.values())

    def current(self, perms: Perms, versions: Mapping[str, int]) -> jax.Array:
        now = {k: (versions[name], perms[name]) for k, name in self.deps.items()}
        if self.value is not None:
            moved = [k for k in now if now[k][0] != self.used[k][0]]
            if not moved:
                return self.value
            if len(moved) == 1 and self.updates < _MAX_UPDATES:
                k = moved[0]
                new, old = np.asarray(now[k][1]), np.asarray(self.used[k][1])
                rows = np.flatnonzero(new != old)
                if len(rows) <= _UPDATE_SHARE * len(new):
                    self.value = self.value + self._update(now, k, rows, new, old)
                    self.used, self.updates = now, self.updates + 1
                    return self.value
        axis_perms = tuple(now[k][1] if k in now else None for k in range(len(self.signature)))
        self.value = _contribution(self.w_a, self.w_b, axis_perms, self.signature, self.axis)
        self.used, self.updates = now, 0
        return self.value

    def _update(self, now: dict, dep_axis: int, rows: np.ndarray, new: np.ndarray,
                old: np.ndarray) -> jax.Array:
        bucket = max(16, 1 << int(np.ceil(np.log2(max(len(rows), 1)))))
        padded = np.zeros(bucket, np.int32)
        padded[:len(rows)] = rows
        valid = np.zeros(bucket, np.float32)
        valid[:len(rows)] = 1.0
        others = tuple(now[k][1] if k in now and k != dep_axis else None
                       for k in range(len(self.signature)))
        return _contribution_update(
            self.w_a, self.w_b, others, jnp.asarray(padded), jnp.asarray(new[padded]),
            jnp.asarray(old[padded]), jnp.asarray(valid), self.signature, self.axis, dep_axis)


def _descend(spec: PermutationSpec, flat_a: dict, flat_b: dict, perms: Perms, *,
             order_seed: Sequence[int], max_iter: int, tolerance: float, solver: str,
             ) -> tuple[Perms, int, float]:
    """Algorithm 1 of Git Re-Basin from ``perms``; returns ``(perms, sweeps, objective)``.

    Each leaf's term of a permutation's similarity matrix is cached: when the
    permutation of its other axis moved only a few units, the term is updated
    by contracting just those rows; a permutation whose terms did not change
    since it was last solved is not solved again (the solver would return the
    same answer). Late sweeps, where few units still move, cost a fraction
    of a full recomputation.
    """
    names = list(spec.names)
    perms = dict(perms)
    versions = dict.fromkeys(names, 0)
    terms = {name: [_Term(axis, spec.params[path], flat_a[path], flat_b[path])
                     for path, axis in spec.perm_to_axes[name]] for name in names}
    solved_with: dict[str, tuple] = {}
    order_rng = np.random.default_rng(list(order_seed))
    # Every params leaf with a permuted axis, through one of its terms:
    # <w_a, P(w_b)> = sum_i term[i, perm[i]].
    by_leaf = {}
    for name in names:
        for term, (path, _) in zip(terms[name], spec.perm_to_axes[name], strict=True):
            by_leaf.setdefault(path, (name, term))
    constant = sum(float(np.vdot(np.asarray(flat_a[p], np.float64),
                                 np.asarray(flat_b[p], np.float64)))
                   for p in spec.params if p not in by_leaf)

    def total_objective() -> float:
        total = constant
        for name, term in by_leaf.values():
            value = np.asarray(term.current(perms, versions), np.float64)
            total += value[np.arange(value.shape[0]), np.asarray(perms[name])].sum()
        return float(total)

    current = total_objective() if tolerance > 0 else 0.0
    sweeps = 0
    for sweep in range(max_iter):
        sweeps = sweep + 1
        changed = False
        for index in order_rng.permutation(len(names)):
            name = names[index]
            inputs = tuple(term.inputs(versions) for term in terms[name])
            if solved_with.get(name) == inputs:
                continue  # same matrix as when last solved: same answer, no change
            solved_with[name] = inputs
            total = sum(np.asarray(term.current(perms, versions), np.float64)
                        for term in terms[name])
            new = solve_assignment(total, solver)
            rows = np.arange(total.shape[0])
            old_value = total[rows, np.asarray(perms[name])].sum()
            new_value = total[rows, np.asarray(new)].sum()
            if new_value > old_value + 1e-12:
                perms[name] = new
                versions[name] += 1
                changed = True
        if not changed:
            break
        if tolerance > 0:
            previous, current = current, total_objective()
            if current - previous <= tolerance * abs(previous):
                break
    return perms, sweeps, total_objective()


def weight_matching(
    spec: PermutationSpec, params_a: PyTree, params_b: PyTree, *, seed: int = 0,
    max_iter: int = 100, tolerance: float = 0.0, restarts: int = 1, solver: str = "scipy",
    init_perms: Mapping[str, jax.Array] | None = None,
) -> MatchResult:
    """Permutations of ``params_b`` maximising ``sum_leaves <params_a, P(params_b)>``.

    Git Re-Basin's Algorithm 1 (Ainsworth et al. 2023, section 3.2): starting
    from the identity (or ``init_perms``), sweep over the permutations in a
    random order; for each, hold the others fixed and solve the linear
    assignment on ``sum_layers W_a W_b^T`` (the other axes of each layer
    permuted by their current permutations); accept it if it improves that
    permutation's objective; stop when a sweep changes nothing. The
    similarity matrices are computed by jitted code on the params' device,
    and only those whose inputs changed are recomputed.

    Each restart ``r`` uses its own random sweep orders, drawn from
    ``numpy.random.default_rng([seed, r])`` (restart 0 is the paper's single
    descent); the restart with the highest objective is returned. Coordinate
    descent can get stuck in poor local optima for some orders (e.g. on
    ResNets); restarts escape them.

    Args:
      spec: the models' :class:`PermutationSpec`.
      params_a: the reference model (kept fixed).
      params_b: the model to permute; same structure and shapes.
      seed: a non-negative int; the same seed gives the same permutations.
      max_iter: most sweeps per restart.
      tolerance: also stop when a sweep raises the whole objective by no
        more than ``tolerance * |objective|`` (0: only when nothing changes).
      restarts: number of descents with different orders.
      solver: ``'scipy'`` (default) or ``'optax'`` (see :func:`solve_assignment`).
      init_perms: starting permutations (default identity), e.g. the previous
        answer when matching again after a small change.

    Returns:
      A :class:`MatchResult`.

    Raises:
      ValueError: params of different structure, a spec that does not fit
        them, a bad ``seed``/``max_iter``/``restarts``/``tolerance``/``solver``.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import matching
        >>> spec = matching.PermutationSpec(params={
        ...     "Dense_0/kernel": (None, "h"), "Dense_0/bias": ("h",),
        ...     "Dense_1/kernel": ("h", None), "Dense_1/bias": (None,)})
        >>> params_a = {"Dense_0": {"kernel": jnp.arange(8.0).reshape(2, 4), "bias": jnp.zeros(4)},
        ...             "Dense_1": {"kernel": jnp.arange(8.0).reshape(4, 2), "bias": jnp.zeros(2)}}
        >>> params_b = matching.apply_permutation(spec, {"h": jnp.array([2, 0, 3, 1])}, params_a)
        >>> result = matching.weight_matching(spec, params_a, params_b, seed=0, restarts=2)
        >>> result.perms, result.objective, len(result.objectives)
        ({'h': Array([1, 3, 0, 2], dtype=int32)}, 280.0, 2)
        >>> params_b = matching.apply_permutation(spec, result.perms, params_b)
    """
    seed = _check_seed(seed)
    for name, value in (("max_iter", max_iter), ("restarts", restarts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    sizes = _check_pair(spec, params_a, params_b)
    if init_perms is not None:
        _check_perms(spec, init_perms, _spec_where(spec, sizes), name="init_perms")
    start = identity_perms(sizes) if init_perms is None else {
        k: jnp.asarray(v, jnp.int32) for k, v in init_perms.items()}
    flat_a, flat_b = _flat(params_a), _flat(params_b)
    best = None
    objectives = []
    for restart in range(restarts):
        perms, sweeps, value = _descend(spec, flat_a, flat_b, start, order_seed=(seed, restart),
                                        max_iter=max_iter, tolerance=tolerance, solver=solver)
        objectives.append(value)
        if best is None or value > best[1]:
            best = (perms, value, sweeps)
    perms, value, sweeps = best
    return MatchResult(perms=dict(sorted(perms.items())), objective=value, iterations=sweeps,
                       objectives=tuple(objectives))


# ----------------------------------------------------------------------------
# Activation matching
# ----------------------------------------------------------------------------


SIMILARITIES = ("inner", "pearson")


def activation_moments(activations_a: Mapping[str, Any],
                       activations_b: Mapping[str, Any]) -> dict[str, dict[str, jax.Array]]:
    """Sums of the activations' first and cross moments, per permutation.

    For ``Z_A, Z_B`` ``[N, n]`` (every axis but the last flattened into rows;
    several arrays of one permutation stacked as more rows): ``count`` N,
    ``sum_a``, ``sum_b`` ``[n]``, ``sum_aa``, ``sum_bb`` ``[n]`` (squares) and
    ``sum_ab = Z_A^T Z_B`` ``[n, n]``. Moments of batches add up
    (:func:`add_moments`), so a whole training set is matched batch by batch.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import matching
        >>> z_a = jnp.arange(24.0).reshape(6, 4) % 5            # [N, n] activations of model A
        >>> acts_a, acts_b = {"h": z_a}, {"h": z_a[:, jnp.array([2, 0, 3, 1])]}   # B: shuffled
        >>> m = matching.activation_moments(acts_a, acts_b)
        >>> m = matching.add_moments(m, matching.activation_moments(acts_a, acts_b))  # 2nd batch
        >>> int(m["h"]["count"]), m["h"]["sum_ab"].shape
        (12, (4, 4))
    """
    out = {}
    for name in activations_a:
        group_a, group_b = _as_list(activations_a[name]), _as_list(activations_b[name])
        if len(group_a) != len(group_b):
            raise ValueError(
                f"activations_a[{name!r}] has {len(group_a)} arrays, activations_b {len(group_b)}")
        total = None
        for z_a, z_b in zip(group_a, group_b, strict=True):
            if z_a.shape != z_b.shape:
                raise ValueError(
                    f"activations for {name!r} differ in shape: {z_a.shape} vs {z_b.shape}")
            term = _moments(z_a, z_b)
            total = term if total is None else add_moments({"x": total}, {"x": term})["x"]
        out[name] = total
    return out


def add_moments(moments_a: Mapping[str, Mapping[str, jax.Array]],
                moments_b: Mapping[str, Mapping[str, jax.Array]]) -> dict:
    """The moments of two batches together (:func:`activation_moments`)."""
    return {name: {k: moments_a[name][k] + moments_b[name][k] for k in moments_a[name]}
            for name in moments_a}


@jax.jit
def _moments(z_a: jax.Array, z_b: jax.Array) -> dict[str, jax.Array]:
    n = z_a.shape[-1]
    a = z_a.reshape(-1, n).astype(jnp.float32)
    b = z_b.reshape(-1, n).astype(jnp.float32)
    return {"count": jnp.asarray(a.shape[0], jnp.float32),
            "sum_a": a.sum(0), "sum_b": b.sum(0),
            "sum_aa": (a * a).sum(0), "sum_bb": (b * b).sum(0),
            "sum_ab": jnp.matmul(a.T, b, precision=jax.lax.Precision.HIGHEST)}


def similarity_of(moments: Mapping[str, jax.Array], kind: str = "inner") -> jax.Array:
    """The ``[n, n]`` unit similarity of accumulated moments.

    ``'inner'``: ``E[Z_A^T Z_B]``, the mean inner product of unit i of A and
    unit j of B over the rows (Git Re-Basin section 3.1; the reference's MLP
    and ResNet scripts). ``'pearson'``: their Pearson correlation
    ``cov_ij / (std_i std_j)`` (the reference's VGG script); a unit that
    never varies (a dead ReLU) has correlation 0 with every unit (the
    reference divides by zero there).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import matching
        >>> z_a = jnp.arange(24.0).reshape(6, 4) % 5            # [N, n] activations of model A
        >>> acts_a, acts_b = {"h": z_a}, {"h": z_a[:, jnp.array([2, 0, 3, 1])]}   # B: shuffled
        >>> similarity = matching.similarity_of(matching.activation_moments(acts_a, acts_b)["h"],
        ...                                     "pearson")
        >>> similarity.shape                     # [n_a, n_b]
        (4, 4)
        >>> matching.solve_assignment(similarity)
        Array([1, 3, 0, 2], dtype=int32)
    """
    if kind not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {kind!r}")
    count = moments["count"]
    e_ab = moments["sum_ab"] / count
    if kind == "inner":
        return e_ab
    mean_a, mean_b = moments["sum_a"] / count, moments["sum_b"] / count
    var_a = jnp.maximum(moments["sum_aa"] / count - mean_a ** 2, 0.0)
    var_b = jnp.maximum(moments["sum_bb"] / count - mean_b ** 2, 0.0)
    cov = e_ab - mean_a[:, None] * mean_b[None, :]
    std = jnp.sqrt(var_a)[:, None] * jnp.sqrt(var_b)[None, :]
    return jnp.where(std > 0, cov / jnp.where(std > 0, std, 1.0), 0.0)


def activation_matching(
    spec: PermutationSpec, activations_a: Mapping[str, Any] | None = None,
    activations_b: Mapping[str, Any] | None = None, *, solver: str = "scipy",
    similarity: str = "inner", moments: Mapping[str, Mapping[str, jax.Array]] | None = None,
) -> MatchResult:
    """Match units by the similarity of their activations on the same data.

    Git Re-Basin section 3.1: with ``Z_A, Z_B`` the activations ``[N, n]`` of
    a permutation's units on the same inputs, ``P`` maximises
    ``<P, E[Z_A^T Z_B]>`` (equivalently minimises ``||Z_A - Z_B P^T||^2``);
    ``similarity='pearson'`` maximises the summed Pearson correlations
    instead (:func:`similarity_of`). Each permutation is solved once, on its
    own. The reference scripts match post-ReLU activations over the whole
    training set: :func:`ltjax.models.activations` captures post-ReLU values,
    and ``moments`` accumulated batch by batch (:func:`activation_moments`,
    :func:`add_moments`) cover any number of examples.

    Args:
      spec: the :class:`PermutationSpec` (for the names; sizes are checked).
      activations_a: ``{permutation: array [..., n] or a sequence of such}``
        from model A; all axes but the last are examples/positions. Several
        arrays per permutation (e.g. every block output of a residual
        stream) count as more rows.
      activations_b: the same from model B on the same inputs.
      solver: ``'scipy'`` or ``'optax'``.
      similarity: ``'inner'`` (the paper) or ``'pearson'``.
      moments: accumulated moments instead of ``activations_a/b``.

    Returns:
      A :class:`MatchResult` (``objective``: the summed matched similarities).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import matching
        >>> z_a = jnp.arange(24.0).reshape(6, 4) % 5            # [N, n] activations of model A
        >>> acts_a, acts_b = {"h": z_a}, {"h": z_a[:, jnp.array([2, 0, 3, 1])]}   # B: shuffled
        >>> spec = matching.PermutationSpec(params={"Dense_0/kernel": (None, "h")})
        >>> matching.activation_matching(spec, acts_a, acts_b).perms
        {'h': Array([1, 3, 0, 2], dtype=int32)}

        A model's post-ReLU activations come from :func:`ltjax.models.activations`
        (``models.activations(model, spec, variables, x)``).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if moments is None:
        if activations_a is None or activations_b is None:
            raise ValueError("give activations_a and activations_b, or moments")
        for name, acts in (("activations_a", activations_a), ("activations_b", activations_b)):
            _check_names(spec, acts, name)
        moments = activation_moments(activations_a, activations_b)
    else:
        _check_names(spec, moments, "moments")
    perms, total = {}, 0.0
    for name in spec.names:
        matrix = similarity_of(moments[name], similarity)
        perms[name] = solve_assignment(matrix, solver)
        total += float(jnp.sum(matrix[jnp.arange(matrix.shape[0]), perms[name]]))
    return MatchResult(perms=perms, objective=total)


def _as_list(value: Any) -> list[jax.Array]:
    if isinstance(value, list | tuple):
        return [jnp.asarray(v) for v in value]
    return [jnp.asarray(value)]


# ----------------------------------------------------------------------------
# Straight-through estimator
# ----------------------------------------------------------------------------


def ste_matching(
    spec: PermutationSpec, params_a: PyTree, params_b: PyTree,
    loss_fn: Callable[[PyTree, Any], jax.Array], batches: Iterable[Any], *,
    learning_rate: float = 1e-3, seed: int = 0, max_iter: int = 100,
    solver: str = "scipy", optimizer: str = "adam", momentum: float = 0.9,
    keep: str = "best",
) -> MatchResult:
    """Straight-through-estimator matching, Git Re-Basin Algorithm 3.

    Learns a proxy ``theta`` (initialised to ``params_a``) whose projection
    onto the permutations of ``params_b``, ``P = weight_matching(theta,
    params_b)``, minimises the loss of the midpoint ``(params_a + P(params_b)) / 2``.
    The forward pass uses ``P(params_b)``; the gradient flows straight through
    to ``theta`` (``theta + stop_gradient(P(params_b) - theta)``), and each
    projection starts from the previous ``P``. The reference
    (samuela/git-re-basin ``src/mnist_mlp_ste2.py``) updates ``theta`` by SGD
    with momentum 0.9 at 1e-2 on batches of 1000 for 250 epochs, and keeps
    the projection whose batch loss was the lowest seen (``keep='best'``,
    the default here); the paper's text mentions Adam.

    Args:
      spec: as for :func:`weight_matching`.
      params_a: as for :func:`weight_matching`.
      params_b: as for :func:`weight_matching`.
      loss_fn: ``fn(params, batch) -> scalar`` (e.g. cross-entropy of the
        model applied to the batch); it is jitted.
      batches: an iterable of batches; one step per batch.
      learning_rate: the optimiser's learning rate.
      seed: for the projections, as for :func:`weight_matching`.
      max_iter: for the projections, as for :func:`weight_matching`.
      solver: for the projections, as for :func:`weight_matching`.
      optimizer: ``'adam'`` or ``'sgd'`` (heavy-ball ``momentum``, the reference's).
      momentum: SGD's momentum.
      keep: ``'best'``: the projection of the step with the lowest midpoint
        loss (the reference's rule); ``'last'``: the projection of the final
        proxy.

    Returns:
      The kept :class:`MatchResult` (``objective``: its weight-matching
      objective), with the midpoint loss of every step as ``history``.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import matching
        >>> spec = matching.PermutationSpec(params={
        ...     "Dense_0/kernel": (None, "h"), "Dense_0/bias": ("h",),
        ...     "Dense_1/kernel": ("h", None), "Dense_1/bias": (None,)})
        >>> params_a = {"Dense_0": {"kernel": jnp.arange(8.0).reshape(2, 4), "bias": jnp.zeros(4)},
        ...             "Dense_1": {"kernel": jnp.arange(8.0).reshape(4, 2), "bias": jnp.zeros(2)}}
        >>> import jax
        >>> params_b = matching.apply_permutation(spec, {"h": jnp.array([2, 0, 3, 1])}, params_a)
        >>> def loss(p, x):                    # e.g. a cross-entropy on a batch of the task
        ...     h = jax.nn.relu(x @ p["Dense_0"]["kernel"])
        ...     return jnp.mean((h @ p["Dense_1"]["kernel"]) ** 2)
        >>> result = matching.ste_matching(spec, params_a, params_b, loss, [jnp.ones((3, 2))] * 2)
        >>> result.perms, len(result.history)          # one midpoint loss per batch
        ({'h': Array([1, 3, 0, 2], dtype=int32)}, 2)
    """
    sizes = _check_pair(spec, params_a, params_b)
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
    tx = (optax.adam(learning_rate) if optimizer == "adam"
          else optax.sgd(learning_rate, momentum=momentum or None))
    proxy = jax.tree.map(jnp.asarray, params_a)
    opt_state = tx.init(proxy)

    @jax.jit
    def step(proxy, opt_state, projected, batch):
        def midpoint_loss(proxy):
            straight = jax.tree.map(lambda t, p: t + jax.lax.stop_gradient(p - t),
                                    proxy, projected)
            midpoint = jax.tree.map(lambda a, b: (a + b) / 2, params_a, straight)
            return loss_fn(midpoint, batch)

        loss, grads = jax.value_and_grad(midpoint_loss)(proxy)
        updates, opt_state = tx.update(grads, opt_state, proxy)
        return optax.apply_updates(proxy, updates), opt_state, loss

    perms = identity_perms(sizes)
    losses = []
    best = None  # (loss, MatchResult of the projection that step used)
    for batch in batches:
        result = weight_matching(spec, proxy, params_b, seed=seed, max_iter=max_iter,
                                 solver=solver, init_perms=perms)
        perms = result.perms
        projected = apply_permutation(spec, perms, params_b)
        proxy, opt_state, loss = step(proxy, opt_state, projected, batch)
        if not np.isfinite(float(loss)):
            raise FloatingPointError(f"ste_matching: loss is {float(loss)} at step {len(losses)}")
        losses.append(float(loss))
        if best is None or losses[-1] < best[0]:
            best = (losses[-1], result)
    if not losses:
        raise ValueError("batches must hold at least one batch")
    if keep == "best":
        result = best[1]
    else:
        result = weight_matching(spec, proxy, params_b, seed=seed, max_iter=max_iter,
                                 solver=solver, init_perms=perms)
    return MatchResult(perms=result.perms, objective=result.objective,
                       iterations=len(losses), history=tuple(losses))


# ----------------------------------------------------------------------------
# Merging many models
# ----------------------------------------------------------------------------


def merge_many(
    spec: PermutationSpec, params_list: Sequence[PyTree], *, seed: int = 0, max_iter: int = 100,
    solver: str = "scipy",
) -> tuple[PyTree, list[Perms]]:
    """MergeMany (Git Re-Basin Algorithm 2): align many models to one another.

    Repeatedly, for each model ``i`` in a random order, weight-match it to
    the mean of the other (already permuted) models; stop when a round
    changes no permutation.

    Args:
      spec: the models' :class:`PermutationSpec`.
      params_list: two or more params trees of the same structure.
      seed: orders of the rounds and of each matching.
      max_iter: most rounds (and sweeps per matching).
      solver: ``'scipy'`` or ``'optax'``.

    Returns:
      ``(merged, perms)``: the mean of the permuted models and, per model,
      the permutations that align it (``perms[i]`` applies to ``params_list[i]``).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import matching
        >>> spec = matching.PermutationSpec(params={
        ...     "Dense_0/kernel": (None, "h"), "Dense_0/bias": ("h",),
        ...     "Dense_1/kernel": ("h", None), "Dense_1/bias": (None,)})
        >>> params_a = {"Dense_0": {"kernel": jnp.arange(8.0).reshape(2, 4), "bias": jnp.zeros(4)},
        ...             "Dense_1": {"kernel": jnp.arange(8.0).reshape(4, 2), "bias": jnp.zeros(2)}}
        >>> params_list = [matching.apply_permutation(spec, {"h": jnp.array(p)}, params_a)
        ...                for p in ([0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0])]   # 3 shuffles
        >>> merged, perms = matching.merge_many(spec, params_list)
        >>> aligned = [matching.apply_permutation(spec, p, m) for p, m in zip(perms, params_list)]
        >>> [bool(jnp.array_equal(m["Dense_0"]["kernel"], aligned[0]["Dense_0"]["kernel"]))
        ...  for m in aligned]
        [True, True, True]
        >>> bool(jnp.allclose(merged["Dense_0"]["kernel"], aligned[0]["Dense_0"]["kernel"]))
        True
    """
    seed = _check_seed(seed)
    if len(params_list) < 2:
        raise ValueError(f"params_list must hold at least 2 models, got {len(params_list)}")
    sizes = check_spec(spec, params_list[0])
    for i, params in enumerate(params_list[1:], start=1):
        tree.check_same_structure(params, params_list[0], name=f"params_list[{i}]",
                                  reference_name="params_list[0]")
    count = len(params_list)
    perms = [identity_perms(sizes) for _ in range(count)]
    aligned = list(params_list)
    order_rng = np.random.default_rng([seed, 1 << 20])
    for round_ in range(max_iter):
        changed = False
        for i in order_rng.permutation(count):
            others = [aligned[j] for j in range(count) if j != i]
            mean = jax.tree.map(lambda *xs: sum(xs) / len(xs), *others)
            result = weight_matching(spec, mean, params_list[i], seed=seed + round_,
                                     max_iter=max_iter, solver=solver, init_perms=perms[i])
            if any(not np.array_equal(result.perms[k], perms[i][k]) for k in sizes):
                changed = True
                perms[i] = result.perms
                aligned[i] = apply_permutation(spec, perms[i], params_list[i])
        if not changed:
            break
    merged = jax.tree.map(lambda *xs: sum(xs) / len(xs), *aligned)
    return merged, perms
