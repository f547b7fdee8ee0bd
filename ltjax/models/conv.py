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

from typing import ClassVar

import jax
from flax import linen as nn

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
        >>> model = ConvN(depth=4)
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
        >>> model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False).shape
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
