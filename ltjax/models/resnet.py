"""ResNet-20/32/56 for CIFAR-10 (He et al. 2016, section 4.2), as OpenLTH's ``cifar_resnet``.

Follows ``facebookresearch/open_lth`` ``models/cifar_resnet.py``: a 3x3 conv
(3 -> ``width``, no bias) + batch norm + ReLU; three stages of ``n`` basic blocks
with ``width``, ``2 * width`` and ``4 * width`` channels, ``depth = 6 n + 2``; the
first block of stages 2 and 3 has stride 2 and a projection shortcut (1x1 conv
with stride 2, no bias, + batch norm; OpenLTH's choice, He et al.'s option B);
global average pool; one linear output layer. All convs are bias-free and padded
as in torch (3x3: 1 pixel on each side, also with stride 2; 1x1: none).
ResNet-20 (``width=16``) has 270,896 prunable weights (conv kernels including the
shortcuts + the output kernel).

Parameter names (explicit, stable)::

    conv_init/kernel            first 3x3 conv
    bn_init/{scale,bias}        its batch norm
    Block_{i}/conv1/kernel      block i = stage * n + index in stage (OpenLTH's blocks.{i})
    Block_{i}/bn1/{scale,bias}
    Block_{i}/conv2/kernel
    Block_{i}/bn2/{scale,bias}
    Block_{i}/shortcut_conv/kernel        only blocks with a projection shortcut
    Block_{i}/shortcut_bn/{scale,bias}    (i = n and i = 2 n)
    fc/{kernel,bias}            output layer

``batch_stats`` mirror the batch-norm names (``mean``, ``var``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from ltjax.core import matching
from ltjax.models import _validate, common

_PAD_1 = ((1, 1), (1, 1))  # torch's padding=1, also for stride 2 (Flax 'SAME' pads (0, 1))


BN_INITS = ("ones", "uniform")


def _batch_norm(train: bool, name: str, bn_init: str = "ones") -> nn.BatchNorm:
    scale_init = nn.initializers.ones if bn_init == "ones" else nn.initializers.uniform(1.0)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        scale_init=scale_init, name=name)


class Block(nn.Module):
    """A basic residual block: conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU.

    The shortcut is the identity when shapes agree, else a projection (1x1 conv
    with stride ``strides`` and no bias, then batch norm), as in OpenLTH.

    Attributes:
        features: output channels.
        strides: stride of the first conv and of the projection shortcut (1 or 2).
        materialize_inputs: see :class:`ResNet`.
        bn_init: see :class:`ResNet`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.models import resnet
        >>> block = resnet.Block(features=32, strides=2)
        >>> variables = block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 16)), train=False)
        >>> block.apply(variables, jnp.zeros((2, 8, 8, 16)), train=False).shape
        (2, 4, 4, 32)
    """

    features: int
    strides: int = 1
    materialize_inputs: bool | None = None
    bn_init: str = "ones"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """``[B, H, W, C_in]`` -> ``[B, H / strides, W / strides, features]``."""
        if self.materialize_inputs:
            x = common.materialize(x)  # the input of conv1 and of shortcut_conv
        out = nn.Conv(self.features, (3, 3), strides=self.strides, padding=_PAD_1,
                      use_bias=False, kernel_init=common.kernel_init, name="conv1")(x)
        out = nn.relu(_batch_norm(train, "bn1", self.bn_init)(out))
        if self.materialize_inputs:
            out = common.materialize(out)
        out = nn.Conv(self.features, (3, 3), padding=_PAD_1, use_bias=False,
                      kernel_init=common.kernel_init, name="conv2")(out)
        out = _batch_norm(train, "bn2", self.bn_init)(out)
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = nn.Conv(self.features, (1, 1), strides=self.strides, padding="VALID",
                               use_bias=False, kernel_init=common.kernel_init,
                               name="shortcut_conv")(x)
            shortcut = _batch_norm(train, "shortcut_bn", self.bn_init)(shortcut)
        else:
            shortcut = x
        return nn.relu(out + shortcut)


class ResNet(nn.Module):
    """CIFAR ResNet-``depth`` (``depth = 6 n + 2``: 20, 32, 56, ...), OpenLTH ``cifar_resnet``.

    ``train=True`` normalises with batch statistics and needs
    ``mutable=['batch_stats']``. Batch norm: ``momentum=0.9``, ``epsilon=1e-5``
    (torch's defaults), scale ones, bias zeros.

    Attributes:
        depth: total number of conv + dense layers on the main path, ``6 n + 2``.
        width: channels of the first stage (16 in He et al.; OpenLTH's
            ``cifar_resnet_<depth>_<width>``); stages have ``width``,
            ``2 * width``, ``4 * width`` channels.
        num_classes: number of logits.
        materialize_inputs: pass each conv input through
            :func:`ltjax.models.common.materialize` (a CPU speed trick; identical
            results). None (default): the training executor decides (on for
            its unrolled CPU strategy).
        bn_init: BatchNorm scales at init: ``'ones'`` (torch's default) or
            ``'uniform'`` (U[0, 1], OpenLTH's CIFAR ResNets, whose BatchNorm-only
            study depends on it; Frankle, Schwab & Morcos 2021).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.models import resnet
        >>> model = resnet.ResNet(depth=20, width=16)
        >>> x = jnp.zeros((2, 32, 32, 3))
        >>> variables = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))
        >>> logits, updates = jax.eval_shape(   # the shapes of model.apply(variables, x, ...)
        ...     lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)
        >>> logits.shape
        (2, 10)
    """

    depth: int = 20
    width: int = 16
    num_classes: int = 10
    materialize_inputs: bool | None = None
    bn_init: str = "ones"

    has_batch_norm: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _validate.positive_int("depth", self.depth)
        if self.depth < 8 or (self.depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6 n + 2 with n >= 1 (20, 32, 56...), got {self.depth}")
        _validate.positive_int("width", self.width)
        _validate.positive_int("num_classes", self.num_classes)
        _validate.optional_boolean("materialize_inputs", self.materialize_inputs)
        if self.bn_init not in BN_INITS:
            raise ValueError(f"bn_init must be one of {BN_INITS}, got {self.bn_init!r}")
        super().__post_init__()

    @property
    def blocks_per_stage(self) -> int:
        """``n`` in ``depth = 6 n + 2``."""
        return (self.depth - 2) // 6

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits ``[B, num_classes]`` for NHWC images ``[B, H, W, C]``."""
        if self.materialize_inputs:
            x = common.materialize(x)
        x = nn.Conv(self.width, (3, 3), padding=_PAD_1, use_bias=False,
                    kernel_init=common.kernel_init, name="conv_init")(x)
        x = nn.relu(_batch_norm(train, "bn_init", self.bn_init)(x))
        n = self.blocks_per_stage
        for stage in range(3):
            for index in range(n):
                x = Block(
                    features=self.width * 2**stage,
                    strides=2 if stage > 0 and index == 0 else 1,
                    materialize_inputs=self.materialize_inputs,
                    bn_init=self.bn_init,
                    name=f"Block_{stage * n + index}",
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=common.kernel_init, name="fc")(x)


def permutation_spec(model: ResNet, params: Any) -> matching.PermutationSpec:
    """Permutations of a CIFAR ResNet: one per residual stream, one inside each block.

    The identity shortcuts tie every block of a stage to one permutation of
    the stream, ``'residual_s'`` (``s`` = 0, 1, 2; stage 0's also permutes
    ``conv_init``); the projection shortcuts map ``residual_{s-1}`` to
    ``residual_s``. The channels between ``conv1`` and ``conv2`` of block
    ``i`` are ``'Block_i/conv1'``.

    Args:
      model: the :class:`ResNet`.
      params: its params (arrays or shapes): which blocks have a projection
        shortcut.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.models import resnet
        >>> model = resnet.ResNet(depth=20)
        >>> params, batch_stats = jax.eval_shape(          # shapes only: nothing is computed
        ...     lambda key: models.init(model, key, (32, 32, 3)), jax.random.key(0))
        >>> spec = resnet.permutation_spec(model, params)
        >>> spec.params["Block_3/shortcut_conv/kernel"]
        (None, None, 'residual_0', 'residual_1')
    """
    n = model.blocks_per_stage
    params_axes: dict[str, tuple] = {}
    stats_axes: dict[str, tuple] = {}

    def batch_norm(name: str, perm: str) -> None:
        for leaf in ("scale", "bias"):
            params_axes[f"{name}/{leaf}"] = (perm,)
        for leaf in ("mean", "var"):
            stats_axes[f"{name}/{leaf}"] = (perm,)

    params_axes["conv_init/kernel"] = (None, None, None, "residual_0")
    batch_norm("bn_init", "residual_0")
    activations: dict[str, tuple[str, ...]] = {"residual_0": ("bn_init",)}
    stream = "residual_0"
    for i in range(3 * n):
        block, out = f"Block_{i}", f"residual_{i // n}"
        inner = f"{block}/conv1"
        params_axes[f"{block}/conv1/kernel"] = (None, None, stream, inner)
        batch_norm(f"{block}/bn1", inner)
        params_axes[f"{block}/conv2/kernel"] = (None, None, inner, out)
        batch_norm(f"{block}/bn2", out)
        if "shortcut_conv" in params[block]:
            params_axes[f"{block}/shortcut_conv/kernel"] = (None, None, stream, out)
            batch_norm(f"{block}/shortcut_bn", out)
        elif stream != out:
            raise ValueError(f"{block} changes the residual stream but has no projection")
        activations[inner] = (f"{block}/bn1",)
        activations[out] = (*activations.get(out, ()), block)
        stream = out
    params_axes["fc/kernel"] = (stream, None)
    params_axes["fc/bias"] = (None,)
    return matching.PermutationSpec(params=params_axes, batch_stats=stats_axes,
                                    activations=activations)


def repair_layers(model: ResNet, params: Any) -> tuple[str, ...]:
    """The layers REPAIR renormalises: every batch norm, in forward order.

    The convs have no bias, so each correction folds into the scale and bias
    of the batch norm after the conv: ``bn_init``, then per block ``bn1``,
    ``bn2`` and, with a projection shortcut, ``shortcut_bn`` (Jordan et al.
    2023).

    Args:
      model: the :class:`ResNet`.
      params: its params (arrays or shapes): which blocks have a shortcut.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.models import resnet
        >>> model = resnet.ResNet(depth=20)
        >>> params, batch_stats = jax.eval_shape(          # shapes only: nothing is computed
        ...     lambda key: models.init(model, key, (32, 32, 3)), jax.random.key(0))
        >>> resnet.repair_layers(model, params)[:3]
        ('bn_init', 'Block_0/bn1', 'Block_0/bn2')
    """
    layers = ["bn_init"]
    for i in range(3 * model.blocks_per_stage):
        block = f"Block_{i}"
        layers += [f"{block}/bn1", f"{block}/bn2"]
        if "shortcut_conv" in params[block]:
            layers.append(f"{block}/shortcut_bn")
    return tuple(layers)
