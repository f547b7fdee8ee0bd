"""Learning neural network subspaces: lines, curves and simplexes of networks trained at once.

Wortsman, Horton, Guestrin, Farhadi & Rastegari 2021, "Learning Neural
Network Subspaces" (ICML 2021). Instead of one point, train the endpoints
``w_0, w_1`` of a line (or a quadratic Bezier curve with control point
``w_c``, or the vertices of a simplex) so that every network on it is
accurate: at each step draw a point of the subspace, run the batch through
it, and let the gradient flow back to the endpoints in proportion to their
coefficients:

- line: ``(1 - a) w_0 + a w_1``, ``a ~ U[0, 1]``;
- curve: ``(1 - a)^2 w_0 + 2 a (1 - a) w_c + a^2 w_1``, ``a ~ U[0, 1]``;
- simplex: ``sum_i c_i w_i``, ``c ~ Dirichlet(1)`` (normalised Exp(1) draws);
- layerwise (any kind): one draw per module (a conv, dense or BatchNorm
  module: the leaves sharing a parent path, such as ``Dense_0/kernel`` and
  ``Dense_0/bias``) instead of one for the whole network.

The loss adds ``beta * cos^2(w_i, w_j)`` for a random pair of points each
step (the only pair of a line), with

    cos^2(u, v) = (sum_l <u_l, v_l>)^2 / (sum_l ||u_l||^2 * sum_l ||v_l||^2)

over every kernel concatenated (:func:`ltjax.core.masking.prunable`'s default;
BatchNorm and biases are interpolated but not regularised).

Facts of the reference (apple/learning-subspaces@9e4cdcf,
``trainers/train_one_dim_subspaces.py``, ``models/modules.py``) kept here:
the endpoints are initialised independently (here: independent inits of the
model, ``w_0`` from the member's own init key, so a standard run from the
same key starts at ``w_0``); every endpoint gets the member's weight decay;
evaluation sits at the midpoint ``a = 0.5`` (the simplex's centroid) unless
asked otherwise, with BatchNorm statistics recomputed for each point
(``executor.recomputed_batch_stats``; never the running statistics of
training, which mix all points); the endpoint ensemble adds the two
endpoints' logits (the reference's ``eval_one_dim_subspaces.py``; our soups'
output ensemble averages softmax outputs instead). Not copied: the
reference's ``conv_type is "LinesConv"`` string identity test and its
``num_samples > 1`` path (one point per step here, as every paper experiment).

Example:
    A line of networks as a reparameterisation (a toy one-layer net here):

    >>> import jax, jax.numpy as jnp
    >>> from ltjax.methods import subspaces
    >>> def init_fn(key):                  # e.g. models.init(model, key, input_shape)[0]
    ...     return {"Dense_0": {"kernel": jax.random.normal(key, (3, 2)), "bias": jnp.zeros(2)}}
    >>> line = subspaces.subspace_reparam(init_fn, kind="line", beta=1.0)
    >>> trainable, _ = line.init(init_fn(jax.random.key(0)), jax.random.key(1))
    >>> sorted(trainable)                   # the two endpoints, trained at once
    ['point_0', 'point_1']
    >>> quarter = subspaces.subspace_point(trainable, 0.25, kind="line")  # any point
    >>> quarter["Dense_0"]["kernel"].shape
    (3, 2)

    Training it (not run here: it compiles a training program):

    ```python
    executor = Executor(model, dataset, recipe, reparam=line)
    state, _ = executor.train(executor.init(init_keys), None, noise_keys, num_steps=1000)
    executor.evaluate(state, "test")           # the midpoint of each member's line
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

from ltjax.core import interpolation, masking, rng, tree
from ltjax.engine import reparam

PyTree = Any

#: The kinds of subspace.
KINDS = ("line", "curve", "simplex")


def point_names(kind: str, num_points: int | None = None) -> tuple[str, ...]:
    """The keys of a subspace's trainable tree, in coefficient order.

    ``('point_0', 'point_1')`` for a line, ``('point_0', 'point_1', 'control')``
    for a curve, ``('point_0', ..., 'point_{n-1}')`` for a simplex of
    ``num_points`` vertices (default 3).

    Raises:
      ValueError: an unknown ``kind``; ``num_points`` given for a line or
        curve, or below 2 for a simplex.

    Example:
        >>> from ltjax.methods import subspaces
        >>> subspaces.point_names("curve")
        ('point_0', 'point_1', 'control')
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "line" or kind == "curve":
        if num_points is not None:
            raise ValueError(f"num_points is for simplexes only; a {kind} has fixed points "
                             f"(got num_points={num_points!r})")
        return ("point_0", "point_1") + (("control",) if kind == "curve" else ())
    n = 3 if num_points is None else num_points
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"num_points must be an integer >= 2 for a simplex, got {num_points!r}")
    return tuple(f"point_{i}" for i in range(int(n)))


def coefficients(kind: str, alpha: Any) -> jax.Array:
    """The weights of each point (in :func:`point_names` order) at ``alpha``.

    Args:
      kind: ``'line'`` or ``'curve'`` (a scalar ``alpha``, or any shape, giving
        ``[..., P]``), or ``'simplex'`` (``alpha`` is already the vertex
        weights ``[..., n]`` and is returned as an array).

    Example:
        >>> from ltjax.methods import subspaces
        >>> subspaces.coefficients("curve", 0.5)     # w_0 / 4 + w_1 / 4 + w_c / 2
        Array([0.25, 0.25, 0.5 ], dtype=float32)
    """
    a = jnp.asarray(alpha, jnp.float32)
    if kind == "line":
        return jnp.stack([1.0 - a, a], axis=-1)
    if kind == "curve":
        return jnp.stack([(1.0 - a) ** 2, a ** 2, 2.0 * a * (1.0 - a)], axis=-1)
    if kind == "simplex":
        return a
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def midpoint_coefficients(kind: str, num_points: int | None = None) -> jax.Array:
    """The evaluation point: ``a = 0.5`` on a line or curve, the centroid of a simplex."""
    names = point_names(kind, num_points)
    if kind == "simplex":
        return jnp.full((len(names),), 1.0 / len(names), jnp.float32)
    return coefficients(kind, 0.5)


def dirichlet_weights(key: jax.Array, num_points: int, shape: tuple[int, ...] = ()) -> jax.Array:
    """Dirichlet(1, ..., 1) draws ``[*shape, num_points]`` as normalised Exp(1) variables.

    Uniform on the simplex (the reference samples them this way). Each row
    sums to 1 (to float32 rounding).

    Example:
        >>> import jax
        >>> from ltjax.methods import subspaces
        >>> weights = subspaces.dirichlet_weights(jax.random.key(0), 3)
        >>> weights.shape, round(float(weights.sum()), 4)
        ((3,), 1.0)
    """
    draws = jax.random.exponential(key, (*shape, num_points), jnp.float32)
    return draws / draws.sum(axis=-1, keepdims=True)


def _check_points(trainable: PyTree, names: tuple[str, ...]) -> None:
    if not (isinstance(trainable, dict) and set(trainable) == set(names)):
        got = sorted(trainable) if isinstance(trainable, dict) else type(trainable).__name__
        raise ValueError(f"trainable must be a subspace's trainable tree with keys "
                         f"{list(names)}; got {got}")
    for name in names[1:]:  # shapes are static: also checked when traced
        tree.check_same_structure(trainable[name], trainable[names[0]],
                                  name=f"trainable['{name}']",
                                  reference_name=f"trainable['{names[0]}']")


def _check_point_alpha(kind: str, alpha: Any, name: str = "alpha") -> None:
    """A line's or curve's alpha in [0, 1]; a simplex's vertex weights in [0, 1] summing to 1.

    Values only, so skipped on tracers (:func:`ltjax.core.interpolation.check_alpha`).
    """
    interpolation.check_alpha(alpha, name)
    if kind == "simplex" and not isinstance(alpha, jax.core.Tracer):
        sums = np.sum(np.asarray(alpha, np.float64), axis=-1)
        if np.any(np.abs(sums - 1.0) > 1e-5):
            raise ValueError(f"{name} of a simplex must be vertex weights summing to 1, got "
                             f"sums {np.atleast_1d(sums).tolist()}")


def _mix(trainable: PyTree, names: tuple[str, ...], leaf_coefficients: list[jax.Array]) -> PyTree:
    """``sum_i c_i * trainable[names[i]]`` leafwise; leaf ``k`` uses ``leaf_coefficients[k]``."""
    flat = [jax.tree.leaves(trainable[name]) for name in names]
    treedef = jax.tree.structure(trainable[names[0]])
    leaves = []
    for k, coeffs in enumerate(leaf_coefficients):
        total = coeffs[0].astype(flat[0][k].dtype) * flat[0][k]
        for i in range(1, len(names)):
            total = total + coeffs[i].astype(flat[i][k].dtype) * flat[i][k]
        leaves.append(total)
    return jax.tree.unflatten(treedef, leaves)


def subspace_point(trainable: PyTree, alpha: Any, *, kind: str,
                   num_points: int | None = None) -> PyTree:
    """The network at ``alpha`` of a learned subspace (one draw for every module).

    Args:
      trainable: one member's subspace tree (:func:`point_names` keys).
      alpha: a scalar in [0, 1] for a line or curve; the vertex weights
        ``[n]`` (non-negative, summing to 1) for a simplex.
      kind: ``'line'``, ``'curve'`` or ``'simplex'``.
      num_points: a simplex's vertex count (default: the tree's).

    Returns:
      The params at that point: ``alpha = 0`` gives ``point_0`` and ``alpha = 1``
      gives ``point_1`` exactly.

    Raises:
      ValueError: points whose structure or shapes differ from ``point_0``'s
        (naming the leaf; never broadcast), an alpha outside [0, 1] or NaN (no
        extrapolation; :func:`ltjax.core.interpolation.check_alpha`), simplex
        weights not summing to 1. Alpha values are checked only when concrete
        (:func:`point_params` checks them before it vmaps).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.methods import subspaces
        >>> one = {"point_0": {"w": jnp.zeros(2)}, "point_1": {"w": jnp.ones(2)}}  # one member
        >>> subspaces.subspace_point(one, 0.25, kind="line")
        {'w': Array([0.25, 0.25], dtype=float32)}
    """
    if kind == "simplex" and num_points is None and isinstance(trainable, dict):
        num_points = len(trainable)
    names = point_names(kind, num_points)
    _check_points(trainable, names)
    _check_point_alpha(kind, alpha)
    coeffs = coefficients(kind, alpha)
    if coeffs.shape != (len(names),):
        raise ValueError(f"alpha must give {len(names)} coefficients for a {kind}, got an alpha "
                         f"of shape {jnp.shape(alpha)}")
    num_leaves = len(jax.tree.leaves(trainable[names[0]]))
    return _mix(trainable, names, [coeffs] * num_leaves)


def module_index(params: PyTree) -> list[int]:
    """The module of each leaf (flatten order): leaves sharing a parent path share a module.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.methods import subspaces
        >>> b0, k0, k1 = jnp.zeros(2), jnp.ones((3, 2)), jnp.ones((2, 1))
        >>> subspaces.module_index({"Dense_0": {"bias": b0, "kernel": k0},
        ...                         "Dense_1": {"kernel": k1}})
        [0, 0, 1]
    """
    parents: dict[str, int] = {}
    out = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        parent = tree.path_name(path[:-1])
        out.append(parents.setdefault(parent, len(parents)))
    return out


def sample_coefficients(key: jax.Array, kind: str, num_points: int | None = None, *,
                        num_modules: int = 1) -> jax.Array:
    """One training draw of coefficients ``[num_modules, P]`` (one row per module).

    ``alpha ~ U[0, 1]`` mapped by :func:`coefficients` for lines and curves;
    Dirichlet(1) for simplexes. Whole-network sampling is ``num_modules=1``.

    Example:
        >>> import jax
        >>> from ltjax.methods import subspaces
        >>> subspaces.sample_coefficients(jax.random.key(0), "line").shape   # [[1 - a, a]]
        (1, 2)
    """
    names = point_names(kind, num_points)
    if kind == "simplex":
        return dirichlet_weights(key, len(names), (num_modules,))
    return coefficients(kind, jax.random.uniform(key, (num_modules,), jnp.float32))


def cos_squared(tree_a: PyTree, tree_b: PyTree, selection: PyTree | None = None) -> jax.Array:
    """The squared cosine similarity of two networks, all selected leaves concatenated.

    ``(sum_l <a_l, b_l>)^2 / (sum_l ||a_l||^2 * sum_l ||b_l||^2)``, the
    regulariser of Wortsman et al. 2021 (Eq. 3): 1 for parallel networks, 0 for
    orthogonal ones, invariant to scaling either.

    Args:
      tree_a: a params tree.
      tree_b: a params tree of the same structure.
      selection: a static tree of bools of the leaves to include (default:
        every kernel, :func:`ltjax.core.masking.prunable`).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.methods import subspaces
        >>> params_a = {"Dense_0": {"kernel": jnp.array([[1.0, 2.0]])}}
        >>> params_b = {"Dense_0": {"kernel": jnp.array([[2.0, -1.0]])}}   # orthogonal
        >>> float(subspaces.cos_squared(params_a, params_a))
        1.0
        >>> float(subspaces.cos_squared(params_a, params_b))
        0.0
    """
    tree.check_same_structure(tree_b, tree_a, name="tree_b", reference_name="tree_a")
    if selection is None:
        selection = masking.prunable(tree_a)
    flags = jax.tree.leaves(selection)
    pairs = [(a, b) for a, b, f in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), flags,
                                       strict=True) if f]
    if not pairs:
        raise ValueError("selection has no True leaf: cos^2 needs at least one leaf")
    dot = sum(jnp.vdot(a.astype(jnp.float32), b.astype(jnp.float32)) for a, b in pairs)
    norm_a = sum(jnp.vdot(a.astype(jnp.float32), a.astype(jnp.float32)) for a, _ in pairs)
    norm_b = sum(jnp.vdot(b.astype(jnp.float32), b.astype(jnp.float32)) for _, b in pairs)
    return dot ** 2 / (norm_a * norm_b)


def subspace_reparam(
    init_fn: Callable[[jax.Array], PyTree], *, kind: str = "line",
    num_points: int | None = None, layerwise: bool = False, beta: float = 0.0,
    regularized: PyTree | None = None,
) -> reparam.Reparam:
    """A subspace as a :class:`ltjax.engine.reparam.Reparam`: its points trained at once.

    The trainable tree is ``{name: params}`` for the :func:`point_names` of
    ``kind`` (each a full copy of the model's params); the frozen tree is
    empty. ``init`` keeps the member's fresh init as ``point_0`` and draws
    every other point with ``init_fn(fold_in(key, i))`` (independent inits).
    ``apply`` in training draws :func:`sample_coefficients` from
    ``stream(key, 'alpha')`` (one row for the network, or one per module when
    ``layerwise``) and mixes the points; in evaluation it returns the midpoint
    (:func:`midpoint_coefficients`). ``penalty`` is ``beta * cos^2`` of a pair
    of points drawn from ``stream(key, 'pair')`` (a line's only pair), over
    the ``regularized`` leaves. Every point has the member's weight decay. IMP
    masks land on every point.

    Args:
      init_fn: ``key -> params`` of a fresh model init, e.g.
        ``lambda k: models.init(model, k, input_shape)[0]`` (traceable).
      kind: ``'line'``, ``'curve'`` or ``'simplex'``.
      num_points: a simplex's vertex count (default 3; lines and curves: None).
      layerwise: one draw per module instead of one for the network.
      beta: the weight of the cos^2 regulariser (the paper: 1; 0: none).
      regularized: a static tree of bools of the params' structure naming the
        leaves of cos^2 (default: every kernel).

    Raises:
      ValueError: an unknown ``kind``, a bad ``num_points``, ``beta`` negative
        or not finite, ``init_fn`` not callable (naming the argument).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.methods import subspaces
        >>> def init_fn(key):
        ...     return {"Dense_0": {"kernel": jax.random.normal(key, (3, 2))}}
        >>> line = subspaces.subspace_reparam(init_fn, kind="line", beta=1.0, layerwise=True)
        >>> trainable, _ = line.init(init_fn(jax.random.key(0)), jax.random.key(1))
        >>> sorted(trainable)
        ['point_0', 'point_1']
    """
    names = point_names(kind, num_points)
    if not callable(init_fn):
        raise ValueError(f"init_fn must be a callable key -> params, got {init_fn!r}")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (
            math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if not isinstance(layerwise, bool | np.bool_):
        raise ValueError(f"layerwise must be a bool, got {layerwise!r}")
    beta = float(beta)
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    midpoint = midpoint_coefficients(kind, num_points)

    def init(params: PyTree, key: jax.Array) -> tuple[PyTree, PyTree]:
        points = {names[0]: params}
        for i, name in enumerate(names[1:], start=1):
            other = init_fn(jax.random.fold_in(key, i))
            tree.check_same_structure(other, params, name="init_fn(key)",
                                     reference_name="the model's params")
            points[name] = other
        return points, {}

    def apply(trainable: PyTree, frozen: PyTree, key: jax.Array | None, *,
              train: bool) -> PyTree:
        del frozen
        _check_points(trainable, names)
        index = module_index(trainable[names[0]])
        if not train or key is None:
            return _mix(trainable, names, [midpoint] * len(index))
        draws = sample_coefficients(rng.stream(key, "alpha"), kind, num_points,
                                    num_modules=max(index) + 1 if layerwise else 1)
        return _mix(trainable, names, [draws[m if layerwise else 0] for m in index])

    def penalty(trainable: PyTree, key: jax.Array | None) -> jax.Array:
        selection = regularized if regularized is not None else masking.prunable(
            trainable[names[0]])
        values = [cos_squared(trainable[names[i]], trainable[names[j]], selection)
                  for i, j in pairs]
        if len(values) == 1 or key is None:
            value = values[0] if len(values) == 1 else jnp.mean(jnp.stack(values))
        else:
            pick = jax.random.randint(rng.stream(key, "pair"), (), 0, len(values))
            value = jnp.stack(values)[pick]
        return beta * value

    def trainable_masks(masks: PyTree, trainable: PyTree) -> PyTree:
        del trainable
        return {name: masks for name in names}

    shape = f"simplex({len(names)})" if kind == "simplex" else kind
    return reparam.Reparam(
        name=f"subspace({shape}, layerwise={layerwise}, beta={beta!r})", init=init, apply=apply,
        penalty=penalty if beta > 0 else None, trainable_masks=trainable_masks)


def point_params(trainable: PyTree, alphas: Any, *, kind: str) -> PyTree:
    """The networks at several alphas, stacked ``[A, ...]`` (for evaluation along a subspace).

    Args:
      trainable: one member's subspace tree.
      alphas: ``[A]`` values in [0, 1] (lines, curves) or ``[A, n]`` vertex
        weights (simplexes).
      kind: the subspace's kind.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.methods import subspaces
        >>> one = {"point_0": {"w": jnp.zeros(2)}, "point_1": {"w": jnp.ones(2)}}
        >>> stacked = subspaces.point_params(one, jnp.linspace(0, 1, 5), kind="line")
        >>> stacked["w"][:, 0]                          # [A, ...]
        Array([0.  , 0.25, 0.5 , 0.75, 1.  ], dtype=float32)

        Evaluate them all in one program: ``executor.evaluate_params(stacked, stats,
        "test")`` (``stats`` stacked alike).
    """
    _check_point_alpha(kind, alphas, "alphas")
    return jax.vmap(lambda a: subspace_point(trainable, a, kind=kind))(jnp.asarray(alphas))
