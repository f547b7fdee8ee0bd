"""Telemetry of the early phase of training: how far and how the weights move.

Frankle, Schwab & Morcos 2020 ("The Early Phase of Neural Network Training",
ICLR 2020), Section 3 and Figure 3, follow each layer's weights from the init
``W_0`` through training: the share of signs that changed, the L2 distance and
the cosine similarity to ``W_0`` (and to the final weights ``W_T``), the mean
magnitude, the gradient norm, a few tracked weights, and the sharpness of the
loss (the top Hessian eigenvalue). These are pure, jittable functions of
parameter trees; each returns ``{layer: value}`` for the selected leaves plus
``'global'`` over all of them concatenated.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from ltjax.core import masking
    >>> from ltjax.methods import telemetry
    >>> params_0 = {"Dense_0": {"kernel": jnp.array([[1.0, -1.0], [2.0, 0.5]])}}
    >>> params_t = {"Dense_0": {"kernel": jnp.array([[1.5, 1.0], [2.0, 0.5]])}}
    >>> prunable = masking.prunable(params_0)
    >>> float(telemetry.sign_change_share(params_t, params_0, prunable)["global"])   # 1 of 4
    0.25
    >>> round(float(telemetry.l2_distance(params_t, params_0, prunable)["Dense_0/kernel"]), 4)
    2.0616
    >>> def loss(p):                      # e.g. the training loss on a fixed batch
    ...     return 0.5 * jnp.sum(p["Dense_0"]["kernel"] ** 2)
    >>> round(float(telemetry.hessian_top_eigenvalue(loss, params_t, jax.random.key(0))), 2)
    1.0
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import masking, tree

PyTree = Any
GLOBAL = "global"


def _pairs(tree_a: PyTree, tree_b: PyTree, prunable: PyTree | None,
           masks: PyTree | None = None) -> list[tuple[str, Any, Any, Any]]:
    """``(name, a, b, kept)`` of the selected leaves; ``kept`` is None without ``masks``."""
    tree.check_same_structure(tree_b, tree_a, name="tree_b", reference_name="tree_a")
    if prunable is None:
        prunable = masking.prunable(tree_a)
    flags = [bool(f) for f in jax.tree.leaves(prunable)]
    kept = [None] * len(flags)
    if masks is not None:
        tree.check_same_structure(masks, tree_a, name="masks", reference_name="params")
        kept = [jnp.asarray(m, bool) for m in jax.tree.leaves(masks)]
    out = [(name, a.astype(jnp.float32), b.astype(jnp.float32), m)
           for name, a, b, m, f in zip(tree.names(tree_a), jax.tree.leaves(tree_a),
                                       jax.tree.leaves(tree_b), kept, flags, strict=True) if f]
    if not out:
        raise ValueError("prunable has no True leaf")
    return out


def _sum(x: jax.Array, kept: jax.Array | None) -> jax.Array:
    """The sum of ``x`` over the kept entries (all without a mask)."""
    return jnp.sum(x) if kept is None else jnp.sum(jnp.where(kept, x, 0))


def _count(a: jax.Array, kept: jax.Array | None) -> Any:
    return a.size if kept is None else jnp.sum(kept)


def sign_change_share(params: PyTree, reference: PyTree, prunable: PyTree | None = None, *,
                      masks: PyTree | None = None) -> dict[str, jax.Array]:
    """The share of weights whose sign differs from ``reference`` (0 vs itself, 1 vs ``-W``).

    A weight that is zero in one tree and not in the other counts as changed.
    With ``masks`` (a sparse member's), among the kept weights only.
    """
    pairs = _pairs(params, reference, prunable, masks)
    changed = {name: _sum(jnp.sign(a) != jnp.sign(b), m) for name, a, b, m in pairs}
    out = {name: changed[name] / _count(a, m) if m is not None
           else jnp.mean(jnp.sign(a) != jnp.sign(b)) for name, a, b, m in pairs}
    out[GLOBAL] = sum(changed.values()) / sum(_count(a, m) for _, a, _, m in pairs)
    return out


def l2_distance(params: PyTree, reference: PyTree, prunable: PyTree | None = None, *,
                masks: PyTree | None = None) -> dict[str, jax.Array]:
    """``||W - W_ref||_2`` per layer and over all selected layers (kept weights with ``masks``)."""
    pairs = _pairs(params, reference, prunable, masks)
    squares = {name: _sum((a - b) ** 2, m) for name, a, b, m in pairs}
    out = {name: jnp.sqrt(v) for name, v in squares.items()}
    out[GLOBAL] = jnp.sqrt(sum(squares.values()))
    return out


def cosine_similarity(params: PyTree, reference: PyTree, prunable: PyTree | None = None, *,
                      masks: PyTree | None = None) -> dict[str, jax.Array]:
    """``<W, W_ref> / (||W|| ||W_ref||)`` per layer and over all selected layers.

    With ``masks``, over the kept weights.
    """
    pairs = _pairs(params, reference, prunable, masks)
    dots = {name: (jnp.vdot(a, b), jnp.vdot(a, a), jnp.vdot(b, b)) if m is None else
            (_sum(a * b, m), _sum(a * a, m), _sum(b * b, m)) for name, a, b, m in pairs}
    out = {name: d / jnp.sqrt(na * nb) for name, (d, na, nb) in dots.items()}
    total = [sum(v[i] for v in dots.values()) for i in range(3)]
    out[GLOBAL] = total[0] / jnp.sqrt(total[1] * total[2])
    return out


def mean_magnitude(params: PyTree, prunable: PyTree | None = None, *,
                   masks: PyTree | None = None) -> dict[str, jax.Array]:
    """Mean ``|w|`` per layer and over all selected weights (kept weights with ``masks``)."""
    pairs = _pairs(params, params, prunable, masks)
    out = {name: jnp.mean(jnp.abs(a)) if m is None else _sum(jnp.abs(a), m) / _count(a, m)
           for name, a, _, m in pairs}
    out[GLOBAL] = sum(_sum(jnp.abs(a), m) for _, a, _, m in pairs) / sum(
        _count(a, m) for _, a, _, m in pairs)
    return out


def tracked_indices(params: PyTree, key: jax.Array, count: int = 10,
                    prunable: PyTree | None = None) -> list[tuple[str, int]]:
    """``count`` fixed random weights to follow: ``(layer, flat index)``, drawn once from ``key``.

    Drawn uniformly over all selected weights (without replacement). Only the
    shapes of ``params`` are read: abstract params (``jax.ShapeDtypeStruct``) do.

    Example:
        >>> import jax
        >>> import numpy as np
        >>> from ltjax.methods import telemetry
        >>> params = {"Dense_0": {"kernel": jax.ShapeDtypeStruct((4, 3), np.float32),
        ...                       "bias": jax.ShapeDtypeStruct((3,), np.float32)}}
        >>> picks = telemetry.tracked_indices(params, jax.random.key(0), count=2)
        >>> [name for name, _ in picks], all(0 <= i < 12 for _, i in picks)
        (['Dense_0/kernel', 'Dense_0/kernel'], True)
    """
    selected = jax.tree.leaves(masking.prunable(params) if prunable is None else prunable)
    shapes = [(name, int(np.prod(np.shape(a)))) for name, a, keep in zip(
        tree.names(params), jax.tree.leaves(params), selected, strict=True) if keep]
    if not shapes:
        raise ValueError("prunable has no True leaf")
    total = sum(size for _, size in shapes)
    if not 0 < count <= total:
        raise ValueError(f"count must be in [1, {total}] (the selected weights), got {count}")
    picks = sorted(int(i) for i in _choice_without_replacement(key, total, count))
    out, start = [], 0
    bounds = []
    for name, size in shapes:
        bounds.append((name, start, start + size))
        start += size
    for flat in picks:
        for name, lo, hi in bounds:
            if lo <= flat < hi:
                out.append((name, flat - lo))
    return out


@functools.partial(jax.jit, static_argnums=(1, 2))
def _choice_without_replacement(key: jax.Array, total: int, count: int) -> jax.Array:
    """``jax.random.choice(key, total, (count,), replace=False)`` as one program (eagerly it
    compiles each of its operations on its own: ~0.6 s for LeNet-300-100's weights)."""
    return jax.random.choice(key, total, (count,), replace=False)


def tracked_values(params: PyTree, indices: list[tuple[str, int]]) -> list[jax.Array]:
    """The values of the :func:`tracked_indices` weights in ``params``."""
    found = dict(zip(tree.names(params), jax.tree.leaves(params), strict=True))
    return [found[name].reshape(-1)[i] for name, i in indices]


def global_norm(grads: PyTree, prunable: PyTree | None = None, *,
                masks: PyTree | None = None) -> dict[str, jax.Array]:
    """``||g||_2`` per selected leaf and over all of them (e.g. the loss gradient).

    With ``masks``, of the kept weights' gradient (a sparse net's pruned
    positions never move).
    """
    return l2_distance(grads, jax.tree.map(jnp.zeros_like, grads), prunable, masks=masks)


def hessian_vector_product(loss_fn: Callable[[PyTree], jax.Array], params: PyTree,
                           vector: PyTree) -> PyTree:
    """``H v`` of ``loss_fn`` at ``params``: ``jax.jvp`` of ``jax.grad`` (forward over reverse)."""
    return jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]


def hessian_top_eigenvalue(loss_fn: Callable[[PyTree], jax.Array], params: PyTree,
                           key: jax.Array, *, iterations: int = 20) -> jax.Array:
    """The largest-magnitude Hessian eigenvalue of ``loss_fn`` at ``params``, by power iteration.

    Starts from a Gaussian vector drawn from ``key``; each iteration is one
    Hessian-vector product (:func:`hessian_vector_product`). Returns the
    Rayleigh quotient ``v^T H v`` of the last normalised vector: for a loss
    on a fixed batch, the sharpness the paper tracks. Converges at the rate
    of ``|lambda_2 / lambda_1|``; raise ``iterations`` for nearly tied tops.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.methods import telemetry
        >>> A = jnp.diag(jnp.array([1.0, 3.0, 2.0]))
        >>> top = telemetry.hessian_top_eigenvalue(lambda w: 0.5 * w @ A @ w, jnp.zeros(3),
        ...                                        jax.random.key(0))
        >>> round(float(top), 2)                     # the largest eigenvalue of A
        3.0
    """
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    vector = jax.tree.unflatten(treedef, [jax.random.normal(k, jnp.shape(x), jnp.float32)
                                          for k, x in zip(keys, leaves, strict=True)])

    def normalised(v):
        norm = jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(v)))
        return jax.tree.map(lambda x: x / norm, v)

    def body(_, v):
        return normalised(hessian_vector_product(loss_fn, params, v))

    vector = jax.lax.fori_loop(0, iterations, body, normalised(vector))
    hv = hessian_vector_product(loss_fn, params, vector)
    return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(vector), jax.tree.leaves(hv),
                                                 strict=True))


# --------------------------------------------------------------------------- during training

#: The quantities :func:`snapshot` records per layer (and ``'global'``).
QUANTITIES = ("mean_magnitude", "sign_change_init", "l2_init", "cosine_init", "grad_norm")
#: The quantities :func:`versus_final` adds after training.
FINAL_QUANTITIES = ("sign_change_final", "l2_final", "cosine_final")


def schedule(end: int, *, start: int = 0, dense_every: int = 50, dense_until: int = 2000,
             every: int = 500) -> list[int]:
    """The steps telemetry is logged at: every ``dense_every`` up to ``dense_until``, then
    every ``every``, plus ``start`` and ``end`` (the paper's Figure 3 is dense early).

    Example:
        >>> from ltjax.methods import telemetry
        >>> telemetry.schedule(3000, dense_every=500, dense_until=1000, every=1000)
        [0, 500, 1000, 2000, 3000]
    """
    for name, value in (("dense_every", dense_every), ("every", every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not 0 <= start <= end:
        raise ValueError(f"need 0 <= start <= end, got start={start}, end={end}")
    dense = range(0, min(dense_until, end) + 1, dense_every)
    sparse = range(0, end + 1, every)
    return sorted({s for s in (*dense, *(s for s in sparse if s >= dense_until), start, end)
                   if start <= s <= end})


def snapshot(params: PyTree, params_0: PyTree, grads: PyTree,
             prunable: PyTree | None = None, *,
             masks: PyTree | None = None) -> dict[str, dict[str, jax.Array]]:
    """One member's telemetry at a step: ``{quantity: {layer or 'global': value}}``.

    ``mean_magnitude`` (mean |w|), ``sign_change_init`` (share of signs that
    differ from ``W_0``), ``l2_init`` (``||W_t - W_0||``), ``cosine_init``,
    and ``grad_norm`` (``||g||`` of ``grads``, the training loss's gradient on
    a fixed batch). With ``masks`` (a sparse member's), every quantity is
    over the kept weights only. Jittable; ``jax.vmap`` it over members.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import telemetry
        >>> params_0 = {"Dense_0": {"kernel": jnp.array([[1.0, -1.0], [2.0, 0.5]])}}
        >>> params_t = {"Dense_0": {"kernel": jnp.array([[1.5, 1.0], [2.0, 0.5]])}}
        >>> prunable = masking.prunable(params_0)
        >>> grads = jax.tree.map(jnp.ones_like, params_t)
        >>> row = telemetry.snapshot(params_t, params_0, grads, prunable)
        >>> sorted(row)
        ['cosine_init', 'grad_norm', 'l2_init', 'mean_magnitude', 'sign_change_init']
        >>> float(row["grad_norm"]["global"]), float(row["mean_magnitude"]["global"])
        (2.0, 1.25)
    """
    return {"mean_magnitude": mean_magnitude(params, prunable, masks=masks),
            "sign_change_init": sign_change_share(params, params_0, prunable, masks=masks),
            "l2_init": l2_distance(params, params_0, prunable, masks=masks),
            "cosine_init": cosine_similarity(params, params_0, prunable, masks=masks),
            "grad_norm": global_norm(grads, prunable, masks=masks)}


def versus_final(params: PyTree, params_final: PyTree, prunable: PyTree | None = None, *,
                 masks: PyTree | None = None) -> dict[str, dict[str, jax.Array]]:
    """How far ``W_t`` is from the final weights ``W_T``: the post-pass quantities.

    ``sign_change_final``, ``l2_final`` and ``cosine_final``, per layer and
    ``'global'`` (at ``t = T``: 0, 0 and 1); over the kept weights with ``masks``.
    """
    return {"sign_change_final": sign_change_share(params, params_final, prunable,
                                                   masks=masks),
            "l2_final": l2_distance(params, params_final, prunable, masks=masks),
            "cosine_final": cosine_similarity(params, params_final, prunable, masks=masks)}


def rows_of(step: int, quantities: dict[str, dict[str, Any]]) -> list[dict]:
    """Long-format rows ``{step, layer, quantity, value}`` of one member's quantities."""
    return [{"step": step, "layer": layer, "quantity": quantity, "value": float(value)}
            for quantity, per_layer in quantities.items() for layer, value in per_layer.items()]
