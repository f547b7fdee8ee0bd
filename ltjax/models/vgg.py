"""VGG-11/13/16/19 for CIFAR-10 with batch norm, as OpenLTH's ``cifar_vgg``.

Follows ``facebookresearch/open_lth`` ``models/cifar_vgg.py`` (after Simonyan &
Zisserman 2015, as adapted to CIFAR-10 in Frankle & Carbin 2019 and Frankle et
al. 2020): each number of the plan is a 3x3 conv (padding 1, with bias) + batch
norm + ReLU, ``'M'`` a 2x2 max-pool with stride 2; after the plan a 2x2 average
pool with stride 2 (1x1 on 32x32 inputs), flatten and one linear output layer.
VGG-16 on CIFAR-10 has 14,715,584 prunable weights (conv kernels + output kernel).

Parameter names are Flax auto names, flat at the top level: the ``i``-th conv of
the plan is ``Conv_i`` (with ``kernel`` and ``bias``), its batch norm
``BatchNorm_i`` (``scale``, ``bias``; batch stats ``mean``, ``var``), and the
output layer is ``Dense_0``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
from flax import linen as nn

from ltjax.core import matching
from ltjax.models import _validate, common

#: OpenLTH's plans: ints are conv widths, ``'M'`` a 2x2 max-pool.
PLANS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512),
}


class VGG(nn.Module):
    """VGG-``depth`` (11, 13, 16 or 19) with batch norm, OpenLTH ``cifar_vgg_<depth>``.

    Batch norm uses torch's defaults translated to Flax (``momentum=0.9``,
    ``epsilon=1e-5``), scale ones and bias zeros. ``train=True`` normalises with
    batch statistics and needs ``mutable=['batch_stats']``.

    Attributes:
        depth: 11, 13, 16 or 19 (selects the plan in :data:`PLANS`).
        num_classes: number of logits.
        materialize_inputs: pass each conv input through
            :func:`ltjax.models.common.materialize` (a CPU speed trick; identical
            results). None (default): the training executor decides (on for
            its unrolled CPU strategy).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.models import vgg
        >>> model = vgg.VGG(depth=11)
        >>> x = jnp.zeros((2, 32, 32, 3))
        >>> variables = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))
        >>> logits, updates = jax.eval_shape(   # the shapes of model.apply(variables, x, ...)
        ...     lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)
        >>> logits.shape
        (2, 10)
    """

    depth: int = 16
    num_classes: int = 10
    materialize_inputs: bool | None = None

    has_batch_norm: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.depth, bool) or self.depth not in PLANS:
            raise ValueError(f"depth must be one of {sorted(PLANS)}, got {self.depth!r}")
        _validate.positive_int("num_classes", self.num_classes)
        _validate.optional_boolean("materialize_inputs", self.materialize_inputs)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits ``[B, num_classes]`` for NHWC images ``[B, H, W, C]`` (32x32 for CIFAR)."""
        for spec in PLANS[self.depth]:
            if spec == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            if self.materialize_inputs:
                x = common.materialize(x)
            x = nn.Conv(spec, (3, 3), padding=((1, 1), (1, 1)), kernel_init=common.kernel_init)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.relu(x)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, kernel_init=common.kernel_init)(x)


def permutation_spec(model: VGG, params: Any) -> matching.PermutationSpec:
    """The channels of each ``Conv_i`` (and its ``BatchNorm_i``) form permutation ``'Conv_i'``.

    Args:
      model: the :class:`VGG`.
      params: its params (arrays or shapes): the output layer's input size
        gives the spatial repeats of the last permutation (1 on 32x32 inputs).

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.models import vgg
        >>> model = vgg.VGG(depth=11)
        >>> params, batch_stats = jax.eval_shape(          # shapes only: nothing is computed
        ...     lambda key: models.init(model, key, (32, 32, 3)), jax.random.key(0))
        >>> spec = vgg.permutation_spec(model, params)
        >>> spec.batch_stats["BatchNorm_0/mean"]
        ('Conv_0',)
    """
    widths = [w for w in PLANS[model.depth] if w != "M"]
    params_axes: dict[str, tuple] = {}
    stats_axes: dict[str, tuple] = {}
    for i in range(len(widths)):
        into = f"Conv_{i - 1}" if i > 0 else None
        out = f"Conv_{i}"
        params_axes[f"Conv_{i}/kernel"] = (None, None, into, out)
        params_axes[f"Conv_{i}/bias"] = (out,)
        for leaf in ("scale", "bias"):
            params_axes[f"BatchNorm_{i}/{leaf}"] = (out,)
        for leaf in ("mean", "var"):
            stats_axes[f"BatchNorm_{i}/{leaf}"] = (out,)
    last = f"Conv_{len(widths) - 1}"
    repeats = tuple(getattr(params["Dense_0"]["kernel"], "shape", ()))[0] // widths[-1]
    params_axes["Dense_0/kernel"] = ((last, repeats) if repeats > 1 else last, None)
    params_axes["Dense_0/bias"] = (None,)
    return matching.PermutationSpec(
        params=params_axes, batch_stats=stats_axes,
        activations={f"Conv_{i}": (f"BatchNorm_{i}",) for i in range(len(widths))})


def repair_layers(model: VGG, params: Any = None) -> tuple[str, ...]:
    """The layers REPAIR renormalises: every ``BatchNorm_i`` (its output, before ReLU).

    The correction folds into the batch norm's scale and bias (Jordan et
    al. 2023); the bias-carrying convs before them need no change.

    Example:
        >>> from ltjax.models import vgg
        >>> vgg.repair_layers(vgg.VGG(depth=11))[:2]
        ('BatchNorm_0', 'BatchNorm_1')
    """
    del params
    return tuple(f"BatchNorm_{i}" for i in range(len([w for w in PLANS[model.depth] if w != "M"])))
