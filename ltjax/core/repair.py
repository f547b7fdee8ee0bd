"""REPAIR: renormalise the channels of an interpolated network.

Jordan, Sedghi, Saukh, Entezari & Neyshabur, "REPAIR: REnormalizing Permuted
Activations for Interpolation Repair" (ICLR 2023). Interpolating two
(aligned) networks shrinks the variance of their hidden pre-activations
("variance collapse"), which, compounded over layers, causes much of the
barrier. REPAIR rescales every channel ``c`` of a chosen layer so that, on
training data, the interpolated network's pre-activation mean and standard
deviation equal the interpolation of the endpoints' statistics::

    target_mean[c] = (1 - alpha) * mean_a[c] + alpha * mean_b[c]
    target_std[c]  = (1 - alpha) * std_a[c]  + alpha * std_b[c]

The per-channel affine map ``z -> scale * z + shift`` that does this is
folded into the layer producing ``z``: into the kernel and bias of a Dense
or Conv layer, or into the scale and bias of a BatchNorm. The layers are
corrected in forward order, each measured after its upstream layers were
corrected (:func:`ltjax.models.repair` runs the forward passes).

Statistics are plain trees ``{layer: {'mean': [n], 'std': [n]}}``, so the
target of an interpolation is the interpolation of the endpoints' statistics
trees: carry them beside the params through
:func:`ltjax.core.interpolation.interpolate` and every point of the path holds its
own target. This module is plain math over pytrees (no flax).

Example:
    >>> import jax.numpy as jnp
    >>> from ltjax.core import repair
    >>> z = jnp.array([[0.0, 1.0], [2.0, 3.0]])   # [N, ..., n] outputs of Dense_0 at alpha 0.5
    >>> stats = repair.channel_stats(z)
    >>> stats["mean"], stats["std"]
    (Array([1., 2.], dtype=float32), Array([1., 1.], dtype=float32))
    >>> stats_a = {"Dense_0": {"mean": jnp.zeros(2), "std": jnp.full(2, 2.0)}}   # endpoint A
    >>> stats_b = {"Dense_0": {"mean": jnp.ones(2), "std": jnp.full(2, 4.0)}}    # endpoint B
    >>> target = repair.target_stats(0.5, stats_a, stats_b)["Dense_0"]   # mean 0.5, std 3
    >>> scale, shift = repair.affine_correction(stats, target, eps=0)
    >>> repaired = repair.channel_stats(repair.apply_affine(z, scale, shift))
    >>> repaired["mean"], repaired["std"]
    (Array([0.5, 0.5], dtype=float32), Array([3., 3.], dtype=float32))
    >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    >>> params = repair.fold(params, {"Dense_0": (scale, shift)})    # into the layer
    >>> params["Dense_0"]["bias"]
    Array([-2.5, -5.5], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ltjax.core import interpolation

PyTree = Any
#: Statistics of one layer's output channels: ``{'mean': [n], 'std': [n]}``.
Stats = dict[str, jax.Array]

DEFAULT_EPS = 1e-5  # the BatchNorm epsilon of the REPAIR reference code


def channel_stats(z: jax.Array) -> Stats:
    """Per-channel mean and (biased) standard deviation of ``z`` ``[..., n]``.

    Every axis but the last (examples, and positions for conv feature maps)
    is reduced; the variance is computed around the mean in float32.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import repair
        >>> repair.channel_stats(jnp.array([[0.0, 1.0], [2.0, 1.0]]))["std"]
        Array([1., 0.], dtype=float32)
    """
    z = jnp.asarray(z, jnp.float32)
    if z.ndim < 2:
        raise ValueError(f"z must be [examples, ..., channels] (>= 2 axes), got shape {z.shape}")
    flat = z.reshape(-1, z.shape[-1])
    mean = jnp.mean(flat, axis=0, keepdims=True)
    var = jnp.mean(jnp.square(flat - mean), axis=0)
    return {"mean": mean[0], "std": jnp.sqrt(var)}


def apply_affine(z: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    """``scale * z + shift`` along the last (channel) axis of ``z`` ``[..., n]``, in z's dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import repair
        >>> repair.apply_affine(jnp.ones((2, 3)), 2 * jnp.ones(3), jnp.zeros(3))[0]
        Array([2., 2., 2.], dtype=float32)
    """
    shape = (1,) * (jnp.ndim(z) - 1) + (-1,)
    return (z * scale.reshape(shape) + shift.reshape(shape)).astype(z.dtype)


def target_stats(alpha: float | jax.Array, stats_a: PyTree, stats_b: PyTree) -> PyTree:
    """REPAIR's targets ``(1 - alpha) * stats_a + alpha * stats_b``, leaf by leaf.

    The standard deviations are interpolated as such (not the variances), as
    in Jordan et al. 2023 (section 4).

    Raises:
      ValueError: ``alpha`` outside [0, 1] or statistics of different structure.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import repair
        >>> stats_a = {"Dense_0": {"mean": jnp.zeros(2), "std": jnp.ones(2)}}
        >>> stats_b = {"Dense_0": {"mean": jnp.ones(2), "std": jnp.ones(2)}}
        >>> repair.target_stats(0.25, stats_a, stats_b)["Dense_0"]["mean"]
        Array([0.25, 0.25], dtype=float32)
    """
    interpolation.check_alpha(alpha)
    if jax.tree.structure(stats_a) != jax.tree.structure(stats_b):
        raise ValueError("stats_a and stats_b must have the same layers and entries, got "
                         f"{sorted(stats_a)} and {sorted(stats_b)}")
    return jax.tree.map(lambda a, b: (1 - alpha) * a + alpha * b, stats_a, stats_b)


def affine_correction(stats: Stats, target: Stats, *, eps: float = DEFAULT_EPS,
                      ) -> tuple[jax.Array, jax.Array]:
    """``(scale, shift)`` mapping channels with ``stats`` onto ``target``.

    ``scale = target_std / sqrt(std^2 + eps)`` and ``shift = target_mean -
    scale * mean``, so ``scale * z + shift`` has mean ``target_mean`` and
    standard deviation ``target_std * std / sqrt(std^2 + eps)`` (``target_std``
    up to the ``eps`` that keeps dead channels finite, as the BatchNorm that
    the REPAIR reference code inserts does).

    Args:
      stats: the current ``{'mean': [n], 'std': [n]}`` (:func:`channel_stats`).
      target: the wanted ``{'mean': [n], 'std': [n]}`` (:func:`target_stats`).
      eps: added to the variance.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import repair
        >>> stats = {"mean": jnp.ones(1), "std": jnp.ones(1)}
        >>> target = {"mean": jnp.zeros(1), "std": 2 * jnp.ones(1)}
        >>> scale, shift = repair.affine_correction(stats, target, eps=0)
        >>> scale, shift
        (Array([2.], dtype=float32), Array([-2.], dtype=float32))
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    for name, value in (("stats", stats), ("target", target)):
        if not isinstance(value, Mapping) or set(value) != {"mean", "std"}:
            raise ValueError(f"{name} must be a dict with keys 'mean' and 'std', got {value!r}")
    if jnp.shape(stats["mean"]) != jnp.shape(target["mean"]):
        raise ValueError(f"stats has {jnp.shape(stats['mean'])} channels but target "
                         f"{jnp.shape(target['mean'])}")
    scale = target["std"] / jnp.sqrt(jnp.square(stats["std"]) + eps)
    shift = target["mean"] - scale * stats["mean"]
    return scale, shift


def fold_affine(layer: Mapping[str, jax.Array], scale: jax.Array, shift: jax.Array, *,
                name: str = "layer") -> dict[str, jax.Array]:
    """Fold ``z -> scale * z + shift`` (per output channel) into one layer's params.

    A Dense or Conv layer (``kernel`` ``[..., n]`` and ``bias`` ``[n]``):
    ``kernel * scale`` along the output axis, ``bias * scale + shift``. A
    normalisation layer (``scale`` and ``bias`` ``[n]``, e.g. BatchNorm):
    ``scale * scale``, ``bias * scale + shift``. Pruned (zero) kernel entries
    stay zero.

    Args:
      layer: the layer's params, e.g. ``params['Dense_0']``.
      scale: ``[n]`` from :func:`affine_correction`.
      shift: ``[n]`` from :func:`affine_correction`.
      name: the layer's path, for error messages.

    Returns:
      New layer params (other leaves copied).

    Raises:
      ValueError: the layer has no ``bias`` (the shift cannot be folded: a
        conv without bias is corrected at the BatchNorm after it), neither a
        ``kernel`` nor a ``scale``, or a channel count different from ``n``.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import repair
        >>> repair.fold_affine({"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
        ...                    jnp.array([2.0, 1.0]), jnp.array([0.0, 1.0]))["bias"]
        Array([0., 1.], dtype=float32)
    """
    if not isinstance(layer, Mapping) or "bias" not in layer:
        raise ValueError(
            f"{name} has no 'bias' to fold the REPAIR shift into (leaves: "
            f"{sorted(layer) if isinstance(layer, Mapping) else type(layer).__name__}); correct "
            "the normalisation layer after it instead"
        )
    weight = "kernel" if "kernel" in layer else "scale" if "scale" in layer else None
    if weight is None:
        raise ValueError(f"{name} has neither a 'kernel' nor a 'scale' leaf: {sorted(layer)}")
    n = jnp.shape(layer["bias"])[-1] if jnp.ndim(layer["bias"]) else None
    if jnp.shape(scale) != (n,) or jnp.shape(shift) != (n,) or jnp.shape(layer[weight])[-1] != n:
        raise ValueError(
            f"{name}: scale {jnp.shape(scale)} and shift {jnp.shape(shift)} must be [n] with n "
            f"the layer's output channels (bias {jnp.shape(layer['bias'])}, {weight} "
            f"{jnp.shape(layer[weight])})"
        )
    out = dict(layer)
    w = layer[weight]
    out[weight] = (w * scale.astype(w.dtype).reshape((1,) * (w.ndim - 1) + (-1,))).astype(w.dtype)
    b = layer["bias"]
    out["bias"] = (b * scale.astype(b.dtype) + shift.astype(b.dtype)).astype(b.dtype)
    return out


def fold(params: PyTree, corrections: Mapping[str, tuple[jax.Array, jax.Array]]) -> PyTree:
    """Fold per-channel corrections ``{layer path: (scale, shift)}`` into ``params``.

    Args:
      params: nested dicts (``variables['params']``).
      corrections: for each layer path (``'Dense_0'``, ``'Block_1/bn2'``), the
        ``(scale, shift)`` of :func:`affine_correction`.

    Returns:
      A new params tree; layers without a correction are unchanged.

    Raises:
      ValueError: a path that is not a layer of ``params`` (listing the top
        level), or a layer :func:`fold_affine` cannot correct.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import repair
        >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
        ...           "Dense_1": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
        >>> scale, shift = jnp.array([2.0, 0.5]), jnp.array([1.0, 0.0])
        >>> repaired = repair.fold(params, {"Dense_0": (scale, shift)})
        >>> repaired["Dense_0"]["kernel"][0], repaired["Dense_0"]["bias"]
        (Array([2. , 0.5], dtype=float32), Array([1., 0.], dtype=float32))
        >>> bool(jnp.array_equal(repaired["Dense_1"]["kernel"], params["Dense_1"]["kernel"]))
        True
    """
    out = _copy(params)
    for path, (scale, shift) in corrections.items():
        parts = path.split("/")
        node = out
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"layer {path!r} is not in params (top level: {sorted(params)})")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ValueError(f"layer {path!r} is not in params (top level: {sorted(params)})")
        node[parts[-1]] = fold_affine(node[parts[-1]], jnp.asarray(scale), jnp.asarray(shift),
                                      name=path)
    return out


def _copy(tree: PyTree) -> PyTree:
    if isinstance(tree, Mapping):
        return {k: _copy(v) for k, v in tree.items()}
    return tree
