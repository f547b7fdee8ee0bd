"""Pieces shared by the bundled models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

# He (Kaiming) normal, fan-in, untruncated: torch's kaiming_normal_ as OpenLTH uses.
kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

#: Kernel initialisers by name (the MLP's ``kernel_init``):
#: ``'he_normal'``: :data:`kernel_init` (OpenLTH's ``kaiming_normal``);
#: ``'glorot_normal'``: Glorot (Xavier) Gaussian, variance 2 / (fan_in + fan_out),
#: truncated at 2 std and rescaled to that variance: the LTH paper's
#: "Gaussian Glorot" (Frankle & Carbin 2019, Figure 2) as its released code
#: draws it (``tf.contrib.layers.xavier_initializer(uniform=False)``, a
#: truncated normal; google-research/lottery-ticket-hypothesis,
#: ``foundations/model_fc.py``).
KERNEL_INITS = {
    "he_normal": kernel_init,
    "glorot_normal": nn.initializers.variance_scaling(1.0, "fan_avg", "truncated_normal"),
}

#: Bias initialisers by name (the MLP's ``bias_init``): ``'zeros'`` (the LTH
#: paper's code) or ``'torch_uniform'``, U(-1/sqrt(fan_in), 1/sqrt(fan_in)):
#: torch's ``nn.Linear`` default, which OpenLTH keeps (its initialisers set
#: only the weights).
BIAS_INITS = ("zeros", "torch_uniform")


def bias_init(name: str, fan_in: int) -> nn.initializers.Initializer:
    """The bias initialiser ``name`` (one of :data:`BIAS_INITS`) of a layer with ``fan_in`` inputs.

    Example:
        >>> import jax
        >>> from ltjax.models import common
        >>> init = common.bias_init("torch_uniform", 784)  # U(-1/28, 1/28)
        >>> bool(abs(init(jax.random.key(0), (300,))).max() <= 1 / 28)
        True
    """
    if name == "zeros":
        return nn.initializers.zeros
    if name == "torch_uniform":
        bound = 1.0 / float(fan_in) ** 0.5

        def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
            return jax.random.uniform(key, shape, dtype, -bound, bound)
        return init
    raise ValueError(f"bias_init must be one of {BIAS_INITS}, got {name!r}")


def materialize(x: jax.Array) -> jax.Array:
    """Identity that forces ``x`` into memory on XLA:CPU (same values bit for bit).

    XLA:CPU re-computes the BatchNorm/ReLU/residual chain that produces a conv
    input inside the transposes of the conv weight gradient (about 30 % of a
    ResNet step, FACTS.md). Passing the input through a ``lax.cond`` whose
    predicate is only known at run time makes it a materialised buffer: a
    1.31-1.37x faster step there. Use it only on CPU and outside ``vmap``
    (a batched predicate turns the cond into a select).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.models import common
        >>> y = common.materialize(jnp.ones((1, 4, 4, 3)))
    """
    first = x.reshape(-1)[0]
    # Always True, but only known at run time: XLA can neither fold the
    # predicate nor merge the branches (JAX drops a cond with equal branches).
    pred = jnp.isfinite(first) | ~jnp.isfinite(first)
    return jax.lax.cond(pred, lambda v: v, jnp.zeros_like, x)
