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
- :func:`random_per_channel`: the paper's "random parameters" control
  (:data:`RANDOM_CONTROLS` ``'per_channel'``): ``per_channel`` (default 2, as
  BatchNorm's gamma and beta) random kernel entries of every output channel
  of each layer train, everything else frozen;
- :func:`random_subset`: the same number drawn globally instead
  (``'global'``): exactly ``count`` uniformly random entries of all the
  non-BatchNorm leaves together, so most land in the largest layer;
- :func:`trainable_count`, :func:`gamma_share_below`: what the paper reports.

Both random controls draw per member from its init key and train the chosen
entries through an additive change ``params_0 + mask * delta`` (``delta``
starts at zero), so the other entries are bitwise their initial values and
weight decay acts on the change ``delta``, not on the parameter.

Example:
    >>> import jax
    >>> from ltjax import models
    >>> from ltjax.methods import batchnorm_only
    >>> model = models.create("mlp_bn", widths=(8,), num_classes=3)
    >>> params, _ = models.init(model, jax.random.key(0), (4,))
    >>> bn = batchnorm_only.batchnorm_only()
    >>> bn.labels(params)["Dense_0"], bn.labels(params)["BatchNorm_0"]
    ({'bias': 'frozen', 'kernel': 'frozen'}, {'bias': 'default', 'scale': 'default'})

    Training: ``Executor(model, dataset, recipe, reparam=batchnorm_only.batchnorm_only())``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import rng, topk, tree
from ltjax.engine import optim, reparam

PyTree = Any
BATCHNORM = "BatchNorm"
#: BatchNorm leaf paths: the bundled models' ``BatchNorm_i``, the ResNets' ``bn*``, ``*_bn``.
BATCHNORM_PATTERN = r".*(?:BatchNorm|/bn|^bn|_bn)"
#: The rules of the random-parameters control: :func:`random_per_channel`, :func:`random_subset`.
RANDOM_CONTROLS = ("per_channel", "global")


def output_layer(params: PyTree) -> str:
    """The output layer's module path: that of the last ``kernel`` leaf in tree order.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.methods import batchnorm_only
        >>> model = models.create("mlp_bn", widths=(8,), num_classes=3)
        >>> params, _ = models.init(model, jax.random.key(0), (4,))
        >>> batchnorm_only.output_layer(params)
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
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.methods import batchnorm_only
        >>> model = models.create("mlp_bn", widths=(8,), num_classes=3)
        >>> params, _ = models.init(model, jax.random.key(0), (4,))
        >>> bn_and_head = batchnorm_only.batchnorm_only(output=batchnorm_only.output_layer(params))
        >>> batchnorm_only.trainable_count(bn_and_head, params)    # 8 gammas + 8 betas + 8 x 3 + 3
        43
    """
    trained = [BATCHNORM_PATTERN]
    if output:
        trained.append(re.escape(output) + "/")
    return reparam.freeze(_frozen_pattern(trained))


def output_only(output: str) -> reparam.Reparam:
    """Only the ``output`` layer (its kernel and bias) trains: the paper's head-only control.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.methods import batchnorm_only
        >>> model = models.create("mlp_bn", widths=(8,), num_classes=3)
        >>> params, _ = models.init(model, jax.random.key(0), (4,))
        >>> head = batchnorm_only.output_only(batchnorm_only.output_layer(params))
        >>> batchnorm_only.trainable_count(head, params)           # 8 x 3 + 3
        27
    """
    return reparam.freeze(_frozen_pattern([re.escape(output) + "/"]))


def _eligible(params: PyTree, exclude: str) -> list[bool]:
    return [re.search(exclude, name) is None for name in tree.names(params)]


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _chosen_entries(name: str, choose: Any) -> reparam.Reparam:
    """Train the entries ``choose(params, key)`` marks (a bool tree), every other one frozen.

    The trainable tree is a change ``delta`` (zeros) with the params'
    structure; the model runs on ``params_0 + where(chosen, delta, 0)``, so
    unchosen entries get zero gradient and stay bitwise at their initial values.
    """

    def init(params: PyTree, key: jax.Array) -> tuple[PyTree, PyTree]:
        delta = jax.tree.map(jnp.zeros_like, params)
        return delta, {"params": params, "chosen": choose(params, key)}

    def apply(trainable: PyTree, frozen: PyTree, key: jax.Array | None, *,
              train: bool) -> PyTree:
        del key, train
        return jax.tree.map(lambda p, c, d: p + jnp.where(c, d, jnp.zeros((), d.dtype)),
                            frozen["params"], frozen["chosen"], trainable)

    return reparam.Reparam(name=name, init=init, apply=apply,
                           trainable_masks=lambda masks, trainable: masks)


def random_subset(count: int, *, exclude: str = BATCHNORM_PATTERN) -> reparam.Reparam:
    """Exactly ``count`` uniformly random entries of the leaves not matching ``exclude`` train.

    The ``'global'`` rule of the random-parameters control: the chosen
    positions are drawn from the member's init key uniformly over all
    eligible entries together (kernels, biases and the output layer alike, so
    most land in the largest layer). :func:`random_per_channel` is the
    paper's rule. Unchosen entries stay bitwise at their initial values.

    Args:
      count: how many entries train (e.g. :func:`trainable_count` of
        :func:`batchnorm_only`).
      exclude: regex of leaf paths never chosen (default: BatchNorm leaves).

    Raises:
      ValueError: ``count`` is not an int >= 1, or (when the executor is
        built) exceeds the eligible entries.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.methods import batchnorm_only
        >>> model = models.create("mlp_bn", widths=(8,), num_classes=3)
        >>> params, _ = models.init(model, jax.random.key(0), (4,))
        >>> k = batchnorm_only.trainable_count(batchnorm_only.batchnorm_only(), params)
        >>> control = batchnorm_only.random_subset(k)           # k random entries elsewhere
        >>> _, frozen = control.init(params, jax.random.key(1))
        >>> sum(int(c.sum()) for c in jax.tree.leaves(frozen["chosen"]))
        16
    """
    count = _check_int(count, "count")

    def choose(params: PyTree, key: jax.Array) -> PyTree:
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
        return treedef.unflatten(masks)

    return _chosen_entries(f"random_subset({count})", choose)


def random_per_channel(per_channel: int = 2, *, exclude: str = BATCHNORM_PATTERN
                       ) -> reparam.Reparam:
    """``per_channel`` random kernel entries of every output channel of each layer train.

    The paper's random-parameters control (``'per_channel'`` of
    :data:`RANDOM_CONTROLS`). Its abstract: BatchNorm-only ResNets reach
    their accuracy, "far higher than when training an equivalent number of
    randomly chosen parameters elsewhere in the network"; the rule that
    makes the number equivalent is two random parameters per channel (the
    number of BatchNorm parameters per channel, gamma and beta) in each
    layer, as issue #31 item 5 and the fidelity audit (M5, from memory) give
    it; the paper's own sentence could not be retrieved here (see
    ``docs/studies/bn-only.md``). With every layer but the output one
    followed by a BatchNorm (``mlp_bn``, the ResNets) and the output layer
    in ``exclude``, the count is exactly :func:`batchnorm_only`'s.

    Every leaf whose path ends in ``kernel`` and does not match ``exclude``
    is a layer; its last axis is the output channel (Flax's ``Dense`` and
    ``Conv``), and each channel's ``per_channel`` entries are drawn uniformly
    among its fan-in entries (all the other axes): the top ``per_channel`` of
    uniform scores drawn from ``fold_in(key, stable_hash(path))``, so a layer's
    draw depends on the member's init key and its own path only. Biases and
    every other leaf stay frozen; unchosen entries stay bitwise at their
    initial values.

    Args:
      per_channel: how many entries of each output channel train.
      exclude: regex of leaf paths never chosen (default: BatchNorm leaves;
        the study adds the output layer).

    Raises:
      ValueError: ``per_channel`` is not an int >= 1, or (when the executor
        is built) no kernel is eligible or a layer has fewer than
        ``per_channel`` entries per channel.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.methods import batchnorm_only
        >>> model = models.create("mlp_bn", widths=(8,), num_classes=3)
        >>> params, _ = models.init(model, jax.random.key(0), (4,))
        >>> control = batchnorm_only.random_per_channel(
        ...     2, exclude=batchnorm_only.BATCHNORM_PATTERN + "|^Dense_1/")   # output layer out
        >>> _, frozen = control.init(params, jax.random.key(1))
        >>> int(frozen["chosen"]["Dense_0"]["kernel"].sum())       # 2 per channel, 8 channels
        16
        >>> # mlp_bn 784-512-512-10: 2 x (512 + 512) = 2048 entries, as BatchNorm has
    """
    per_channel = _check_int(per_channel, "per_channel")

    def choose(params: PyTree, key: jax.Array) -> PyTree:
        leaves, treedef = jax.tree.flatten(params)
        masks, layers = [], 0
        for name, x, eligible in zip(tree.names(params), leaves, _eligible(params, exclude),
                                     strict=True):
            shape = jnp.shape(x)
            if not (eligible and name.endswith("kernel") and len(shape) >= 2):
                masks.append(jnp.zeros(shape, bool))
                continue
            fan_in = math.prod(shape[:-1])
            if fan_in < per_channel:
                raise ValueError(f"per_channel={per_channel} is more than the {fan_in} "
                                 f"entries per output channel of {name!r}")
            scores = jax.random.uniform(jax.random.fold_in(key, rng.stable_hash(name)),
                                        (fan_in, shape[-1]))
            chosen = jax.vmap(lambda s: topk.mask(s, per_channel), in_axes=1, out_axes=1)(scores)
            masks.append(chosen.reshape(shape))
            layers += 1
        if not layers:
            raise ValueError(f"no kernel leaf outside exclude={exclude!r}: nothing to choose")
        return treedef.unflatten(masks)

    return _chosen_entries(f"random_per_channel({per_channel})", choose)


def trainable_count(reparam_: reparam.Reparam, params: PyTree) -> int:
    """How many parameter entries a :func:`ltjax.engine.reparam.freeze`-type reparameterisation
    trains.

    The size of the leaves not labelled frozen (:func:`batchnorm_only`,
    :func:`output_only`, :func:`ltjax.engine.reparam.identity`); the random controls
    train the entries their ``frozen['chosen']`` masks mark.

    Raises:
      ValueError: a reparameterisation whose trainable tree is not the params.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.methods import batchnorm_only
        >>> model = models.create("mlp_bn", widths=(8,), num_classes=3)
        >>> params, _ = models.init(model, jax.random.key(0), (4,))
        >>> batchnorm_only.trainable_count(batchnorm_only.batchnorm_only(), params)  # 2 x the width
        16
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
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.methods import batchnorm_only
        >>> model = models.create("mlp_bn", widths=(8,), num_classes=3)
        >>> params, _ = models.init(model, jax.random.key(0), (4,))
        >>> float(batchnorm_only.gamma_share_below(params, 0.01))   # gammas start at 1
        0.0
    """
    scales = gammas(params)
    below = sum(jnp.sum(jnp.abs(g) < threshold) for g in scales)
    return below / sum(g.size for g in scales)
