"""Training BatchNorm and only BatchNorm, and its controls, as reparameterisations.

Frankle, Schwab & Morcos 2021 ("Training BatchNorm and Only BatchNorm: On the
Expressive Power of Random Features in CNNs", ICLR 2021) freeze every
parameter at its random initialisation except BatchNorm's affine ``gamma``
(``scale``) and ``beta`` (``bias``), and compare with the same number of
randomly chosen other parameters trained instead. Reference: OpenLTH
(``others_frozen``, ``output_frozen``, ``batchnorm_frozen``; a frozen
parameter gets no weight decay).

- :func:`batchnorm_only`: every non-BatchNorm leaf frozen (optionally the
  output layer trained too, OpenLTH's ``output_frozen=False``);
- :func:`output_only`: only the output layer trains;
- :func:`random_subset`: exactly ``count`` randomly chosen entries of the
  non-BatchNorm leaves train (drawn per member from its init key), everything
  else frozen: the paper's "random parameters" control. The chosen entries
  train through an additive change ``params_0 + mask * delta`` (``delta``
  starts at zero), so the other entries are bitwise their initial values and
  weight decay acts on the change ``delta``, not on the parameter;
- :func:`trainable_count`, :func:`gamma_share_below`: what the paper reports.

Example:
    >>> model = models.create("mlp_bn", widths=(1024, 1024))
    >>> executor = Executor(model, dataset, recipe, reparam=batchnorm_only())
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax import optim, reparam, tree

PyTree = Any
BATCHNORM = "BatchNorm"


def output_layer(params: PyTree) -> str:
    """The output layer's module path: that of the last ``kernel`` leaf in tree order.

    Example:
        >>> output_layer(models.init(models.create("mlp_bn", widths=(8,)), key, (4,))[0])
        'Dense_1'
    """
    kernels = [n for n in tree.names(params) if n.endswith("/kernel")]
    if not kernels:
        raise ValueError("params have no 'kernel' leaf: cannot tell the output layer")
    return kernels[-1].rsplit("/", 1)[0]


def _frozen_pattern(trained: list[str]) -> str:
    """A regex matching every path that is in none of the ``trained`` module paths."""
    return "^(?!" + "|".join(trained) + ")"


def batchnorm_only(*, output: str | None = None) -> reparam.Reparam:
    """Only BatchNorm's ``scale`` and ``bias`` train (and the ``output`` layer when given).

    Every other leaf is frozen: ``optax.set_to_zero()`` and no weight decay,
    bitwise its initial value after training with momentum and decay.
    Matches BatchNorm modules by the ``BatchNorm`` in their path (the
    bundled models' ``BatchNorm_i`` and the ResNets' ``bn*``, ``*_bn``).

    Args:
      output: the output layer's module path to train as well (e.g. from
        :func:`output_layer`; None: frozen, OpenLTH's ``output_frozen``).

    Example:
        >>> bn_and_head = batchnorm_only(output=output_layer(params))
    """
    trained = [r".*(?:BatchNorm|/bn|^bn|_bn)"]
    if output:
        trained.append(re.escape(output) + "/")
    return reparam.freeze(_frozen_pattern(trained))


def output_only(output: str) -> reparam.Reparam:
    """Only the ``output`` layer (its kernel and bias) trains: the paper's head-only control.

    Example:
        >>> head = output_only(output_layer(params))
    """
    return reparam.freeze(_frozen_pattern([re.escape(output) + "/"]))


def _eligible(params: PyTree, exclude: str) -> list[bool]:
    return [re.search(exclude, name) is None for name in tree.names(params)]


def random_subset(count: int, *, exclude: str = r".*(?:BatchNorm|/bn|^bn|_bn)"
                  ) -> reparam.Reparam:
    """Exactly ``count`` uniformly random entries of the leaves not matching ``exclude`` train.

    The paper's control for BatchNorm-only training: the same number of
    parameters, chosen at random among the others. The chosen positions are
    drawn from the member's init key (``init``'s key), uniformly over all
    eligible entries together, and held in the frozen tree; the trainable
    tree is a change ``delta`` (zeros) with the params' structure, and the
    model runs on ``params_0 + where(chosen, delta, 0)``: unchosen entries get
    zero gradient and stay bitwise at their initial values.

    Args:
      count: how many entries train (e.g. :func:`trainable_count` of
        :func:`batchnorm_only`).
      exclude: regex of leaf paths never chosen (default: BatchNorm leaves).

    Raises:
      ValueError: ``count`` is not an int >= 1, or (when the executor is
        built) exceeds the eligible entries.

    Example:
        >>> k = trainable_count(batchnorm_only(), params)
        >>> control = random_subset(k)
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be an int >= 1, got {count!r}")
    count = int(count)

    def init(params: PyTree, key: jax.Array) -> tuple[PyTree, PyTree]:
        leaves, treedef = jax.tree.flatten(params)
        eligible = _eligible(params, exclude)
        sizes = [int(np.size(x)) if e else 0 for x, e in zip(leaves, eligible, strict=True)]
        total = sum(sizes)
        if count > total:
            raise ValueError(f"count={count} is more than the {total} eligible entries")
        chosen = jnp.zeros(total, bool).at[jax.random.permutation(key, total)[:count]].set(True)
        masks, start = [], 0
        for x, size in zip(leaves, sizes, strict=True):
            masks.append(chosen[start:start + size].reshape(jnp.shape(x)) if size
                         else jnp.zeros(jnp.shape(x), bool))
            start += size
        delta = jax.tree.map(jnp.zeros_like, params)
        return delta, {"params": params, "chosen": treedef.unflatten(masks)}

    def apply(trainable: PyTree, frozen: PyTree, key: jax.Array | None, *,
              train: bool) -> PyTree:
        del key, train
        return jax.tree.map(lambda p, c, d: p + jnp.where(c, d, jnp.zeros((), d.dtype)),
                            frozen["params"], frozen["chosen"], trainable)

    return reparam.Reparam(name=f"random_subset({count})", init=init, apply=apply,
                           trainable_masks=lambda masks, trainable: masks)


def trainable_count(reparam_: reparam.Reparam, params: PyTree) -> int:
    """How many parameter entries a :func:`ltjax.reparam.freeze`-type reparameterisation trains.

    The size of the leaves not labelled frozen (:func:`batchnorm_only`,
    :func:`output_only`, :func:`ltjax.reparam.identity`); :func:`random_subset`
    trains its ``count``.

    Raises:
      ValueError: a reparameterisation whose trainable tree is not the params.

    Example:
        >>> trainable_count(batchnorm_only(), params)   # 2 x the hidden widths
        4096
    """
    if not reparam_.is_identity:
        raise ValueError(f"trainable_count counts freeze-type reparameterisations; "
                         f"{reparam_.name!r} trains another tree")
    if reparam_.labels is None:
        return tree.count(params)
    labels = reparam_.labels(params)
    return int(sum(np.size(x) for x, label in zip(jax.tree.leaves(params),
                                                  jax.tree.leaves(labels), strict=True)
                   if label != optim.FROZEN))


def gammas(params: PyTree) -> list[jax.Array]:
    """The BatchNorm ``scale`` leaves (gamma) of ``params``, in tree order.

    Raises:
      ValueError: ``params`` have none.
    """
    found = [x for name, x in zip(tree.names(params), jax.tree.leaves(params), strict=True)
             if name.endswith("scale") and re.search(r"BatchNorm|bn", name)]
    if not found:
        raise ValueError("params have no BatchNorm 'scale' leaf")
    return found


def gamma_share_below(params: PyTree, threshold: float) -> jax.Array:
    """The share of BatchNorm ``scale`` entries (gamma) with ``|gamma| < threshold``.

    Frankle et al. 2021 (Sec. 5) report that BatchNorm-only training drives
    many gammas to near zero (disabling those features), more than full
    training. Jittable; counts every leaf named ``scale`` under a BatchNorm path.

    Example:
        >>> gamma_share_below(trained_params, 0.01)
    """
    scales = gammas(params)
    below = sum(jnp.sum(jnp.abs(g) < threshold) for g in scales)
    return below / sum(g.size for g in scales)
