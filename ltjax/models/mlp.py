"""Fully-connected networks: LeNet-300-100 and friends.

LeNet-300-100 is the MNIST network of Frankle & Carbin (2019), "The Lottery
Ticket Hypothesis", Figure 2, and OpenLTH's ``mnist_lenet_300_100``
(``facebookresearch/open_lth``, ``models/mnist_lenet.py``).

Parameter names are Flax auto names: ``Dense_0/kernel``, ``Dense_0/bias``, ...,
the last, ``Dense_{len(widths)}``, being the output layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax
from flax import linen as nn

from ltjax.core import matching
from ltjax.models import _validate, common


class MLP(nn.Module):
    """Dense + ReLU for each hidden width, then a linear output layer.

    Any input is flattened to ``[B, D]`` first (``x.reshape(x.shape[0], -1)``),
    so MNIST images ``[B, 28, 28, 1]`` and feature vectors ``[B, D]`` both work.
    Kernels are He normal (fan-in) as in OpenLTH and biases start at zero,
    unless ``kernel_init``/``bias_init`` name another scheme
    (:data:`ltjax.models.common.KERNEL_INITS`, :data:`~ltjax.models.common.BIAS_INITS`).

    Attributes:
        widths: hidden layer widths, e.g. ``(300, 100)`` for LeNet-300-100
            (stored as a tuple).
        num_classes: number of logits.
        use_bias: biases in every layer (False: bias-free, as edge-popup's
            reference LeNet, Ramanujan et al. 2020).
        kernel_init: ``'he_normal'`` (OpenLTH) or ``'glorot_normal'`` (the LTH
            paper's Gaussian Glorot).
        bias_init: ``'zeros'`` (the LTH paper's code) or ``'torch_uniform'``
            (torch's default, which OpenLTH keeps).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.models import mlp
        >>> model = mlp.MLP(widths=(300, 100))
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
        >>> model.apply(variables, jnp.zeros((4, 28, 28, 1)), train=False).shape
        (4, 10)
    """

    widths: Sequence[int]
    num_classes: int = 10
    use_bias: bool = True
    kernel_init: str = "he_normal"
    bias_init: str = "zeros"

    has_batch_norm: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", _validate.positive_ints("widths", self.widths))
        _validate.positive_int("num_classes", self.num_classes)
        if self.kernel_init not in common.KERNEL_INITS:
            raise ValueError(f"kernel_init must be one of {tuple(common.KERNEL_INITS)}, "
                             f"got {self.kernel_init!r}")
        if self.bias_init not in common.BIAS_INITS:
            raise ValueError(f"bias_init must be one of {common.BIAS_INITS}, "
                             f"got {self.bias_init!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits ``[B, num_classes]`` for inputs ``[B, ...]`` (``train`` is unused)."""
        del train  # no dropout, no batch norm
        x = x.reshape(x.shape[0], -1)
        kernel_init = common.KERNEL_INITS[self.kernel_init]

        def dense(features: int, inputs: jax.Array) -> jax.Array:
            return nn.Dense(features, use_bias=self.use_bias, kernel_init=kernel_init,
                            bias_init=common.bias_init(self.bias_init, inputs.shape[-1]))(inputs)

        for width in self.widths:
            x = nn.relu(dense(width, x))
        return dense(self.num_classes, x)


def permutation_spec(model: MLP, params: Any = None) -> matching.PermutationSpec:
    """The hidden units of each ``Dense_i`` (``i < len(widths)``) form permutation ``'Dense_i'``.

    Args:
      model: the :class:`MLP`.
      params: unused (the spec follows from ``model.widths``); accepted for
        the uniform signature of :func:`ltjax.models.permutation_spec`.

    Example:
        >>> from ltjax.models import mlp
        >>> spec = mlp.permutation_spec(mlp.MLP(widths=(300, 100)))
        >>> spec.params["Dense_1/kernel"]
        ('Dense_0', 'Dense_1')
    """
    del params
    depth = len(model.widths)
    axes: dict[str, tuple] = {}
    for i in range(depth + 1):
        into = f"Dense_{i - 1}" if i > 0 else None
        out = f"Dense_{i}" if i < depth else None
        axes[f"Dense_{i}/kernel"] = (into, out)
        if model.use_bias:
            axes[f"Dense_{i}/bias"] = (out,)
    return matching.PermutationSpec(
        params=axes, activations={f"Dense_{i}": (f"Dense_{i}",) for i in range(depth)})


def repair_layers(model: MLP, params: Any = None) -> tuple[str, ...]:
    """The layers REPAIR renormalises: every hidden ``Dense_i`` (its pre-ReLU output).

    Jordan et al. 2023 correct each hidden layer's pre-activations; the
    output layer is left alone.

    Example:
        >>> from ltjax.models import mlp
        >>> mlp.repair_layers(mlp.MLP(widths=(300, 100)))
        ('Dense_0', 'Dense_1')
    """
    del params
    return tuple(f"Dense_{i}" for i in range(len(model.widths)))


BN_INITS = ("ones", "uniform")


class BatchNormMLP(nn.Module):
    """``Dense -> BatchNorm -> ReLU`` for each hidden width, then a linear output layer.

    The fast MNIST proxy for the BatchNorm studies (Frankle, Schwab & Morcos
    2021, "Training BatchNorm and Only BatchNorm"; You et al. 2020's
    Early-Bird channel masks): ``Dense_i`` feeds ``BatchNorm_i`` (momentum 0.9,
    epsilon 1e-5, as the VGG/ResNet here and OpenLTH). Hidden ``Dense_i`` keep
    their bias (a no-op before BatchNorm in train mode, kept for a uniform
    layout). ``bn_init='uniform'`` draws gamma ~ U[0, 1] (beta 0), OpenLTH's
    ``uniform`` BatchNorm initialiser of its CIFAR ResNets; ``'ones'`` is
    Flax's default (gamma 1).

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.models import mlp
        >>> model = mlp.BatchNormMLP(widths=(1024, 1024))
        >>> params, stats = models.init(model, jax.random.key(0), (28, 28, 1))
        >>> sorted(stats)
        ['BatchNorm_0', 'BatchNorm_1']
    """

    widths: Sequence[int]
    num_classes: int = 10
    bn_init: str = "ones"

    has_batch_norm: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", _validate.positive_ints("widths", self.widths))
        _validate.positive_int("num_classes", self.num_classes)
        if self.bn_init not in BN_INITS:
            raise ValueError(f"bn_init must be one of {BN_INITS}, got {self.bn_init!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits ``[B, num_classes]`` (``train``: batch statistics, updated running ones)."""
        scale_init = (nn.initializers.ones if self.bn_init == "ones"
                      else nn.initializers.uniform(scale=1.0))
        x = x.reshape(x.shape[0], -1)
        for width in self.widths:
            x = nn.Dense(width, kernel_init=common.kernel_init)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             scale_init=scale_init)(x)
            x = nn.relu(x)
        return nn.Dense(self.num_classes, kernel_init=common.kernel_init)(x)


def batch_norm_permutation_spec(model: BatchNormMLP,
                                params: Any = None) -> matching.PermutationSpec:
    """Hidden units of ``Dense_i`` and ``BatchNorm_i`` (params and statistics) form ``'Dense_i'``.

    Example:
        >>> from ltjax.models import mlp
        >>> spec = mlp.batch_norm_permutation_spec(mlp.BatchNormMLP(widths=(64, 32)))
        >>> spec.batch_stats["BatchNorm_1/mean"]
        ('Dense_1',)
    """
    del params
    depth = len(model.widths)
    axes: dict[str, tuple] = {}
    stats: dict[str, tuple] = {}
    for i in range(depth + 1):
        into = f"Dense_{i - 1}" if i > 0 else None
        out = f"Dense_{i}" if i < depth else None
        axes[f"Dense_{i}/kernel"] = (into, out)
        axes[f"Dense_{i}/bias"] = (out,)
        if i < depth:
            for leaf in ("scale", "bias"):
                axes[f"BatchNorm_{i}/{leaf}"] = (out,)
            for leaf in ("mean", "var"):
                stats[f"BatchNorm_{i}/{leaf}"] = (out,)
    return matching.PermutationSpec(
        params=axes, batch_stats=stats,
        activations={f"Dense_{i}": (f"BatchNorm_{i}",) for i in range(depth)})


def batch_norm_repair_layers(model: BatchNormMLP, params: Any = None) -> tuple[str, ...]:
    """The layers REPAIR renormalises: every ``BatchNorm_i`` (its output, before ReLU)."""
    del params
    return tuple(f"BatchNorm_{i}" for i in range(len(model.widths)))
