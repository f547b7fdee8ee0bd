"""Knowledge Evolution: split a network into a fit and a reset hypothesis, re-initialise the reset.

Taha, Shrivastava & Davis 2021, "Knowledge Evolution in Neural Networks"
(CVPR 2021). A split mask divides every layer's weights into a *fit*
hypothesis (mask True) and a *reset* hypothesis (mask False). Each
generation trains the whole (dense) network, without the mask in the
forward pass, with a fresh optimiser and schedule; then the reset part is
re-initialised, ``W <- where(M, W, W_fresh)`` (:func:`ke_reinit`, ``W_fresh`` the
reference's ``U[-1/sqrt(fan_in), 1/sqrt(fan_in)]``, :func:`reset_draw`), and the
next generation starts. With KELS the fit hypothesis is a real smaller
network (the *slim* net, :func:`extract_slim`).

- **KELS** (kernel-level convolutional-aware splitting, :func:`kels_masks`):
  the first ``ceil(sr * C_in)`` inputs x the first ``ceil(sr * C_out)``
  outputs of every layer (kernel ``[kh, kw, C_in, C_out]`` in Flax layout);
  the first layer keeps all its inputs and the classifier all its outputs.
  Biases follow their layer's output split. The units of a layer are read off
  the model's permutation spec (:func:`ltjax.models.permutation_spec`): every
  axis a permutation acts on keeps the first ``ceil(sr * n)`` units of it, so
  a ResNet's residual stream keeps the same channels in every block of a
  stage, and the flattened ``[H * W * C]`` input of Conv-n's or VGG's first
  dense layer keeps the fit channels at every position (the reference keeps
  the first ``ceil(sr * H * W * C)`` inputs there, which are not the fit
  channels; its ``in_channels_order`` does it right for DenseNets only).
- **WELS** (weight-level splitting, :func:`wels_masks`): ``1[U >= 1 - sr]``
  per kernel weight, a Bernoulli draw (not an exact count), kept across
  generations (and, in the study, across checkpoints).
- BatchNorm is never reset: its scale, bias and statistics are all fit.

Facts of the reference (ahmdtaha/knowledge_evolution@a3f2eb2,
``layers/{conv,linear,bn}_type.py``, ``utils/net_utils.py``,
``train_KE_cls.py``) and where ltjax differs:

- the reset part is re-initialised with torch's default
  ``kaiming_uniform_(a=sqrt(5))``: ``U[-1/sqrt(fan_in), 1/sqrt(fan_in)]``,
  std ``1/sqrt(3 fan_in)``, about 2.45 times smaller than the He normal
  (``sqrt(2 / fan_in)``) of the first initialisation. ltjax draws the same
  (:func:`reset_draw`). Until #31.6 it re-drew the model's own He normal:
  harmless under KELS on digits, but under WELS, where every unit has reset
  inputs, the fit hypothesis then stayed 9 pp below the dense net at
  generation 4 (1.6 pp with the reference's draw; docs/studies);
- the reference resets no linear bias (its conv bias reset would crash on an
  undefined ``m``; its ResNets have none); ltjax resets the reset outputs'
  biases of hidden dense/conv layers to zero (KELS), and keeps every bias
  under WELS (whose masks cover kernels only, as the reference's);
- its ``--reset_hypothesis`` (a new WELS mask per generation) crashes;
  ltjax keeps one mask for all generations, as the paper.

The slim net (:func:`extract_slim`) slices every kernel to its fit inputs and
outputs, every BatchNorm's scale, bias, mean and variance to its fit
channels, and the classifier to its fit inputs. Since a fit unit is fed
only by fit units (the weights from reset units into fit units are reset
weights), its logits equal the dense net's with the reset part zeroed
(``masking.apply(params, masks)``), in eval mode also with BatchNorm: a
reset channel after BatchNorm carries a constant, but only into reset units.
The slim net is a model of the registry: an MLP (also ``mlp_bn``) with
hidden widths ``ceil(sr * w)``, or a ResNet of width ``ceil(sr * width)``
when the stages split alike (``ceil(sr * 2 w) == 2 ceil(sr * w)`` and the
same for ``4 w``: any ``sr`` for which ``sr * width`` is a whole number,
e.g. 0.5 for width 16); VGG and Conv-n (fixed widths in the registry) have
KELS masks but no slim net.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from ltjax import models
    >>> from ltjax.methods import knowledge_evolution
    >>> model = models.create("mlp", widths=(8, 4), num_classes=3)
    >>> params, stats = models.init(model, jax.random.key(0), (6,))
    >>> masks = knowledge_evolution.kels_masks(model, params, split_rate=0.5)
    >>> fresh = knowledge_evolution.reset_draw(jax.random.key(1), params)
    >>> params = knowledge_evolution.ke_reinit(params, masks, fresh)   # the next generation
    >>> slim, slim_params, slim_stats = knowledge_evolution.extract_slim(
    ...     model, params, stats, split_rate=0.5, input_shape=(6,))
    >>> slim.widths
    (4, 2)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax import models
from ltjax.core import masking, rng, topk, tree

PyTree = Any

#: The split kinds: kernel-level (KELS) and weight-level (WELS).
SPLITS = ("kels", "wels")


def check_split_rate(split_rate: float) -> float:
    """``split_rate`` as a float, refused unless in (0, 1].

    Example:
        >>> from ltjax.methods import knowledge_evolution
        >>> knowledge_evolution.check_split_rate(0.5)
        0.5
    """
    if isinstance(split_rate, bool) or not isinstance(split_rate, int | float | np.floating) or (
            not 0.0 < float(split_rate) <= 1.0):
        raise ValueError(f"split_rate must be a number in (0, 1] (the fit share), "
                         f"got {split_rate!r}")
    return float(split_rate)


def fit_count(n: int, split_rate: float) -> int:
    """``ceil(split_rate * n)``: the fit units of a layer of ``n`` (at least 1).

    Exact (:func:`ltjax.core.topk.count`, ``'ceil'``, the split rate read as the
    decimal typed), so ``0.3`` of 10 gives 3 (the reference's float
    ``math.ceil(0.3 * 10)`` gives 4, from 3.0000000000000004).

    Example:
        >>> from ltjax.methods.knowledge_evolution import fit_count
        >>> fit_count(300, 0.5), fit_count(10, 0.3), fit_count(3, 0.5)
        (150, 3, 2)
    """
    check_split_rate(split_rate)
    return max(1, topk.count(int(n), split_rate, rounding="ceil"))


def _axis_entry(entry: Any) -> tuple[str | None, int]:
    if entry is None:
        return None, 1
    if isinstance(entry, str):
        return entry, 1
    return entry[0], int(entry[1])


def _axis_keep(entry: Any, length: int, split_rate: float) -> np.ndarray:
    """Which entries of one axis are fit: all (None) or the first units of its permutation."""
    name, repeats = _axis_entry(entry)
    if name is None:
        return np.ones(length, bool)
    n = length // repeats
    return (np.arange(length) % n) < fit_count(n, split_rate)  # [repeats, n], units fastest


def _norm_layers(params: PyTree) -> set[str]:
    """The layers (path prefixes) with a ``scale`` leaf: BatchNorms, never reset."""
    return {name.rsplit("/", 1)[0] for name in tree.names(params) if name.endswith("/scale")}


def _layer(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else ""


def _spec(model: Any, params: PyTree) -> Any:
    try:
        return models.permutation_spec(model, params)
    except TypeError as err:
        raise ValueError(f"Knowledge Evolution's KELS split reads a layer's units from the "
                         f"model's permutation spec; {type(model).__name__} has none "
                         f"(bundled models: mlp, lenet_300_100, mlp_bn, conv2/4/6, vgg*, "
                         f"resnet*)") from err


def kels_masks(model: Any, params: PyTree, *, split_rate: float) -> PyTree:
    """KELS split masks: the first ``ceil(sr * C_in)`` inputs x ``ceil(sr * C_out)`` outputs.

    Every kernel keeps (True, the fit hypothesis) the fit units of each axis
    a permutation acts on (``ceil(sr * n)`` of its ``n``) and all entries of
    the other axes: the first layer's inputs and the classifier's outputs,
    and a conv's spatial axes. So a hidden kernel ``[kh, kw, C_in, C_out]``
    keeps ``kh * kw * ceil(sr * C_in) * ceil(sr * C_out)`` weights. Biases
    follow their layer's outputs; BatchNorm leaves are all True (never reset).

    Args:
      model: a bundled model (:func:`ltjax.models.create`).
      params: its params (arrays or ``jax.ShapeDtypeStruct``; one member, unstacked).
      split_rate: the fit share ``sr`` in (0, 1].

    Returns:
      Bool NumPy masks with the params' structure.

    Raises:
      ValueError: a bad split rate or a model without a permutation spec.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax import models
        >>> from ltjax.methods import knowledge_evolution
        >>> model = models.create("mlp", widths=(8, 4), num_classes=3)
        >>> params, stats = models.init(model, jax.random.key(0), (6,))
        >>> masks = knowledge_evolution.kels_masks(model, params, split_rate=0.5)
        >>> int(masks["Dense_1"]["kernel"].sum())          # 4 * 2 of 8 * 4
        8
    """
    split_rate = check_split_rate(split_rate)
    spec = _spec(model, params)
    norms = _norm_layers(params)

    def one(name: str, leaf: Any) -> np.ndarray:
        shape = tuple(np.shape(leaf) if not hasattr(leaf, "shape") else leaf.shape)
        if _layer(name) in norms:
            return np.ones(shape, bool)
        keep = np.ones(shape, bool)
        for axis, entry in enumerate(spec.params[name]):
            along = _axis_keep(entry, shape[axis], split_rate)
            keep &= along.reshape([-1 if a == axis else 1 for a in range(len(shape))])
        return keep

    return tree.map_with_name(one, params)


def wels_masks(params: PyTree, key: jax.Array, *, split_rate: float,
               selection: PyTree | None = None) -> PyTree:
    """WELS split masks: ``1[U >= 1 - sr]`` per selected weight, a Bernoulli(sr) draw.

    Leaf ``i`` (in tree order) of the selection draws ``U`` from
    ``fold_in(key, i)``; other leaves (biases, BatchNorm) are all True.
    Not an exact count: about ``sr`` of each kernel is fit, as the reference.

    Args:
      params: params (arrays or ``jax.ShapeDtypeStruct``; one member).
      key: a JAX key (e.g. ``rng.stream(replicate_key, 'wels')``).
      split_rate: the fit share in (0, 1] (1: everything fit).
      selection: static bool tree of the leaves to split (default
        :func:`ltjax.core.masking.prunable`: the dense and conv kernels).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax import models
        >>> from ltjax.methods import knowledge_evolution
        >>> model = models.create("mlp", widths=(8, 4), num_classes=3)
        >>> params, stats = models.init(model, jax.random.key(0), (6,))
        >>> masks = knowledge_evolution.wels_masks(params, jax.random.key(0), split_rate=0.5)
        >>> masks["Dense_0"]["kernel"].shape, masks["Dense_0"]["kernel"].dtype
        ((6, 8), dtype('bool'))
    """
    split_rate = check_split_rate(split_rate)
    return _per_leaf(
        params, selection, "selection",
        lambda i, shape, _: jax.random.uniform(jax.random.fold_in(key, i), shape)
        >= 1.0 - split_rate,
        lambda shape, _: jnp.ones(shape, bool))


def _per_leaf(params: PyTree, chosen: PyTree | None, name: str,
              draw: Callable[[int, tuple, Any], jax.Array],
              other: Callable[[tuple, Any], jax.Array]) -> PyTree:
    """``draw(i, shape, dtype)`` for chosen leaf ``i`` (tree order), ``other(shape, dtype)``
    for the rest; ``chosen`` defaults to :func:`ltjax.core.masking.prunable` (``name`` in
    errors)."""
    chosen = masking.prunable(params) if chosen is None else chosen
    leaves, treedef = jax.tree.flatten(params)
    flags = jax.tree.leaves(chosen)
    if len(flags) != len(leaves):
        raise ValueError(f"{name} must have the params' structure")
    return jax.tree.unflatten(treedef, [
        draw(i, tuple(leaf.shape), leaf.dtype) if flag else other(tuple(leaf.shape), leaf.dtype)
        for i, (leaf, flag) in enumerate(zip(leaves, flags, strict=True))])


def split_masks(model: Any, params: PyTree, *, split: str, split_rate: float,
                key: jax.Array | None = None) -> PyTree:
    """:func:`kels_masks` (``split='kels'``) or :func:`wels_masks` (``'wels'``, needs ``key``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax import models
        >>> from ltjax.methods import knowledge_evolution
        >>> model = models.create("mlp", widths=(8, 4), num_classes=3)
        >>> params, stats = models.init(model, jax.random.key(0), (6,))
        >>> masks = knowledge_evolution.split_masks(model, params, split="kels", split_rate=0.5)
        >>> int(masks["Dense_0"]["kernel"].sum())          # 6 inputs * 4 of 8 units
        24
    """
    if split == "kels":
        return kels_masks(model, params, split_rate=split_rate)
    if split == "wels":
        if key is None:
            raise ValueError("split='wels' draws its mask: pass key")
        return wels_masks(params, key, split_rate=split_rate)
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def reset_draw(key: jax.Array, params: PyTree, *, prunable: PyTree | None = None) -> PyTree:
    """The reference's values for the reset part: ``U[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` kernels.

    Torch's default ``nn.init.kaiming_uniform_(w, a=sqrt(5))``, which the
    reference's ``split_reinitialize`` draws for every reset kernel weight
    (``layers/{conv,linear}_type.py``): std ``1/sqrt(3 fan_in)``, with
    ``fan_in`` the product of all but the last (output) axis of a Flax
    kernel (``C_in`` of a dense kernel, ``kh * kw * C_in`` of a conv). Leaf
    ``i`` (tree order) draws from ``fold_in(key, i)``. The other leaves are
    zeros: a bias that a KELS mask resets restarts at 0; BatchNorm is never
    reset (its masks are all True), so its zeros are never used.

    Args:
      key: a JAX key (the study: ``fold_in(stream(init, 'ke_reinit'), g)``).
      params: params (arrays or ``jax.ShapeDtypeStruct``; one member).
      prunable: static bool tree of the kernels (default
        :func:`ltjax.core.masking.prunable`: the dense and conv kernels).

    Returns:
      A tree of the params' structure, shapes and dtypes.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax import models
        >>> from ltjax.methods import knowledge_evolution
        >>> model = models.create("mlp", widths=(8, 4), num_classes=3)
        >>> params, stats = models.init(model, jax.random.key(0), (6,))
        >>> masks = knowledge_evolution.kels_masks(model, params, split_rate=0.5)
        >>> fresh = knowledge_evolution.reset_draw(jax.random.key(3), params)
        >>> params = knowledge_evolution.ke_reinit(params, masks, fresh)
    """
    def draw(i: int, shape: tuple, dtype: Any) -> jax.Array:
        bound = 1.0 / np.sqrt(int(np.prod(shape[:-1])))
        return jax.random.uniform(jax.random.fold_in(key, i), shape, dtype,
                                  minval=-bound, maxval=bound)

    return _per_leaf(params, prunable, "prunable", draw, jnp.zeros)


def ke_reinit(params: PyTree, masks: PyTree, fresh_params: PyTree) -> PyTree:
    """The next generation's start: ``where(mask, W, W_fresh)`` leaf by leaf.

    The fit part (mask True) is kept bit for bit; the reset part takes the
    values of ``fresh_params``, the reference's draw :func:`reset_draw` with
    a new key. The split masks hold BatchNorm leaves all True, and batch
    statistics are not params: BatchNorm is never reset.

    Raises:
      ValueError: masks that are not bool (a float 0.5 is neither fit nor
        reset) or not of the params' shapes, ``fresh_params`` of another
        structure or shapes; naming the leaf (:func:`ltjax.core.masking.check`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax import models
        >>> from ltjax.methods import knowledge_evolution
        >>> model = models.create("mlp", widths=(8, 4), num_classes=3)
        >>> params, stats = models.init(model, jax.random.key(0), (6,))
        >>> masks = knowledge_evolution.kels_masks(model, params, split_rate=0.5)
        >>> fresh = knowledge_evolution.reset_draw(jax.random.key(7), params)
        >>> new = knowledge_evolution.ke_reinit(params, masks, fresh)
        >>> kept = masks["Dense_0"]["kernel"]            # the fit hypothesis keeps its weights
        >>> bool(jnp.array_equal(new["Dense_0"]["kernel"][kept], params["Dense_0"]["kernel"][kept]))
        True
    """
    masking.check(masks, params)
    tree.check_same_structure(fresh_params, params, name="fresh_params")
    return jax.tree.map(lambda w, m, f: jnp.where(m, w, f.astype(w.dtype)),
                        params, masks, fresh_params)


def generation_keys(keys: jax.Array, name: str, generation: int) -> jax.Array:
    """``fold_in(stream(key, name), generation)`` for each of the keys ``[S]``.

    Per replicate, so nothing depends on how many replicates run.

    Example:
        >>> from ltjax.core import rng
        >>> from ltjax.methods import knowledge_evolution
        >>> init_keys = rng.replicate_keys(0, 3)
        >>> reinit_keys = knowledge_evolution.generation_keys(init_keys, "ke_reinit", 2)
        >>> reinit_keys.shape
        (3,)
    """
    streams = rng.stream(keys, name)
    return jax.vmap(lambda k: jax.random.fold_in(k, generation))(streams)


def slim_model(model: Any, *, split_rate: float) -> Any:
    """The registry model of the KELS fit hypothesis: the slim net's architecture.

    An MLP or BatchNorm MLP with hidden widths ``ceil(sr * w)``; a ResNet of
    width ``ceil(sr * width)``.

    Raises:
      ValueError: a ResNet whose stages do not split alike (``ceil(sr * 2 w)
        != 2 ceil(sr * w)``: no registry ResNet has those channels), or a
        model without a slim net here (VGG, Conv-n: widths fixed by the
        registry).

    Example:
        >>> from ltjax import models
        >>> from ltjax.methods import knowledge_evolution
        >>> knowledge_evolution.slim_model(models.create("resnet20"), split_rate=0.5).width
        8
    """
    if isinstance(model, models.MLP | models.BatchNormMLP):
        return model.clone(widths=tuple(fit_count(w, split_rate) for w in model.widths))
    if isinstance(model, models.ResNet):
        width = fit_count(model.width, split_rate)
        for stage in (1, 2):
            kept = fit_count(model.width * 2**stage, split_rate)
            if kept != width * 2**stage:
                raise ValueError(
                    f"split_rate={split_rate} splits ResNet width {model.width} into "
                    f"{width}, {fit_count(model.width * 2, split_rate)}, "
                    f"{fit_count(model.width * 4, split_rate)} channels per stage: not a "
                    f"registry ResNet (its stages have w, 2w, 4w); pick sr with sr * width "
                    f"a whole number")
        return model.clone(width=width)
    raise ValueError(f"no slim net of {type(model).__name__} in the model registry (only MLPs "
                     f"and ResNets have configurable widths); use its KELS masks with "
                     f"masking.apply for the fit hypothesis")


def _slice(leaf: jax.Array, entries: tuple, split_rate: float, leading_axes: int) -> jax.Array:
    for axis, entry in enumerate(entries):
        if _axis_entry(entry)[0] is None:
            continue
        length = leaf.shape[axis + leading_axes]
        index = np.nonzero(_axis_keep(entry, length, split_rate))[0]
        leaf = jnp.take(leaf, index, axis=axis + leading_axes)
    return leaf


def extract_slim(model: Any, params: PyTree, batch_stats: PyTree, *, split_rate: float,
                 input_shape: tuple[int, ...], leading_axes: int = 0,
                 ) -> tuple[Any, PyTree, PyTree]:
    """The slim net: the KELS fit hypothesis as a smaller model of the registry.

    Every kernel is sliced to its fit inputs and outputs, every bias to its
    fit outputs, every BatchNorm's scale, bias, mean and var to its fit
    channels, the classifier to its fit inputs (all outputs). Its logits
    equal ``model``'s with the reset part zeroed (module doc).

    Args:
      model: a bundled MLP, BatchNorm MLP or ResNet.
      params: its params (``[S, ...]`` with ``leading_axes=1``).
      batch_stats: its BatchNorm statistics (``{}`` without BatchNorm).
      split_rate: the fit share of the KELS split.
      input_shape: one example's shape (checks the slim params against
        the slim model's own init).
      leading_axes: member axes in front of every leaf.

    Returns:
      ``(slim_model, slim_params, slim_batch_stats)``.

    Raises:
      ValueError: no slim net of this model (:func:`slim_model`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax import models
        >>> from ltjax.methods import knowledge_evolution
        >>> model = models.create("mlp", widths=(8, 4), num_classes=3)
        >>> params, stats = models.init(model, jax.random.key(0), (6,))
        >>> slim, p, s = knowledge_evolution.extract_slim(model, params, stats, split_rate=0.5,
        ...                                               input_shape=(6,))
        >>> slim.apply({"params": p}, jnp.zeros((2, 6)), train=False).shape
        (2, 3)
    """
    slim = slim_model(model, split_rate=split_rate)
    spec = _spec(model, params if leading_axes == 0 else jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape[leading_axes:], x.dtype), params))

    def cut(entries: dict, name: str, leaf: jax.Array) -> jax.Array:
        return _slice(leaf, entries[name], split_rate, leading_axes)

    slim_params = tree.map_with_name(functools.partial(cut, spec.params), params)
    slim_stats = tree.map_with_name(functools.partial(cut, spec.batch_stats), batch_stats)
    want = jax.eval_shape(lambda k: models.init(slim, k, tuple(input_shape)), jax.random.key(0))
    got = (slim_params, slim_stats)
    shapes = jax.tree.map(lambda x: tuple(x.shape[leading_axes:]), got)
    if jax.tree.structure(want) != jax.tree.structure(got) or shapes != jax.tree.map(
            lambda x: tuple(x.shape), want):
        raise ValueError(f"the sliced params do not fit {type(slim).__name__}'s own "
                         f"layout (a model whose permutation spec misses a coupling?)")
    return slim, slim_params, slim_stats
