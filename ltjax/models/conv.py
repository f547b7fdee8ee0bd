"""Conv-2, Conv-4 and Conv-6: the small VGG-like CIFAR-10 networks of the LTH paper.

Frankle & Carbin (2019), "The Lottery Ticket Hypothesis: Finding Sparse,
Trainable Neural Networks", Figure 2 (OpenLTH has no Conv-n model). Each pair of
3x3 convolutions ('SAME' padding, with bias, ReLU) is followed by a 2x2 max-pool
with stride 2; then fully-connected layers 256, 256 and the output layer:

- Conv-2: 64, 64, pool
- Conv-4: 64, 64, pool, 128, 128, pool
- Conv-6: 64, 64, pool, 128, 128, pool, 256, 256, pool

Weights on CIFAR-10 (32x32x3, kernels + biases): Conv-2 4,301,642 (paper 4.3M),
Conv-4 2,425,930 (paper 2.4M), Conv-6 2,262,602. The paper lists 1.7M for Conv-6,
which does not follow from the architecture it describes (its conv weights, 1.1M,
do match); we follow the architecture.

Parameter names are Flax auto names: ``Conv_0`` ... ``Conv_{depth-1}``, then
``Dense_0``, ``Dense_1`` and the output layer ``Dense_2``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
from flax import linen as nn

from ltjax.core import matching
from ltjax.models import _validate, common

#: Conv channels per stage pair; stage ``i`` has two convolutions then a max-pool.
STAGE_WIDTHS = (64, 128, 256)
#: Hidden widths of the fully-connected head.
DENSE_WIDTHS = (256, 256)


class ConvN(nn.Module):
    """Conv-``depth`` of Frankle & Carbin (2019), ``depth`` in {2, 4, 6}.

    Attributes:
        depth: number of conv layers: 2, 4 or 6.
        num_classes: number of logits.
        materialize_inputs: pass each conv input through
            :func:`ltjax.models.common.materialize` (a CPU speed trick; identical
            results). None (default): the training executor decides (on for
            its unrolled CPU strategy).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.models import conv
        >>> model = conv.ConvN(depth=4)
        >>> x = jnp.zeros((2, 32, 32, 3))
        >>> variables = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))
        >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape  # apply's
        (2, 10)
    """

    depth: int = 2
    num_classes: int = 10
    materialize_inputs: bool | None = None

    has_batch_norm: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.depth not in (2, 4, 6) or isinstance(self.depth, bool):
            raise ValueError(f"depth must be 2, 4 or 6 (Conv-2/4/6), got {self.depth!r}")
        _validate.positive_int("num_classes", self.num_classes)
        _validate.optional_boolean("materialize_inputs", self.materialize_inputs)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits ``[B, num_classes]`` for NHWC images ``[B, H, W, C]`` (``train`` unused)."""
        del train  # no dropout, no batch norm
        for width in STAGE_WIDTHS[: self.depth // 2]:
            for _ in range(2):
                if self.materialize_inputs:
                    x = common.materialize(x)
                x = nn.Conv(width, (3, 3), padding="SAME", kernel_init=common.kernel_init)(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for width in DENSE_WIDTHS:
            x = nn.relu(nn.Dense(width, kernel_init=common.kernel_init)(x))
        return nn.Dense(self.num_classes, kernel_init=common.kernel_init)(x)


def permutation_spec(model: ConvN, params: Any) -> matching.PermutationSpec:
    """Channels of each ``Conv_i`` and units of ``Dense_0``/``Dense_1`` are permutations.

    The flattened last feature map enters ``Dense_0`` as ``[H * W * C]``
    (channels fastest), so the last conv's permutation acts on that axis with
    ``H * W`` repeats, read from ``params``.

    Args:
      model: the :class:`ConvN`.
      params: its params (arrays or shapes), for the flattened size.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.models import conv
        >>> model = conv.ConvN(depth=4)
        >>> params, batch_stats = jax.eval_shape(          # shapes only: nothing is computed
        ...     lambda key: models.init(model, key, (32, 32, 3)), jax.random.key(0))
        >>> spec = conv.permutation_spec(model, params)
        >>> spec.params["Dense_0/kernel"]
        (('Conv_3', 64), 'Dense_0')
    """
    widths = [w for w in STAGE_WIDTHS[: model.depth // 2] for _ in range(2)]
    axes: dict[str, tuple] = {}
    for i in range(model.depth):
        into = f"Conv_{i - 1}" if i > 0 else None
        axes[f"Conv_{i}/kernel"] = (None, None, into, f"Conv_{i}")
        axes[f"Conv_{i}/bias"] = (f"Conv_{i}",)
    last = f"Conv_{model.depth - 1}"
    repeats = _shape(params["Dense_0"]["kernel"])[0] // widths[-1]
    axes["Dense_0/kernel"] = ((last, repeats), "Dense_0")
    axes["Dense_1/kernel"] = ("Dense_0", "Dense_1")
    axes["Dense_2/kernel"] = ("Dense_1", None)
    for i, out in enumerate(("Dense_0", "Dense_1", None)):
        axes[f"Dense_{i}/bias"] = (out,)
    activations = {f"Conv_{i}": (f"Conv_{i}",) for i in range(model.depth)}
    activations.update({f"Dense_{i}": (f"Dense_{i}",) for i in range(2)})
    return matching.PermutationSpec(params=axes, activations=activations)


def _shape(leaf: Any) -> tuple[int, ...]:
    return tuple(getattr(leaf, "shape", ()))


def repair_layers(model: ConvN, params: Any = None) -> tuple[str, ...]:
    """The layers REPAIR renormalises: every ``Conv_i`` and the hidden ``Dense_0``/``Dense_1``.

    Their outputs (before ReLU and pooling) are corrected channel by channel
    (Jordan et al. 2023); the output layer is left alone.

    Example:
        >>> from ltjax.models import conv
        >>> conv.repair_layers(conv.ConvN(depth=2))
        ('Conv_0', 'Conv_1', 'Dense_0', 'Dense_1')
    """
    del params
    return (*(f"Conv_{i}" for i in range(model.depth)), "Dense_0", "Dense_1")
