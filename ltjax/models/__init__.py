"""Bundled Flax Linen models and a registry by name.

Every model is called as ``model.apply(variables, x, train=...)`` and returns
logits ``[B, num_classes]``; inputs are float32 NHWC images ``[B, H, W, C]``
(the MLP flattens any ``[B, ...]``). Kernels are He normal (fan-in) as in
OpenLTH, biases zero, batch-norm scale one.

========================  =============================================  ==========
name                      architecture                                   module
========================  =============================================  ==========
``mlp``                   MLP, ``widths=`` required                      :mod:`.mlp`
``lenet_300_100``         LeNet-300-100 (Frankle & Carbin 2019)          :mod:`.mlp`
``mlp_bn``                MLP with Dense -> BatchNorm -> ReLU            :mod:`.mlp`
``conv2/4/6``             Conv-2/4/6 (Frankle & Carbin 2019, Fig. 2)     :mod:`.conv`
``vgg11/13/16/19``        OpenLTH ``cifar_vgg`` (batch norm)             :mod:`.vgg`
``resnet20/32/56``        OpenLTH ``cifar_resnet`` (He et al. 2016)      :mod:`.resnet`
``transformer_1l/2l``     decoder-only, token ids ``[B, T]`` (Nanda      :mod:`.transformer`
                          et al. 2023's grokking model: 1 layer)
``vit_tiny``              ViT, 2 layers, d 64, patches of 4              :mod:`.transformer`
========================  =============================================  ==========

The transformers take int token ids ``[B, T]`` (``input_shape`` ``(T,)``,
their :attr:`~.transformer.Transformer.input_dtype` int32: :func:`init`
builds int dummy tokens) and return the logits of the last position;
:func:`init` rejects an input shape of the other kind (images for a sequence
model, tokens for the ViT) before any work.

The output layer is ``Dense_{len(widths)}`` (MLP), ``Dense_2`` (Conv-n),
``Dense_0`` (VGG), ``fc`` (ResNet), ``unembed`` (transformer) or ``head``
(ViT): the last ``kernel`` leaf in ``jax.tree`` order, except for MLPs with 10
or more hidden layers (``'Dense_10' < 'Dense_2'``); :func:`output_layer` names
it for any of them. A transformer with ``tie_embeddings=True`` has no output
kernel (its logits come from the token embedding, never pruned by default):
:func:`output_layer` then names its last MLP layer, so name layers explicitly.

Each model also defines its permutation spec (:func:`permutation_spec`, for
:mod:`ltjax.core.matching`) and the layers REPAIR renormalises
(:func:`repair_layers`; :func:`output_stats` and :func:`repair` run the
forward passes, :mod:`ltjax.core.repair` holds the math).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from ltjax import models
    >>> model = models.create("mlp_bn", widths=(8,), num_classes=3)
    >>> params, batch_stats = models.init(model, jax.random.key(0), (4,))
    >>> x = jnp.zeros((2, 4))
    >>> logits, updates = model.apply(
    ...     {"params": params, "batch_stats": batch_stats}, x, train=True,
    ...     mutable=["batch_stats"])
    >>> logits.shape, sorted(updates["batch_stats"])
    ((2, 3), ['BatchNorm_0'])
    >>> models.create("resnet20", num_classes=10, width=32).depth   # any registered name
    20
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ltjax.core import matching
from ltjax.core import repair as repair_math
from ltjax.models import common, conv, mlp, resnet, transformer, vgg
from ltjax.models.conv import ConvN
from ltjax.models.mlp import MLP, BatchNormMLP
from ltjax.models.resnet import ResNet
from ltjax.models.transformer import Transformer, ViT
from ltjax.models.vgg import VGG

__all__ = [
    "NAMES", "MLP", "BatchNormMLP", "ConvN", "VGG", "ResNet", "Transformer", "ViT", "create",
    "init", "register",
    "has_batch_norm", "is_conv", "output_layer",
    "permutation_spec", "activations", "repair_layers", "output_stats", "repair", "repair_fn",
    "common", "conv", "mlp", "resnet", "transformer", "vgg",
]

# name -> (class, fields fixed by the name)
_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "mlp": (MLP, {}),
    "lenet_300_100": (MLP, {"widths": (300, 100)}),
    "mlp_bn": (BatchNormMLP, {}),
    "conv2": (ConvN, {"depth": 2}),
    "conv4": (ConvN, {"depth": 4}),
    "conv6": (ConvN, {"depth": 6}),
    "vgg11": (VGG, {"depth": 11}),
    "vgg13": (VGG, {"depth": 13}),
    "vgg16": (VGG, {"depth": 16}),
    "vgg19": (VGG, {"depth": 19}),
    "resnet20": (ResNet, {"depth": 20}),
    "resnet32": (ResNet, {"depth": 32}),
    "resnet56": (ResNet, {"depth": 56}),
    "transformer_1l": (Transformer, {"num_layers": 1}),
    "transformer_2l": (Transformer, {"num_layers": 2}),
    "vit_tiny": (ViT, {}),
}

#: The registered model names, in a stable order (:func:`register` adds yours).
NAMES: tuple[str, ...] = tuple(_REGISTRY)


def register(name: str, module: type[nn.Module], *, fixed: Mapping[str, Any] | None = None,
             permutation_spec: Callable[[nn.Module, Any], matching.PermutationSpec] | None = None,
             ) -> None:
    """Make your own Linen module a named model: every study can then train it.

    After ``register("my_mlp", MyMLP)``, ``config.model = "my_mlp"`` (and
    ``config.model_kwargs`` for its other fields) runs any study on it,
    controls, checkpoints and plots included, and :func:`create` builds it.
    The module must be called as ``model(x, train=...)`` and return logits
    ``[B, num_classes]``, with a ``num_classes`` field; its prunable leaves
    are the kernels (:func:`ltjax.core.masking.prunable`). Registration lasts for
    the Python process: register before running a study (an experiment
    module run from the command line knows only the bundled models).

    Args:
      name: the model's name (not one already registered).
      module: the Linen module class.
      fixed: fields fixed by the name (as ``depth=20`` for ``'resnet20'``).
      permutation_spec: ``(model, params) -> PermutationSpec`` for weight
        matching (:func:`permutation_spec` then checks and returns it), or
        None (the re-basin studies then refuse the model).

    Raises:
      ValueError: a name already registered or not a non-empty string.
      TypeError: ``module`` is not a Linen module class with a ``num_classes``
        field, or ``fixed`` names fields it does not have.

    Example:
        Not run here (a registration lasts for the whole process):

        ```python
        class MyMLP(nn.Module):
            hidden: int = 64
            num_classes: int = 10

            @nn.compact
            def __call__(self, x, train=False):
                x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
                return nn.Dense(self.num_classes)(x)

        models.register("my_mlp", MyMLP)
        models.create("my_mlp", hidden=32)    # MyMLP(hidden=32, num_classes=10)
        ```
    """
    global NAMES
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered; pick another name")
    if not (isinstance(module, type) and issubclass(module, nn.Module)):
        raise TypeError(f"module must be a flax.linen Module class, got {module!r}")
    fields = _fields(module)
    if "num_classes" not in fields:
        raise TypeError(f"{module.__name__} needs a num_classes field (the number of logits)")
    fixed = dict(fixed or {})
    unknown = sorted(set(fixed) - set(fields))
    if unknown:
        raise TypeError(f"fixed names fields {unknown} that {module.__name__} does not have "
                        f"(its fields: {', '.join(fields)})")
    if permutation_spec is not None:
        if not callable(permutation_spec):
            raise TypeError(f"permutation_spec must be callable, got {permutation_spec!r}")
        _SPECS[module] = permutation_spec
    _REGISTRY[name] = (module, fixed)
    NAMES = tuple(_REGISTRY)


def _fields(cls: type[nn.Module]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name"))


def create(name: str, *, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """The registered model ``name``, with ``kwargs`` forwarded to its module.

    Args:
        name: one of :data:`NAMES`.
        num_classes: number of logits.
        **kwargs: other fields of the module, e.g. ``widths=(512, 512, 512)`` for
            ``'mlp'``, ``width=64`` for the ResNets, ``materialize_inputs=True``
            for the conv models. Fields fixed by the name (``depth``, or
            ``widths`` for ``'lenet_300_100'``) cannot be passed.

    Returns:
        An unbound ``flax.linen`` module.

    Raises:
        ValueError: unknown ``name``, or a bad value (the message names the field).
        TypeError: a keyword the model does not take or one fixed by the name.

    Example:
        >>> from ltjax import models
        >>> models.create("mlp", widths=(512, 512, 512)).widths
        (512, 512, 512)
        >>> models.create("resnet20", width=64, materialize_inputs=True).width
        64
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; registered names: "
                         f"{', '.join(_REGISTRY)} (models.register adds your own)")
    cls, fixed = _REGISTRY[name]
    allowed = [f for f in _fields(cls) if f not in fixed and f != "num_classes"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        fixed_given = [k for k in unknown if k in fixed]
        detail = f" ({', '.join(fixed_given)} fixed by the name)" if fixed_given else ""
        raise TypeError(
            f"model {name!r} got unexpected keyword argument(s) {', '.join(unknown)}{detail}; "
            f"it accepts num_classes and {', '.join(allowed) or 'nothing else'}"
        )
    if cls is MLP and "widths" not in fixed and "widths" not in kwargs:
        raise TypeError(f"model {name!r} needs widths=(hidden widths...), e.g. widths=(300, 100)")
    return cls(**fixed, num_classes=num_classes, **kwargs)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...]) -> Any:
    # Token models (the transformers) declare int32 inputs; images and features are float32.
    dtype = getattr(type(model), "input_dtype", jnp.float32)
    return model.init(key, jnp.zeros((1, *input_shape), dtype), train=False)


def _plain(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def init(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...]) -> tuple[dict, dict]:
    """Initial ``(params, batch_stats)`` of ``model`` for inputs of shape ``input_shape``.

    Runs ``model.init`` (jitted) on a dummy batch of zeros ``[1, *input_shape]``
    with ``train=False``. Works under ``jax.vmap`` over keys and ``jax.eval_shape``.

    Args:
        model: a module from :func:`create` (or any module called as
            ``model(x, train=...)``).
        key: a PRNG key (typed or raw).
        input_shape: one example's shape, without the batch axis, e.g.
            ``(28, 28, 1)`` or ``(32, 32, 3)``.

    Returns:
        ``(params, batch_stats)`` as plain nested dicts; ``batch_stats`` is ``{}``
        for models without batch norm.

    Raises:
        ValueError: an input shape the model cannot take, before any work (a
            model with a ``check_input_shape`` method: images for a sequence
            model, token sequences for an image model).

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> params, batch_stats = models.init(models.create("lenet_300_100"), jax.random.key(0),
        ...                                   (28, 28, 1))
        >>> params["Dense_0"]["kernel"].shape, batch_stats
        ((784, 300), {})
    """
    input_shape = tuple(int(d) for d in input_shape)
    check = getattr(model, "check_input_shape", None)
    if check is not None:
        check(input_shape)
    variables = _plain(_init(model, key, input_shape))
    extra = sorted(set(variables) - {"params", "batch_stats"})
    if extra:
        raise ValueError(f"model has variable collections {extra} besides params/batch_stats")
    return variables.get("params", {}), variables.get("batch_stats", {})


def has_batch_norm(model_or_batch_stats: nn.Module | Mapping) -> bool:
    """Whether applying in train mode needs ``mutable=['batch_stats']``.

    Args:
        model_or_batch_stats: a module from :func:`create` (decided by its
            class, no init needed), the ``batch_stats`` dict returned by
            :func:`init`, or a whole ``variables`` dict (with a ``'params'`` key).

    Example:
        >>> from ltjax import models
        >>> models.has_batch_norm(models.create("vgg16")), models.has_batch_norm({})
        (True, False)
    """
    if isinstance(model_or_batch_stats, nn.Module):
        flag = getattr(type(model_or_batch_stats), "has_batch_norm", None)
        if flag is None:
            raise TypeError(
                f"cannot tell whether {type(model_or_batch_stats).__name__} uses batch norm; "
                "pass its batch_stats instead"
            )
        return bool(flag)
    tree = model_or_batch_stats
    if isinstance(tree, Mapping) and "params" in tree:
        tree = tree.get("batch_stats", {})
    return len(jax.tree.leaves(tree)) > 0


def is_conv(params: Any, *, leading_axes: int = 0) -> bool:
    """True when some leaf named ``kernel`` is 4-D (a conv kernel ``[kh, kw, in, out]``).

    Args:
        params: a params tree (arrays or ``jax.ShapeDtypeStruct``).
        leading_axes: extra leading axes on every leaf (e.g. 1 for params
            stacked over seeds ``[S, ...]``).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax import models
        >>> models.is_conv({"Conv_0": {"kernel": jnp.zeros((3, 3, 3, 8))}})
        True
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        last = path[-1] if path else None
        key = getattr(last, "key", getattr(last, "name", None))
        if key == "kernel" and len(getattr(leaf, "shape", np.shape(leaf))) - leading_axes == 4:
            return True
    return False


def output_layer(params: Any, *, leading_axes: int = 0) -> str:
    """The name of the output layer of a bundled model's params, e.g. ``'Dense_2'``, ``'fc'``.

    The output layer is the last layer with a 2-D ``kernel`` (a dense layer),
    layers ordered by name with their numbers compared as numbers
    (``'Dense_2' < 'Dense_10'``): LeNet-300-100's ``Dense_2``, an MLP's
    ``Dense_{len(widths)}``, Conv-n's ``Dense_2``, VGG's ``Dense_0``, the
    ResNets' ``fc``. A model of your own whose classifier is not its
    last-named dense layer needs its name spelled out instead.

    Args:
      params: a params tree (arrays or ``jax.ShapeDtypeStruct``).
      leading_axes: extra leading axes on every leaf (1 for params stacked over
        seeds ``[S, ...]``).

    Returns:
      The layer's path without the leaf, ``'/'``-separated.

    Raises:
      ValueError: no leaf named ``kernel`` is 2-D.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax import models
        >>> models.output_layer({"Dense_0": {"kernel": jnp.zeros((8, 4))},
        ...                      "Dense_1": {"kernel": jnp.zeros((4, 2))}})
        'Dense_1'
    """
    dense = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if names and names[-1] == "kernel" and (
                len(getattr(leaf, "shape", np.shape(leaf))) - leading_axes == 2):
            dense.append("/".join(names[:-1]))
    if not dense:
        raise ValueError("no dense layer (a 2-D 'kernel' leaf) in params: no output layer to name")
    return max(dense, key=_natural_key)


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    """``'Block_10/fc'`` -> comparable parts, numbers as numbers (``2 < 10``)."""
    return [(0, int(part)) if part.isdigit() else (1, part)
            for part in re.split(r"(\d+)", name) if part]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _capture(model: nn.Module, wanted: frozenset, variables: dict, x: jax.Array) -> dict:
    _, state = model.apply(
        variables, x, train=False, mutable=["intermediates"],
        capture_intermediates=lambda mdl, method: (
            method == "__call__" and "/".join(mdl.path) in wanted))
    return state["intermediates"]


_SPECS = {MLP: mlp.permutation_spec, BatchNormMLP: mlp.batch_norm_permutation_spec,
          ConvN: conv.permutation_spec, VGG: vgg.permutation_spec,
          ResNet: resnet.permutation_spec, Transformer: transformer.permutation_spec,
          ViT: transformer.vit_permutation_spec}


def permutation_spec(model: nn.Module, params: Any, batch_stats: Any = None,
                     ) -> matching.PermutationSpec:
    """The :class:`ltjax.core.matching.PermutationSpec` of a bundled model, checked.

    Defined next to each model (``mlp.permutation_spec``, ...); this picks it
    by class and checks it against ``params`` (and ``batch_stats`` if given)
    with :func:`ltjax.core.matching.check_spec`.

    Args:
      model: a module from :func:`create`.
      params: its params (arrays or ``jax.ShapeDtypeStruct``; unstacked).
      batch_stats: its batch statistics, to check them too.

    Raises:
      TypeError: a model class without a spec (your own module): write its
        :class:`ltjax.core.matching.PermutationSpec` by hand (the error shows one;
        docs page data-and-models.md, "Your own model, dataset or permutation spec").
      ValueError: the spec does not fit ``params`` / ``batch_stats``.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> model = models.create("mlp", widths=(8, 8), num_classes=3)
        >>> params_a, _ = models.init(model, jax.random.key(0), (4,))
        >>> spec = models.permutation_spec(model, params_a)
        >>> spec.names
        ('Dense_0', 'Dense_1')
    """
    builder = _SPECS.get(type(model))
    if builder is None:
        raise TypeError(
            f"no permutation spec for {type(model).__name__}: only the bundled models have one "
            f"({', '.join(c.__name__ for c in _SPECS)}). For your own module, write a "
            f"ltjax.core.matching.PermutationSpec naming which axis of which params leaf each "
            f"permutation acts on, e.g. PermutationSpec(params={{'Dense_0/kernel': (None, 'h'), "
            f"'Dense_0/bias': ('h',), 'Dense_1/kernel': ('h', None), 'Dense_1/bias': (None,)}}), "
            f"and check it with matching.check_spec(spec, params); see docs/data-and-models.md, "
            f"'Your own model, dataset or permutation spec'."
        )
    spec = builder(model, params)
    matching.check_spec(spec, params, batch_stats)
    return spec


def activations(model: nn.Module, spec: matching.PermutationSpec, variables: Mapping,
                x: jax.Array, *, post_relu: bool = True) -> dict[str, list[jax.Array]]:
    """The post-ReLU activations of each permutation's units.

    Runs ``model.apply(variables, x, train=False)`` capturing the outputs
    (``[B, ..., n]``, units last) of the modules named in
    ``spec.activations``, for :func:`ltjax.core.matching.activation_matching`.
    One convention for every bundled model: each named module's output feeds
    a ReLU (a hidden ``Dense_i`` of the MLP and Conv-n, a ``Conv_i`` of
    Conv-n, the ``BatchNorm_i`` after each VGG conv and of the BatchNorm MLP,
    a ResNet's ``bn_init`` and each block's ``bn1``) or already ends in one
    (a ResNet block's output, the residual stream), and the ReLU is applied
    here (``post_relu``, on by default), so units are compared by what the
    next layer sees, as both Git Re-Basin reference scripts do (``nn.relu``
    of the captured Dense outputs in ``mnist_mlp_activation_matching.py``).
    ``post_relu=False`` returns the captured outputs as they are.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> model = models.create("mlp", widths=(8, 8), num_classes=3)
        >>> params_a, _ = models.init(model, jax.random.key(0), (4,))
        >>> x = jax.random.normal(jax.random.key(2), (16, 4))      # normalised training inputs
        >>> spec = models.permutation_spec(model, params_a)
        >>> acts = models.activations(model, spec, {"params": params_a}, x)
        >>> sorted(acts) == sorted(spec.names), acts["Dense_0"][0].shape
        (True, (16, 8))
    """
    if not spec.activations:
        raise ValueError("spec has no activations entry (which module outputs carry each "
                         "permutation)")
    wanted = frozenset(module for modules in spec.activations.values() for module in modules)
    intermediates = _capture(model, wanted, dict(variables), x)
    captured = {}
    for module in wanted:
        node = intermediates
        for part in module.split("/"):
            if part not in node:
                raise ValueError(f"spec activations name module {module!r}, which the model "
                                 "does not call")
            node = node[part]
        captured[module] = node["__call__"][0]
        if post_relu:
            captured[module] = jax.nn.relu(captured[module])
    return {perm: [captured[m] for m in modules] for perm, modules in spec.activations.items()}


# ----------------------------------------------------------------------------- REPAIR

_REPAIR_LAYERS = {MLP: mlp.repair_layers, BatchNormMLP: mlp.batch_norm_repair_layers,
                  ConvN: conv.repair_layers, VGG: vgg.repair_layers,
                  ResNet: resnet.repair_layers}


def repair_layers(model: nn.Module, params: Any) -> tuple[str, ...]:
    """The layers whose output channels REPAIR renormalises, in forward order.

    Defined next to each model: hidden ``Dense_i`` of the MLP; ``Conv_i`` and
    the hidden dense layers of Conv-n; every ``BatchNorm_i`` of VGG; every
    batch norm of the ResNets (Jordan et al. 2023, "REPAIR", ICLR).

    Raises:
      TypeError: a model class without REPAIR layers.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> model = models.create("mlp", widths=(8, 8), num_classes=3)
        >>> params_a, _ = models.init(model, jax.random.key(0), (4,))
        >>> models.repair_layers(model, params_a)
        ('Dense_0', 'Dense_1')
    """
    builder = _REPAIR_LAYERS.get(type(model))
    if builder is None:
        raise TypeError(f"no REPAIR layers for {type(model).__name__}; "
                        f"bundled: {', '.join(c.__name__ for c in _REPAIR_LAYERS)}")
    return builder(model, params)


def _module_path(context: Any) -> str | None:
    if context.method_name != "__call__":
        return None
    return "/".join(context.module.path)


def _check_layers(layers: Any, found: Mapping, what: str) -> None:
    missing = sorted(set(layers) - set(found))
    if missing:
        raise ValueError(f"{what} names layers {missing}, which the model does not call "
                         f"(it called {sorted(found) or 'none of them'})")


@functools.partial(jax.jit, static_argnums=(0, 3))
def _output_stats(model: nn.Module, variables: Mapping, x: jax.Array,
                  layers: tuple[str, ...]) -> dict[str, dict[str, jax.Array]]:
    found: dict[str, dict[str, jax.Array]] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = _module_path(context)
        if path in layers:
            if path in found:
                raise ValueError(f"layer {path!r} is called twice; REPAIR needs one call")
            found[path] = repair_math.channel_stats(out)
        return out

    with nn.intercept_methods(interceptor):
        model.apply(dict(variables), x, train=False)
    _check_layers(layers, found, "layers")
    return found


def output_stats(model: nn.Module, variables: Mapping, x: jax.Array, *,
                 layers: tuple[str, ...] | None = None) -> dict[str, dict[str, jax.Array]]:
    """Per-channel mean and std of each REPAIR layer's output on ``x`` (eval mode).

    One jitted forward pass ``model.apply(variables, x, train=False)`` that
    reduces each listed layer's output with :func:`ltjax.core.repair.channel_stats`.
    Run on the endpoints of a path, these are REPAIR's statistics to
    interpolate.

    Args:
      model: a bundled module (or any whose ``__call__`` takes ``train=``).
      variables: ``{'params': ..., 'batch_stats': ...}`` of one network.
      x: normalised training inputs ``[N, ...]`` (one batch: every layer is
        measured on all of it).
      layers: module paths (default :func:`repair_layers`).

    Returns:
      ``{layer: {'mean': [n], 'std': [n]}}``.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> model = models.create("mlp", widths=(8, 8), num_classes=3)
        >>> params_a, _ = models.init(model, jax.random.key(0), (4,))
        >>> x = jax.random.normal(jax.random.key(2), (16, 4))      # normalised training inputs
        >>> stats_a = models.output_stats(model, {"params": params_a}, x)
        >>> stats_a["Dense_0"]["std"].shape
        (8,)
    """
    layers = tuple(layers) if layers is not None else repair_layers(model, variables["params"])
    return _output_stats(model, _plain(variables), jnp.asarray(x), layers)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("eps",))
def _repair(model: nn.Module, variables: Mapping, x: jax.Array, targets: Mapping, *,
            eps: float) -> tuple[dict, dict]:
    corrections: dict[str, tuple[jax.Array, jax.Array]] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = _module_path(context)
        if path in targets:
            if path in corrections:
                raise ValueError(f"layer {path!r} is called twice; REPAIR needs one call")
            scale, shift = repair_math.affine_correction(
                repair_math.channel_stats(out), targets[path], eps=eps)
            corrections[path] = (scale, shift)
            # Downstream layers see the corrected output: each layer is measured
            # after every layer before it was corrected.
            out = repair_math.apply_affine(out, scale, shift)
        return out

    with nn.intercept_methods(interceptor):
        model.apply(dict(variables), x, train=False)
    _check_layers(targets, corrections, "targets")
    return repair_math.fold(variables["params"], corrections), corrections


def repair(model: nn.Module, variables: Mapping, x: jax.Array, targets: Mapping, *,
           eps: float = repair_math.DEFAULT_EPS) -> dict:
    """REPAIR (Jordan et al. 2023): params whose layer outputs on ``x`` have the target stats.

    One jitted forward pass in eval mode on ``x``: at each layer of
    ``targets``, in forward order, the output's per-channel mean and std are
    measured (after the corrections of the layers before it), the affine map
    onto ``targets[layer]`` is applied to the output the rest of the pass
    sees, and it is folded into the layer's params
    (:func:`ltjax.core.repair.fold`). On ``x``, the returned network's layer
    outputs then have the target means and (up to ``eps``) stds.

    Args:
      model: a bundled module.
      variables: ``{'params': ..., 'batch_stats': ...}`` of one network
        (typically a point on an interpolation path).
      x: normalised training inputs ``[N, ...]``.
      targets: ``{layer: {'mean': [n], 'std': [n]}}``, e.g.
        ``ltjax.core.repair.target_stats(alpha, output_stats(a), output_stats(b))``.
      eps: added to the measured variance.

    Returns:
      The corrected params (batch statistics are unchanged).

    Raises:
      ValueError: a target layer that the model does not call, or one that
        cannot absorb the correction (no bias).

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> model = models.create("mlp", widths=(8, 8), num_classes=3)
        >>> params_a, _ = models.init(model, jax.random.key(0), (4,))
        >>> x = jax.random.normal(jax.random.key(2), (16, 4))      # normalised training inputs
        >>> import jax.numpy as jnp
        >>> from ltjax.core import interpolation, repair
        >>> params_b, _ = models.init(model, jax.random.key(1), (4,))
        >>> stats_a = models.output_stats(model, {"params": params_a}, x)
        >>> stats_b = models.output_stats(model, {"params": params_b}, x)
        >>> mid = {"params": interpolation.lerp(0.5, params_a, params_b)}
        >>> targets = repair.target_stats(0.5, stats_a, stats_b)
        >>> params = models.repair(model, mid, x, targets)
        >>> got = models.output_stats(model, {"params": params}, x)
        >>> bool(jnp.allclose(got["Dense_1"]["mean"], targets["Dense_1"]["mean"], atol=1e-4))
        True
    """
    params, _ = _repair(model, _plain(variables), jnp.asarray(x), _plain(targets), eps=eps)
    return params


def repair_fn(model: nn.Module, x: jax.Array, *, eps: float = repair_math.DEFAULT_EPS,
              ) -> Callable[[tuple], tuple]:
    """A ``recompute_fn`` for :func:`ltjax.core.interpolation.evaluate_path` that applies REPAIR.

    The path's trees are ``(params, batch_stats, stats)`` with ``stats`` the
    endpoint's :func:`output_stats`: interpolating them gives each point of
    the path its REPAIR target, ``(1 - alpha) * stats_a + alpha * stats_b``.
    The returned function REPAIRs every point of a stacked chunk (one
    network at a time, no vmap: conv nets on CPU) and returns
    ``(params, batch_stats)`` for the evaluation.

    Args:
      model: a bundled module.
      x: normalised training inputs ``[N, ...]``.
      eps: see :func:`repair`.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> model = models.create("mlp", widths=(8, 8), num_classes=3)
        >>> params_a, _ = models.init(model, jax.random.key(0), (4,))
        >>> x = jax.random.normal(jax.random.key(2), (16, 4))      # normalised training inputs
        >>> import jax.numpy as jnp
        >>> from ltjax.core import interpolation
        >>> params_b, _ = models.init(model, jax.random.key(1), (4,))
        >>> a = (params_a, {}, models.output_stats(model, {"params": params_a}, x))
        >>> b = (params_b, {}, models.output_stats(model, {"params": params_b}, x))
        >>> def mean_logit(p):
        ...     return model.apply({"params": p}, x, train=False).mean()
        >>> def evaluate_fn(t):       # e.g. lambda t: executor.evaluate_params(*t, "test")
        ...     params, _ = t         # stacked [C, ...], repaired
        ...     return {"mean_logit": jax.vmap(mean_logit)(params)}
        >>> curve = interpolation.evaluate_path(evaluate_fn, a, b, jnp.linspace(0, 1, 3),
        ...                                     recompute_fn=models.repair_fn(model, x))
        >>> curve["mean_logit"].shape
        (3,)
    """
    x = jnp.asarray(x)

    def fn(stacked: tuple) -> tuple:
        if not (isinstance(stacked, tuple | list) and len(stacked) == 3):
            raise ValueError("repair_fn expects path trees (params, batch_stats, stats)")
        params, batch_stats, targets = stacked
        count = int(jax.tree.leaves(params)[0].shape[0])
        pick = lambda t, i: jax.tree.map(lambda leaf: leaf[i], t)  # noqa: E731
        repaired = []
        for i in range(count):
            variables = {"params": pick(params, i)}
            if jax.tree.leaves(batch_stats):
                variables["batch_stats"] = pick(batch_stats, i)
            repaired.append(repair(model, variables, x, pick(targets, i), eps=eps))
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *repaired), batch_stats

    return fn
