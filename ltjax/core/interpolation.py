"""Weight-space interpolation and the barriers measured along it.

- :func:`lerp`: ``(1 - alpha) * a + alpha * b`` for any pytree; two nets with
  the same mask stay masked (their pruned weights are zero at both ends).
- :func:`interpolate`: the same at many alphas at once, stacked ``[A, ...]``.
- :func:`error_barrier`: Frankle et al. 2020 ("Linear Mode Connectivity and
  the Lottery Ticket Hypothesis", ICML): the maximum error along the path
  minus the mean of the two endpoint errors ("instability"; stable if < 2 %).
- :func:`loss_barrier`: Ainsworth et al. 2023 ("Git Re-Basin", ICLR, Eq. 1):
  ``max_alpha L(alpha) - ((1 - alpha) L(0) + alpha L(1))`` against the chord
  (``baseline='chord'``, the paper's definition); ``baseline='mean_ends'``
  gives ``max_alpha L(alpha) - (L(0) + L(1)) / 2``, the form the
  samuela/git-re-basin plotting code uses. The two differ when the endpoint
  losses differ; the studies report both, named ``loss_barrier_chord`` and
  ``loss_barrier_mean_ends``.
- :func:`barrier`: either form for any metric.
- :func:`evaluate_path`: metrics along a path, with BatchNorm statistics
  recomputed (or REPAIR) at every point when asked.

Barriers come with the alpha where they peak. They take the curve
(alphas and values), so they work on any metric evaluated along any path.
Plain pytrees in, no flax.

Example:
    >>> import jax.numpy as jnp
    >>> from ltjax.core import interpolation
    >>> params_a, params_b = {"w": jnp.array([1.0, -1.0])}, {"w": jnp.array([-1.0, 1.0])}
    >>> def error(p):                      # a toy error: 0 at both ends, 1 half-way
    ...     return float(1 - 0.5 * jnp.sum(p["w"] ** 2))
    >>> alphas = [0, 0.25, 0.5, 0.75, 1]
    >>> curve = [error(interpolation.lerp(a, params_a, params_b)) for a in alphas]
    >>> curve
    [0.0, 0.75, 1.0, 0.75, 0.0]
    >>> height, at = interpolation.error_barrier(alphas, curve)
    >>> float(height), float(at)
    (1.0, 0.5)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import tree

PyTree = Any


def check_alpha(alpha: Any, name: str = "alpha") -> None:
    """Raise ``ValueError`` unless every entry of ``alpha`` is finite and in [0, 1].

    The one check of interpolation coefficients in ltjax (lerp, paths and
    subspaces): NaN and extrapolation (``alpha = 1.5``) are refused.
    Tracers are skipped (their values exist only at run time); callers that
    vmap over alphas check the concrete array before tracing it.

    Example:
        >>> from ltjax.core import interpolation
        >>> interpolation.check_alpha(1.5)
        Traceback (most recent call last):
        ValueError: alpha must lie in [0, 1], got 1.5
    """
    if isinstance(alpha, jax.core.Tracer):
        return
    values = np.asarray(alpha, dtype=np.float64)
    if values.size and (not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1], got {values.tolist()}")


def lerp(alpha: float | jax.Array, tree_a: PyTree, tree_b: PyTree) -> PyTree:
    """``(1 - alpha) * tree_a + alpha * tree_b`` leaf by leaf.

    Float leaves are interpolated; other leaves (integer step counters, bool
    masks) are taken from ``tree_a``. ``lerp(0, a, b)`` is exactly ``a``,
    ``lerp(1, a, b)`` exactly ``b``, and ``lerp(alpha, a, a)`` exactly ``a``.

    Raises:
      ValueError: ``alpha`` outside [0, 1], or trees of different structure or shapes.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import interpolation
        >>> interpolation.lerp(0.25, {"w": jnp.zeros(2)}, {"w": jnp.ones(2)})
        {'w': Array([0.25, 0.25], dtype=float32)}
    """
    check_alpha(alpha)
    tree.check_same_structure(tree_b, tree_a, name="tree_b", reference_name="tree_a")

    def one(a, b):
        if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
            return a
        alpha_ = jnp.asarray(alpha, a.dtype)
        # a + alpha (b - a): exactly a at alpha = 0 and wherever a == b (so the
        # barrier of identical endpoints is exactly 0); exactly b at alpha = 1.
        return jnp.where(alpha_ == 1, b, a + alpha_ * (b - a))

    return jax.tree.map(one, tree_a, tree_b)


def interpolate(alphas: jax.Array, tree_a: PyTree, tree_b: PyTree) -> PyTree:
    """:func:`lerp` at every alpha, stacked: leaves ``[A, ...]``.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import interpolation
        >>> path = interpolation.interpolate(jnp.linspace(0, 1, 5), {"w": jnp.zeros(3)},
        ...                                  {"w": jnp.ones(3)})
        >>> path["w"].shape                          # [A, ...]
        (5, 3)
        >>> path["w"][:, 0]
        Array([0.  , 0.25, 0.5 , 0.75, 1.  ], dtype=float32)
    """
    alphas = jnp.asarray(alphas, jnp.float32)
    if alphas.ndim != 1:
        raise ValueError(f"alphas must be 1-D, got shape {alphas.shape}")
    check_alpha(alphas, "alphas")
    tree.check_same_structure(tree_b, tree_a, name="tree_b", reference_name="tree_a")
    return jax.vmap(lambda a: lerp(a, tree_a, tree_b))(alphas)


def _curve(alphas: Any, values: Any) -> tuple[np.ndarray, np.ndarray]:
    alphas = np.asarray(alphas, np.float64)
    values = np.asarray(values, np.float64)
    if alphas.ndim != 1 or values.shape[-1:] != alphas.shape or alphas.size < 2:
        raise ValueError(
            f"values must end in an axis of len(alphas) = {alphas.shape} (>= 2), "
            f"got {values.shape}"
        )
    check_alpha(alphas, "alphas")
    if alphas[0] != 0.0 or alphas[-1] != 1.0 or np.any(np.diff(alphas) <= 0):
        raise ValueError(f"alphas must increase from 0 to 1, got {alphas.tolist()}")
    return alphas, values


BASELINES = ("chord", "mean_ends")


def barrier(alphas: Any, values: Any, *, baseline: str) -> tuple[Any, Any]:
    """The height of a curve above a baseline drawn from its endpoints.

    ``baseline='chord'``: ``max_alpha [v(alpha) - ((1 - alpha) v(0) + alpha v(1))]``
    (Ainsworth et al. 2023, Eq. 1); ``baseline='mean_ends'``:
    ``max_alpha v(alpha) - (v(0) + v(1)) / 2`` (Frankle et al. 2020's error
    barrier; the samuela/git-re-basin plots' loss barrier). Both are >= 0; the
    mean-ends form is at least ``|v(1) - v(0)| / 2``, even on a straight path.

    Args:
      alphas: increasing alphas from 0 to 1, ``[A]``.
      values: the metric along the path, ``[..., A]`` (leading axes are
        batched: replicates, pairs...).
      baseline: ``'chord'`` or ``'mean_ends'``.

    Returns:
      ``(barrier [...], alpha_at_max [...])``: the height and the alpha where it peaks,
      arrays of the leading axes (NumPy scalars, ``np.float64``, for a 1-D curve).

    Example:
        >>> from ltjax.core import interpolation
        >>> height, at = interpolation.barrier([0, 0.5, 1], [1.0, 3.0, 2.0], baseline="chord")
        >>> round(float(height), 4), float(at)
        (1.5, 0.5)
        >>> height, at = interpolation.barrier([0, 0.5, 1], [1.0, 3.0, 2.0], baseline="mean_ends")
        >>> round(float(height), 4), float(at)
        (1.5, 0.5)
        >>> height, at = interpolation.barrier([0, 0.5, 1], [1.0, 1.5, 2.0], baseline="mean_ends")
        >>> round(float(height), 4), float(at)
        (0.5, 1.0)
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    alphas, values = _curve(alphas, values)
    if baseline == "chord":
        gap = values - ((1 - alphas) * values[..., :1] + alphas * values[..., -1:])
    else:
        gap = values - (values[..., :1] + values[..., -1:]) / 2
    return np.max(gap, axis=-1), alphas[np.argmax(gap, axis=-1)]


def error_barrier(alphas: Any, errors: Any) -> tuple[Any, Any]:
    """Frankle et al. 2020's error barrier (instability) of a curve.

    ``max_alpha err(alpha) - (err(0) + err(1)) / 2``: 0 when the path is no
    worse than its ends; "stable" when below 0.02. :func:`barrier` with
    ``baseline='mean_ends'``.

    Args:
      alphas: increasing alphas from 0 to 1, ``[A]``.
      errors: errors (1 - accuracy) along the path, ``[..., A]`` (leading axes
        are batched: replicates, pairs...).

    Returns:
      ``(barrier [...], alpha_at_max [...])`` as :func:`barrier` returns them.

    Example:
        >>> from ltjax.core import interpolation
        >>> height, at = interpolation.error_barrier([0, 0.5, 1], [0.02, 0.10, 0.04])
        >>> round(float(height), 4), float(at)
        (0.07, 0.5)
    """
    return barrier(alphas, errors, baseline="mean_ends")


def loss_barrier(alphas: Any, losses: Any, *,
                 baseline: str = "chord") -> tuple[Any, Any]:
    """Ainsworth et al. 2023's loss barrier of a curve.

    ``max_alpha L(alpha) - ((1 - alpha) L(0) + alpha L(1))`` (the paper's
    Eq. 1, ``baseline='chord'``), with the alpha where it peaks;
    ``baseline='mean_ends'`` gives ``max_alpha L(alpha) - (L(0) + L(1)) / 2``,
    what the samuela/git-re-basin repository's plots show. Batched over
    leading axes of ``losses`` like :func:`error_barrier`.

    Example:
        >>> from ltjax.core import interpolation
        >>> height, at = interpolation.loss_barrier([0, 0.5, 1], [1.0, 3.0, 2.0])
        >>> round(float(height), 4), float(at)
        (1.5, 0.5)
        >>> height, at = interpolation.loss_barrier([0, 0.25, 0.5, 1], [0.0, 0.1, 0.2, 0.4],
        ...                                         baseline="mean_ends")
        >>> round(float(height), 4), float(at)
        (0.2, 1.0)
    """
    return barrier(alphas, losses, baseline=baseline)


def evaluate_path(
    evaluate_fn: Any, tree_a: PyTree, tree_b: PyTree, alphas: Any, *,
    chunk_size: int | None = None, recompute_fn: Any = None,
) -> dict[str, np.ndarray]:
    """Evaluate the linear path from ``tree_a`` to ``tree_b`` at many alphas.

    The interpolated trees are built ``chunk_size`` alphas at a time (bounding
    memory to ``chunk_size`` copies of the tree) and handed to ``evaluate_fn``
    stacked, so one jitted, vmapped (or device-sharded) evaluation serves a
    whole chunk.

    Args:
      evaluate_fn: ``fn(stacked_tree [C, ...]) -> {metric: [C]}``; e.g. for
        ``tree = (params, batch_stats)``, ``lambda t: executor.evaluate_params(*t, 'test')``.
      tree_a: the path's start (alpha = 0).
      tree_b: the path's end (alpha = 1).
      alphas: ``[A]`` values in [0, 1].
      chunk_size: alphas per call (default: all at once).
      recompute_fn: optional ``fn(stacked_tree) -> stacked_tree`` applied to
        each interpolated chunk before evaluation, e.g. recomputing BatchNorm
        statistics on training data (running statistics are never averaged
        silently: pass this for nets with BatchNorm).

    Returns:
      ``{metric: [A]}`` as NumPy arrays.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import interpolation
        >>> def evaluate_fn(stacked):              # stacked trees [C, ...] -> {metric: [C]}
        ...     return {"error": 1 - 0.5 * jnp.sum(stacked["w"] ** 2, axis=1)}
        >>> curve = interpolation.evaluate_path(
        ...     evaluate_fn, {"w": jnp.array([1.0, -1.0])}, {"w": jnp.array([-1.0, 1.0])},
        ...     jnp.linspace(0, 1, 5), chunk_size=2)      # 3 calls: 2 + 2 + 1 alphas
        >>> curve["error"]
        array([0.  , 0.75, 1.  , 0.75, 0.  ], dtype=float32)

        A real network's ``evaluate_fn`` is e.g.
        ``lambda t: executor.evaluate_params(*t, "test")`` with ``t = (params, batch_stats)``.
    """
    alphas = np.asarray(alphas, np.float32)
    if alphas.ndim != 1 or alphas.size == 0:
        raise ValueError(f"alphas must be a non-empty 1-D array, got shape {alphas.shape}")
    check_alpha(alphas, "alphas")
    chunk_size = chunk_size or alphas.size
    out: dict[str, list] = {}
    for start in range(0, alphas.size, chunk_size):
        chunk = alphas[start:start + chunk_size]
        stacked = interpolate(jnp.asarray(chunk), tree_a, tree_b)
        if recompute_fn is not None:
            stacked = recompute_fn(stacked)
        for key, values in evaluate_fn(stacked).items():
            out.setdefault(key, []).append(np.asarray(values))
    return {key: np.concatenate(parts) for key, parts in out.items()}
