"""Reparameterisations: what is trained need not be the weights.

A :class:`Reparam` maps a *trainable* tree and a *frozen* tree to the model's
params at every step. The executor differentiates the loss with respect to
the trainable tree, so one training program carries ordinary training
(:func:`identity`), training a subset of leaves (:func:`freeze`, e.g.
BatchNorm-only, Frankle, Schwab & Morcos 2021), scores over frozen random
weights (edge-popup, Ramanujan et al. 2020; SupSup), soft thresholds (STR,
Kusupati et al. 2020) and subspace endpoints mixed by a random weight
(Wortsman et al. 2021). The protocol:

- ``init(params, key) -> (trainable, frozen)``: from a fresh init of the model
  (``key`` is the member's ``init`` key's ``'reparam'`` stream); a
  reparameterisation whose arguments may differ between the members of one
  program (a density, a weight init) also takes ``init(params, key, args)``:
  ``args`` is one member's pytree of arrays, traced, from
  ``Executor.init(keys, reparam_args=...)`` (stacked ``[S]``), so members
  differ without editing their states on the host;
- ``apply(trainable, frozen, key, *, train) -> params``: the model's params;
  ``key`` is ``fold_in(stream(noise_key, 'reparam'), step)`` in training
  (so a resumed run is bit-identical) and None in evaluation, where
  ``apply`` must be deterministic;
- ``labels(trainable) -> tree of str`` (optional): optimiser groups
  (:mod:`ltjax.engine.optim`): ``'frozen'`` leaves never move and get no decay,
  ``'default'`` leaves get the member's decay, any other label the decay in
  ``group_decay``;
- ``penalty(trainable, key) -> scalar`` (optional): added to the loss in
  training (``key`` is the step's key given to ``apply``, so a penalty may
  draw, e.g. the subspaces' random pair of points);
- ``trainable_masks(masks, trainable) -> masks of trainable`` (optional):
  where IMP masks land on the trainable tree (gradients masked before the
  optimiser, entries held at zero after). Whatever it returns, the model's
  params are masked in the forward pass, so IMP masks compose with every
  reparameterisation.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from ltjax.engine import reparam
    >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2))}, "BatchNorm_0": {"scale": jnp.ones(2)}}
    >>> bn_only = reparam.freeze(r"^(?!.*BatchNorm).*")   # every non-BatchNorm leaf frozen
    >>> trainable, frozen = bn_only.init(params, jax.random.key(0))
    >>> bn_only.labels(trainable)                          # the optimiser's groups
    {'BatchNorm_0': {'scale': 'default'}, 'Dense_0': {'kernel': 'frozen'}}
    >>> model_params = bn_only.apply(trainable, frozen, None, train=False)
    >>> model_params["Dense_0"]["kernel"].shape
    (3, 2)

An executor trains with it: ``Executor(model, dataset, recipe, reparam=bn_only)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax

from ltjax.engine import optim

PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Reparam:
    """A reparameterisation (see the module doc for the protocol).

    Attributes:
      name: a short name (shown in errors).
      init: ``(params, key) -> (trainable, frozen)``, or ``(params, key, args)`` with
        one member's traced arguments (see the module doc).
      apply: ``(trainable, frozen, key, *, train) -> params``.
      labels: ``trainable -> tree of str`` optimiser groups, or None (all default).
      group_decay: the weight decay of each label other than frozen / default.
      penalty: ``(trainable, key) -> scalar`` added to the training loss, or None.
      trainable_masks: ``(masks, trainable) -> masks`` of the trainable tree,
        or None (masks act in the forward pass only).
    """

    name: str
    init: Callable[[PyTree, jax.Array], tuple[PyTree, PyTree]]
    apply: Callable[..., PyTree]
    labels: Callable[[PyTree], PyTree] | None = None
    group_decay: Mapping[str, float] = dataclasses.field(default_factory=dict)
    penalty: Callable[[PyTree, jax.Array | None], jax.Array] | None = None
    trainable_masks: Callable[[PyTree, PyTree], PyTree] | None = None

    @property
    def is_identity(self) -> bool:
        """True for :func:`identity` and :func:`freeze` (params are the trainable tree)."""
        return self.apply is _identity_apply


def _identity_init(params: PyTree, key: jax.Array) -> tuple[PyTree, PyTree]:
    del key
    return params, {}


def _identity_apply(trainable: PyTree, frozen: PyTree, key: jax.Array | None, *,
                    train: bool) -> PyTree:
    del frozen, key, train
    return trainable


def _same_masks(masks: PyTree, trainable: PyTree) -> PyTree:
    del trainable
    return masks


# One record: executors with the default reparameterisation are equal (they share programs).
_IDENTITY = Reparam(name="identity", init=_identity_init, apply=_identity_apply,
                    trainable_masks=_same_masks)


def identity() -> Reparam:
    """Ordinary training: the trainable tree is the params.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.engine import reparam
        >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2))}}
        >>> trainable, frozen = reparam.identity().init(params, jax.random.key(0))
        >>> trainable is params, frozen
        (True, {})

        It is the executor's default: ``Executor(model, dataset, recipe)`` is
        ``Executor(model, dataset, recipe, reparam=identity())``.
    """
    return _IDENTITY


def freeze(pattern: str) -> Reparam:
    """Ordinary training with the leaves whose path matches ``pattern`` frozen.

    Frozen leaves get ``optax.set_to_zero()`` and no weight decay, so they are
    bitwise unchanged by training (with momentum and decay too). BatchNorm-only
    training (Frankle, Schwab & Morcos 2021, "Training BatchNorm and Only
    BatchNorm") is ``freeze(r"^(?!.*BatchNorm).*")`` on models whose
    BatchNorm modules are named ``BatchNorm_*``.

    Args:
      pattern: a regex searched in each leaf's path (``'Dense_0/kernel'``).

    Raises:
      ValueError: (when the executor is built) the pattern names no leaf.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.engine import reparam
        >>> params = {f"Dense_{i}": {"kernel": jnp.ones((2, 2))} for i in range(3)}
        >>> head_only = reparam.freeze(r"^(?!Dense_2/)")   # train the last layer only
        >>> head_only.labels(params)
        {'Dense_0': {'kernel': 'frozen'}, 'Dense_1': {'kernel': 'frozen'},
         'Dense_2': {'kernel': 'default'}}
    """
    return Reparam(
        name=f"freeze({pattern!r})", init=_identity_init, apply=_identity_apply,
        labels=lambda trainable: optim.labels_by_path(trainable, {optim.FROZEN: pattern}),
        trainable_masks=_same_masks)


def check(reparam: Reparam, abstract_params: PyTree) -> tuple[PyTree, PyTree]:
    """Check that ``reparam`` fits a model whose params look like ``abstract_params``.

    Returns:
      The abstract ``(trainable, frozen)`` trees.

    Raises:
      ValueError: ``apply`` does not give back the params' structure, shapes
        and dtypes; ``labels`` or ``trainable_masks`` do not fit the trainable
        tree; a label pattern names no leaf (each naming the reparameterisation).
    """
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    try:
        trainable, frozen = jax.eval_shape(reparam.init, abstract_params, key)
        out = jax.eval_shape(lambda t, f, k: reparam.apply(t, f, k, train=True),
                             trainable, frozen, key)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"reparam {reparam.name!r} does not fit the model's params: {err}") from err
    want = jax.tree.map(lambda x: (x.shape, x.dtype), abstract_params)
    got = jax.tree.map(lambda x: (x.shape, x.dtype), out)
    if jax.tree.structure(out) != jax.tree.structure(abstract_params) or want != got:
        raise ValueError(
            f"reparam {reparam.name!r}: apply(trainable, frozen, key) must return a tree with "
            f"the model's params' structure, shapes and dtypes; expected {want}, got {got}")
    if reparam.labels is not None:
        labels = reparam.labels(trainable)
        if jax.tree.structure(labels) != jax.tree.structure(trainable):
            raise ValueError(f"reparam {reparam.name!r}: labels(trainable) must have the "
                             "trainable tree's structure")
        unknown = sorted({lb for lb in jax.tree.leaves(labels)} - {optim.FROZEN, optim.DEFAULT}
                         - set(reparam.group_decay))
        if unknown:
            raise ValueError(f"reparam {reparam.name!r}: labels {unknown} have no group_decay "
                             "entry")
    if reparam.trainable_masks is not None:
        masks = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, bool), abstract_params)
        on_trainable = jax.eval_shape(reparam.trainable_masks, masks, trainable)
        fits = jax.tree.structure(on_trainable) == jax.tree.structure(trainable) and all(
            m.shape == t.shape for m, t in zip(jax.tree.leaves(on_trainable),
                                               jax.tree.leaves(trainable), strict=True))
        if not fits:
            raise ValueError(f"reparam {reparam.name!r}: trainable_masks(masks, trainable) must "
                             "return masks with the trainable tree's structure and shapes")
    return trainable, frozen
