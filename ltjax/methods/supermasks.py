"""Supermasks: subnetworks of random, never-trained weights (edge-popup, Zhou et al.'s masks).

What is here:

- :func:`edge_popup` (Ramanujan et al. 2020): top-k of trained scores over
  frozen weights (below);
- :func:`criterion_masks` (Zhou et al. 2019): masks from the initial and
  final weights of a trained net (large_final, ...), applied to the init;
- :func:`bernoulli_supermask` (Zhou et al. 2019, Section 5): a learned
  Bernoulli mask per weight, trained through a straight-through estimator,
  over frozen weights (or their signed constant ``sign(w) * std``);
- :func:`dnw` (Wortsman, Farhadi & Rastegari 2019, Discovering Neural
  Wirings): the weights train, the forward pass uses the top-k of ``|W|``
  per layer, the backward pass reaches every weight.

Ramanujan, Wortsman, Kembhavi, Farhadi & Rastegari 2020, "What's Hidden in a
Randomly Weighted Neural Network?" (CVPR 2020). The weights ``W`` stay at
their random init; every prunable layer trains a score per weight, and the
forward pass uses ``W * M`` where ``M`` keeps the ``kept_l`` entries of the
highest ``|S|`` in the layer. The scores learn through the straight-through
estimator of the reference's ``GetSubnet`` (its backward passes the gradient
unchanged to ``|S|``):

    dL/dS = sign(S) * W * dL/dW_eff.

Facts of the reference (allenai/hidden-networks@dddf2d0,
``utils/conv_type.py``, ``utils/builder.py``, ``main.py``) kept here:

- the kept count of a layer of ``n`` weights at ``density`` is
  ``ceil(density * n)`` (the reference zeroes the ``int((1 - k) n)``
  smallest; ``density`` is taken as the decimal the user wrote,
  :func:`ltjax.core.topk.count`, so 0.3 of 100 keeps 30, not 31 as float
  arithmetic would); ties are broken by flat position (lower index kept);
- ``density`` names the kept share: the reference's ``prune_rate`` is the kept
  share in ``GetSubnet`` but the removed one in ``scale_fan`` (its issue #9);
- scores start at ``kaiming_uniform(a=sqrt(5))``, i.e. ``U(-1/sqrt(fan_in),
  1/sqrt(fan_in))``, and get the member's weight decay (the reference decays
  every trained parameter, and the scores are the only ones);
- weights: the model's init (He normal, the reference's "Kaiming normal"; the
  model's own initialiser, a truncated normal in flax) or the signed Kaiming
  constant ``sign(w) * sqrt(2 / fan_in)`` (:func:`signed_constant`, without the
  optional ``scale_fan``);
- every prunable leaf (default: every kernel) is a supermask layer; other
  leaves (biases, BatchNorm) are frozen at init (the reference's LeNet has
  none: bias-free layers, ``models.create('lenet_300_100', use_bias=False)``).

The top-k runs every step, so it is a selection, not a sort:
:func:`ltjax.core.topk.mask` finds the ``kept``-th largest value by a 32-pass
bisection on the bit patterns of the scores (exact, ``O(32 n)``, ``kept``
traced).

Example:
    A random network's supermask (the reparameterisation on a toy layer; the
    executor trains the scores of every member at once):

    >>> import jax, jax.numpy as jnp
    >>> from ltjax.core import masking
    >>> from ltjax.methods import supermasks
    >>> params = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(0), (4, 3)),
    ...                       "bias": jnp.zeros(3)}}
    >>> selection = masking.prunable(params)
    >>> r = supermasks.edge_popup(selection, density=0.5)
    >>> scores, frozen = r.init(params, jax.random.key(1))
    >>> masks = supermasks.supermask(scores, frozen, selection)
    >>> masking.counts(masks, selection)               # ceil(0.5 * 12) kept
    {'Dense_0/kernel': (6, 12)}
    >>> net = r.apply(scores, frozen, None, train=False)     # W * M
    >>> int(jnp.sum(net["Dense_0"]["kernel"] != 0))
    6

    Training (not run here: it compiles a training program):

    ```python
    executor = Executor(model, dataset, recipe, reparam=supermasks.edge_popup(selection))
    state, _ = executor.train(executor.init(init_keys), None, noise_keys, num_steps=2000)
    executor.evaluate(state, "test")      # the random net under its learned supermask
    ```
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import pruning, rng, topk, tree
from ltjax.engine import optim, reparam

PyTree = Any

#: The weight inits of :func:`edge_popup`.
WEIGHT_INITS = ("signed_constant", "kaiming_normal")


def _check_density(density: Any) -> Fraction:
    topk.check_share(density, name="density")
    return topk.rational(density)


def kept_count(num: int, density: float) -> int:
    """``ceil(density * num)``, exact (:func:`ltjax.core.topk.count`): the kept entries of a layer.

    Example:
        >>> from ltjax.methods import supermasks
        >>> supermasks.kept_count(100, 0.3), supermasks.kept_count(10, 0.25)
        (30, 3)
    """
    _check_density(density)
    return topk.count(num, density, rounding="ceil")


def _fan_in(w: Any) -> int:
    return math.prod(np.shape(w)[:-1])


def signed_constant(params: PyTree, prunable: PyTree) -> PyTree:
    """``sign(w) * sqrt(2 / fan_in)`` on prunable leaves (fan in: all axes but the last).

    The signed Kaiming constant of Ramanujan et al. 2020 (Section 4.2); other
    leaves unchanged.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.methods import supermasks
        >>> params = {"Dense_0": {"kernel": jnp.array([[-0.3], [0.1]])}}   # fan-in 2
        >>> supermasks.signed_constant(params, {"Dense_0": {"kernel": True}})
        {'Dense_0': {'kernel': Array([[-1.], [ 1.]], dtype=float32)}}
    """
    return jax.tree.map(lambda w, f: (jnp.sign(w) * math.sqrt(2.0 / _fan_in(w))).astype(w.dtype)
                        if f else w, params, prunable)


def kept_counts(params: PyTree, prunable: PyTree, density: float) -> PyTree:
    """The frozen per-layer kept counts (int32; 0 on non-prunable leaves) at ``density``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import supermasks
        >>> params = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(0), (4, 3)),
        ...                       "bias": jnp.zeros(3)}}
        >>> selection = masking.prunable(params)
        >>> supermasks.kept_counts(params, selection, 0.5)
        {'Dense_0': {'bias': Array(0, dtype=int32), 'kernel': Array(6, dtype=int32)}}
    """
    _check_density(density)
    return jax.tree.map(lambda w, f: jnp.asarray(
        kept_count(int(np.prod(np.shape(w))), density) if f else 0, jnp.int32), params, prunable)


def edge_popup_args(params: PyTree, prunable: PyTree, *, density: float,
                    weight_init: str) -> dict:
    """One member's :func:`edge_popup` arguments (its density and weight init), exact, on the host.

    Stack them over the members (:func:`ltjax.core.tree.stack`) and give them to
    ``Executor.init(keys, reparam_args=...)``: members of one program then train
    other densities and weight inits, the counts by the exact rule of
    :func:`kept_counts`. Only the params' shapes are read.

    Example:
        >>> import jax, numpy as np
        >>> from ltjax.core import masking
        >>> from ltjax.methods import supermasks
        >>> params = {"Dense_0": {"kernel": jax.ShapeDtypeStruct((4, 3), np.float32),
        ...                       "bias": jax.ShapeDtypeStruct((3,), np.float32)}}
        >>> args = supermasks.edge_popup_args(params, masking.prunable(params), density=0.3,
        ...                                   weight_init="signed_constant")
        >>> int(args["kept"]["Dense_0"]["kernel"]), bool(args["signed_constant"])
        (4, True)
    """
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
    return {"kept": kept_counts(params, prunable, density),
            "signed_constant": np.bool_(weight_init == "signed_constant")}


def dnw_args(params: PyTree, prunable: PyTree, *, density: float) -> dict:
    """One member's :func:`dnw` argument (its density), as :func:`edge_popup_args`.

    Example:
        >>> import jax, numpy as np
        >>> from ltjax.core import masking
        >>> from ltjax.methods import supermasks
        >>> params = {"Dense_0": {"kernel": jax.ShapeDtypeStruct((4, 3), np.float32)}}
        >>> int(supermasks.dnw_args(params, masking.prunable(params), density=0.5)["kept"]
        ...     ["Dense_0"]["kernel"])
        6
    """
    return {"kept": kept_counts(params, prunable, density)}


def bernoulli_args(*, signed_constant: bool) -> dict:
    """One member's :func:`bernoulli_supermask` argument (its weight init), as
    :func:`edge_popup_args`.

    Example:
        >>> from ltjax.methods import supermasks
        >>> bool(supermasks.bernoulli_args(signed_constant=True)["signed_constant"])
        True
    """
    return {"signed_constant": np.bool_(signed_constant)}


def _where(condition: Any, on_true: PyTree, on_false: PyTree) -> PyTree:
    """``on_true`` where the (traced) scalar ``condition`` holds, else ``on_false``, per leaf."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)


def _flags(prunable: PyTree, params: PyTree) -> list[bool]:
    if jax.tree.structure(prunable) != jax.tree.structure(params):
        raise ValueError(f"prunable must have the structure of the model's params; prunable has "
                         f"leaves {tree.names(prunable)[:6]}, params {tree.names(params)[:6]}")
    return [bool(f) for f in jax.tree.leaves(prunable)]


def supermask(scores: PyTree, frozen: PyTree, prunable: PyTree) -> PyTree:
    """The learned masks (params' structure, bool; all-True off the prunable leaves).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import supermasks
        >>> params = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(0), (4, 3)),
        ...                       "bias": jnp.zeros(3)}}
        >>> selection = masking.prunable(params)
        >>> scores, frozen = supermasks.edge_popup(selection, density=0.25).init(
        ...     params, jax.random.key(1))                   # one member's state.params / .frozen
        >>> masks = supermasks.supermask(scores, frozen, selection)
        >>> masking.layer_densities(masks, selection)
        {'Dense_0/kernel': 0.25}
    """
    flags = _flags(prunable, scores)
    leaves = [topk.mask(jnp.abs(s), k) if f else jnp.ones(jnp.shape(s), bool)
              for s, k, f in zip(jax.tree.leaves(scores), jax.tree.leaves(frozen["kept"]), flags,
                                 strict=True)]
    return jax.tree.unflatten(jax.tree.structure(scores), leaves)


def edge_popup(prunable: PyTree, *, density: float = 0.5,
               weight_init: str = "signed_constant") -> reparam.Reparam:
    """Edge-popup as a :class:`ltjax.engine.reparam.Reparam`: scores trained, weights frozen.

    The trainable tree has the params' structure: the scores of prunable
    leaves (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, drawn from the member's
    reparam key, leaf ``i`` from ``fold_in(key, i)``) and zeros, labelled
    frozen, elsewhere. The frozen tree is ``{'weights': W, 'kept': counts}``:
    per-member arrays: with :func:`edge_popup_args` per member (its density and
    weight init, traced inputs of ``Executor.init(keys, reparam_args=...)``)
    several densities and weight inits train as members of one program. ``apply`` gives
    ``W * (M + |S| - stop_gradient(|S|))`` on prunable leaves (value ``W * M``
    exactly, gradient ``sign(S) * W * g`` to the scores) and ``W`` elsewhere.

    Args:
      prunable: static bools of the supermask layers (default choice: every
        kernel, :func:`ltjax.core.masking.prunable`).
      density: the kept share of each layer at init (``kept_counts``).
      weight_init: ``'signed_constant'`` or ``'kaiming_normal'`` (the model's init).

    Raises:
      ValueError: ``density`` outside (0, 1], an unknown ``weight_init``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import supermasks
        >>> params = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(0), (4, 3)),
        ...                       "bias": jnp.zeros(3)}}
        >>> selection = masking.prunable(params)
        >>> r = supermasks.edge_popup(selection, density=0.3, weight_init="kaiming_normal")
        >>> scores, frozen = r.init(params, jax.random.key(1))
        >>> sorted(frozen), int(frozen["kept"]["Dense_0"]["kernel"])    # ceil(0.3 * 12)
        (['kept', 'weights'], 4)
    """
    _check_density(density)
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")

    def init(params: PyTree, key: jax.Array, args: PyTree | None = None,
             ) -> tuple[PyTree, PyTree]:
        flags = _flags(prunable, params)
        leaves = jax.tree.leaves(params)
        scores = []
        for i, (w, f) in enumerate(zip(leaves, flags, strict=True)):
            if f:
                bound = 1.0 / math.sqrt(_fan_in(w))
                scores.append(jax.random.uniform(jax.random.fold_in(key, i), np.shape(w),
                                                 jnp.float32, -bound, bound))
            else:
                scores.append(jnp.zeros(np.shape(w), jnp.float32))
        if args is None:
            weights = (signed_constant(params, prunable) if weight_init == "signed_constant"
                       else params)
            frozen = {"weights": weights, "kept": kept_counts(params, prunable, density)}
        else:  # this member's own density and weight init (edge_popup_args)
            frozen = {"weights": _where(args["signed_constant"],
                                        signed_constant(params, prunable), params),
                      "kept": args["kept"]}
        return jax.tree.unflatten(jax.tree.structure(params), scores), frozen

    def apply(trainable: PyTree, frozen: PyTree, key: jax.Array | None, *,
              train: bool) -> PyTree:
        del key, train
        flags = _flags(prunable, trainable)
        out = []
        for s, w, k, f in zip(jax.tree.leaves(trainable), jax.tree.leaves(frozen["weights"]),
                              jax.tree.leaves(frozen["kept"]), flags, strict=True):
            if f:
                magnitude = jnp.abs(s)
                mask = topk.mask(jax.lax.stop_gradient(magnitude), k).astype(w.dtype)
                out.append(w * (mask + (magnitude - jax.lax.stop_gradient(magnitude))))
            else:
                out.append(w)
        return jax.tree.unflatten(jax.tree.structure(trainable), out)

    def labels(trainable: PyTree) -> PyTree:
        return jax.tree.map(lambda _, f: optim.DEFAULT if f else optim.FROZEN, trainable,
                            prunable)

    return reparam.Reparam(name=f"edge_popup(density={density!r}, weight_init={weight_init!r})",
                           init=init, apply=apply, labels=labels)


# --------------------------------------------------------------------------- Zhou et al. 2019

def _same_sign(params_init: PyTree, params_final: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: jnp.sign(a) == jnp.sign(b), params_init, params_final)


#: Zhou et al. 2019's mask criteria: ``(W_i, W_f) -> scores``, the highest kept.
MASK_CRITERIA = {
    "large_final": lambda wi, wf: jax.tree.map(jnp.abs, wf),
    "small_final": lambda wi, wf: jax.tree.map(lambda f: -jnp.abs(f), wf),
    "large_init": lambda wi, wf: jax.tree.map(jnp.abs, wi),
    "small_init": lambda wi, wf: jax.tree.map(lambda i: -jnp.abs(i), wi),
    "magnitude_increase": lambda wi, wf: jax.tree.map(lambda i, f: jnp.abs(f) - jnp.abs(i),
                                                      wi, wf),
    "movement": lambda wi, wf: jax.tree.map(lambda i, f: jnp.abs(f - i), wi, wf),
    "large_final_same_sign": lambda wi, wf: jax.tree.map(
        lambda f, s: jnp.where(s, jnp.abs(f), 0.0), wf, _same_sign(wi, wf)),
    "large_final_diff_sign": lambda wi, wf: jax.tree.map(
        lambda f, s: jnp.where(s, 0.0, jnp.abs(f)), wf, _same_sign(wi, wf)),
    "magnitude_increase_same_sign": lambda wi, wf: jax.tree.map(
        lambda i, f, s: jnp.where(s, jnp.abs(f) - jnp.abs(i), 0.0), wi, wf, _same_sign(wi, wf)),
    "magnitude_increase_diff_sign": lambda wi, wf: jax.tree.map(
        lambda i, f, s: jnp.where(s, 0.0, jnp.abs(f) - jnp.abs(i)), wi, wf, _same_sign(wi, wf)),
}


def criterion_masks(criterion: str, params_init: PyTree, params_final: PyTree, prunable: PyTree,
                    *, density: float) -> PyTree:
    """Zhou et al. 2019's masks: each layer keeps ``round(density * n)`` of the highest scores.

    Zhou, Lan, Liu & Yosinski 2019, "Deconstructing Lottery Tickets: Zeros,
    Signs, and the Supermask" (NeurIPS 2019), Section 2 and
    uber-research/deconstructing-lottery-tickets ``get_weight_init.py``: a
    criterion scores each weight from its initial and final values
    (:data:`MASK_CRITERIA`; ``*_same_sign`` / ``*_diff_sign`` score 0 the
    weights whose sign changed / did not, so they go first), and each layer
    keeps its top share (layerwise, as the reference's per-layer
    percentiles). Ties: by position (the reference breaks them at random).

    Raises:
      ValueError: an unknown criterion, ``density`` outside (0, 1].

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import supermasks
        >>> params_0 = {"Dense_0": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]])}}
        >>> params_T = {"Dense_0": {"kernel": jnp.array([[2.0, 1.0], [0.25, 4.0]])}}
        >>> selection = masking.prunable(params_0)
        >>> masks = supermasks.criterion_masks("large_final_same_sign", params_0, params_T,
        ...                                    selection, density=0.5)
        >>> masks["Dense_0"]["kernel"]          # |w_T| of the same-sign weights: 2 and 4
        Array([[ True, False],
               [False,  True]], dtype=bool)
        >>> supermask_net = masking.apply(params_0, masks)   # the untrained net under it
    """
    if criterion not in MASK_CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(MASK_CRITERIA)}, got {criterion!r}")
    tree.check_same_structure(params_final, params_init, name="params_final",
                              reference_name="params_init")
    scores = MASK_CRITERIA[criterion](params_init, params_final)
    return pruning.prune_to_density(scores, prunable, density=density, scope="layerwise")


def signed_std_constant(params: PyTree, prunable: PyTree) -> PyTree:
    """``sign(w) * std(w)`` on prunable leaves (std over the whole layer); others unchanged.

    Zhou et al. 2019's signed constant (their supermask section: each
    weight becomes plus or minus its layer's initial standard deviation,
    keeping its sign). The reference (``masked_networks.make_signed_consts``)
    takes the population std of the layer's *sampled* init
    (``tf.nn.moments`` over every axis), which is what we compute; the paper's
    wording names the distribution's std (the two differ by sampling noise).
    Unlike :func:`signed_constant` (edge-popup's ``sqrt(2 / fan_in)``), the
    constant depends on the model's initialiser.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.methods import supermasks
        >>> params = {"Dense_0": {"kernel": jnp.array([[-3.0], [1.0]])}}    # std 2
        >>> supermasks.signed_std_constant(params, {"Dense_0": {"kernel": True}})
        {'Dense_0': {'kernel': Array([[-2.], [ 2.]], dtype=float32)}}
    """
    _flags(prunable, params)
    return jax.tree.map(lambda w, f: (jnp.sign(w) * jnp.std(w)).astype(w.dtype) if f else w,
                        params, prunable)


def _logit(prob: float) -> float:
    if isinstance(prob, bool) or not isinstance(prob, numbers.Real) or not 0.0 < prob < 1.0:
        raise ValueError(f"init_prob must be a number in (0, 1), got {prob!r}")
    return math.log(prob) - math.log1p(-prob)


def _mask_key(key: jax.Array | None, frozen: PyTree) -> jax.Array:
    return jax.random.wrap_key_data(frozen["eval_key"]) if key is None else key


def _bernoulli_draws(logits: PyTree, frozen: PyTree, prunable: PyTree,
                     key: jax.Array | None) -> list[jax.Array | None]:
    """The 0/1 draws (float32) of each prunable leaf, None elsewhere."""
    flags = _flags(prunable, logits)
    key = _mask_key(key, frozen)
    draws = []
    for i, (m, f) in enumerate(zip(jax.tree.leaves(logits), flags, strict=True)):
        if f:
            uniforms = jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(m), jnp.float32)
            prob = jax.nn.sigmoid(jax.lax.stop_gradient(m).astype(jnp.float32))
            draws.append((uniforms < prob).astype(jnp.float32))
        else:
            draws.append(None)
    return draws


def bernoulli_masks(logits: PyTree, frozen: PyTree, prunable: PyTree,
                    key: jax.Array | None = None) -> PyTree:
    """The masks :func:`bernoulli_supermask` samples (params' structure, bool).

    Leaf ``i`` of a prunable layer is ``uniform(fold_in(key, i)) < sigmoid(m)``;
    ``key=None`` gives the member's evaluation masks (``frozen['eval_key']``),
    the ones ``executor.evaluate`` uses. All-True off the prunable leaves.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import supermasks
        >>> params = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(0), (4, 3)),
        ...                       "bias": jnp.zeros(3)}}
        >>> selection = masking.prunable(params)
        >>> r = supermasks.bernoulli_supermask(selection)
        >>> logits, frozen = r.init(params, jax.random.key(1))   # one member's params / frozen
        >>> masks = supermasks.bernoulli_masks(logits, frozen, selection)   # the evaluation draw
        >>> masks["Dense_0"]["kernel"].shape, bool(masks["Dense_0"]["bias"].all())
        ((4, 3), True)
    """
    draws = _bernoulli_draws(logits, frozen, prunable, key)
    leaves = [jnp.ones(jnp.shape(m), bool) if d is None else d > 0.5
              for m, d in zip(jax.tree.leaves(logits), draws, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(logits), leaves)


def bernoulli_supermask(prunable: PyTree, *, init_prob: float = 0.5,
                        signed_constant: bool = False,
                        dynamic_scaling: bool = False) -> reparam.Reparam:
    """Zhou et al. 2019's learned Bernoulli supermask as a :class:`ltjax.engine.reparam.Reparam`.

    Zhou, Lan, Liu & Yosinski 2019, "Deconstructing Lottery Tickets: Zeros,
    Signs, and the Supermask" (NeurIPS 2019), Section 5, and the reference
    uber-research/deconstructing-lottery-tickets (``masked_networks.py``:
    ``MaskedDense``, ``get_effective_mask``, ``make_signed_consts``;
    ``train_supermask.py``). The weights stay at their init; every prunable
    weight has a trainable logit ``m``, and the forward pass uses ``W * M`` with

        M = Bernoulli(sigmoid(m)) + sigmoid(m) - stop_gradient(sigmoid(m)),

    whose value is exactly the 0/1 draw and whose gradient is the
    straight-through ``dL/dm = W * dL/dW_eff * sigmoid(m) * (1 - sigmoid(m))``.

    Facts of the reference kept here:

    - logits start at one constant (its ``sigmoid_bias``, default 0):
      ``logit(init_prob)``, so each weight is kept with ``init_prob`` at first;
    - only the logits train: kernels and biases are frozen (the reference moves
      both out of the trainable weights); here every non-prunable leaf
      (biases, BatchNorm) is frozen at init, as in :func:`edge_popup`;
    - the masks are *sampled at evaluation too* (the reference's test-time
      branch draws a fresh Bernoulli sample, it does not round). Evaluation
      here must be deterministic, so ``apply`` with ``key=None`` draws with a
      fixed per-member key, ``frozen['eval_key']`` (``stream(key, 'evaluate')``
      of the member's reparam key): the same state always evaluates to the same
      accuracy, under one sampled mask for the whole split (the reference
      draws one per evaluation batch, and reports the mean of 10 draws at the
      end; set ``frozen['eval_key']`` of copies of a member to average draws);
    - ``signed_constant``: ``W = sign(w) * std(w)`` per layer
      (:func:`signed_std_constant`; not edge-popup's ``sqrt(2 / fan_in)``);
    - ``dynamic_scaling``: each masked layer is multiplied by
      ``n / sum(M)`` ("x N/ones", the reference's ``multiplier``), the sum
      taken of the straight-through ``M`` as in the reference, so the
      gradient also flows through the multiplier (a layer with nothing kept
      uses ``n / 1``: its kernel is zero either way);
    - the reference's ``l2`` regulariser acts on the frozen kernel, so its
      logits are never decayed: here the logits get the member's weight decay
      (label ``'default'``), so train with ``weight_decay=0`` to match.

    The model's own initialiser gives ``w`` (the reference uses Glorot
    normal). In training, leaf ``i``'s uniforms are drawn from
    ``fold_in(key, i)`` of the step's key (:func:`bernoulli_masks`).

    Args:
      prunable: static bools of the masked layers (default choice: every
        kernel, :func:`ltjax.core.masking.prunable`).
      init_prob: the keep probability every logit starts at, in (0, 1).
      signed_constant: replace each prunable layer's weights by
        ``sign(w) * std(w)``.
      dynamic_scaling: multiply each masked layer by ``n / (number kept)``.

    Raises:
      ValueError: ``init_prob`` outside (0, 1).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import supermasks
        >>> params = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(0), (4, 3)),
        ...                       "bias": jnp.zeros(3)}}
        >>> selection = masking.prunable(params)
        >>> r = supermasks.bernoulli_supermask(selection, signed_constant=True)
        >>> logits, frozen = r.init(params, jax.random.key(1))
        >>> sorted(frozen)                 # the fixed weights and the evaluation draw's key
        ['eval_key', 'weights']

        Trained like any reparameterisation (not run here):
        ``Executor(model, dataset, recipe, reparam=r)``, then ``executor.train``;
        ``executor.evaluate`` uses one fixed mask draw per member.
    """
    logit = _logit(init_prob)

    def init(params: PyTree, key: jax.Array, args: PyTree | None = None,
             ) -> tuple[PyTree, PyTree]:
        flags = _flags(prunable, params)
        logits = [jnp.full(np.shape(w), logit if f else 0.0, jnp.float32)
                  for w, f in zip(jax.tree.leaves(params), flags, strict=True)]
        if args is None:
            weights = signed_std_constant(params, prunable) if signed_constant else params
        else:  # this member's own weight init (bernoulli_args)
            weights = _where(args["signed_constant"], signed_std_constant(params, prunable),
                             params)
        frozen = {"weights": weights,
                  "eval_key": jax.random.key_data(rng.stream(key, "evaluate"))}
        return jax.tree.unflatten(jax.tree.structure(params), logits), frozen

    def apply(trainable: PyTree, frozen: PyTree, key: jax.Array | None, *,
              train: bool) -> PyTree:
        del train  # sampled in evaluation too (the reference does)
        draws = _bernoulli_draws(trainable, frozen, prunable, key)
        out = []
        for m, w, d in zip(jax.tree.leaves(trainable), jax.tree.leaves(frozen["weights"]), draws,
                           strict=True):
            if d is None:
                out.append(w)
                continue
            prob = jax.nn.sigmoid(m.astype(jnp.float32))
            mask = d + (prob - jax.lax.stop_gradient(prob))
            if dynamic_scaling:
                mask = mask * (d.size / jnp.maximum(jnp.sum(mask), 1.0))
            out.append(w * mask.astype(w.dtype))
        return jax.tree.unflatten(jax.tree.structure(trainable), out)

    def labels(trainable: PyTree) -> PyTree:
        return jax.tree.map(lambda _, f: optim.DEFAULT if f else optim.FROZEN, trainable,
                            prunable)

    return reparam.Reparam(
        name=(f"bernoulli_supermask(init_prob={init_prob!r}, signed_constant={signed_constant!r}"
              f", dynamic_scaling={dynamic_scaling!r})"),
        init=init, apply=apply, labels=labels)


# --------------------------------------------------------------------------- DNW

def dnw(prunable: PyTree, *, density: float = 0.5) -> reparam.Reparam:
    """Discovering Neural Wirings as a :class:`ltjax.engine.reparam.Reparam`: the weights train.

    Wortsman, Farhadi & Rastegari 2019, "Discovering Neural Wirings"
    (NeurIPS 2019), Section 3 (static graphs), and the reference ``DNWConv``
    / ``ChooseEdges`` of RAIVNLab/STR (``utils/conv_type.py``). The forward
    pass of every prunable layer uses ``W * M`` with ``M`` the top-k of
    ``|W|`` (exactly ``ceil(density * n)`` kept, ties by position,
    :func:`ltjax.core.topk.mask`), and the backward pass is the identity to *all*
    weights, kept or not:

        W_eff = sg(W) * M + (W - sg(W)),   dL/dW = dL/dW_eff   (sg: stop_gradient),

    so a weight outside the top-k still moves and may enter it (the paper's
    "hallucinated" edges). The reference zeroes the ``int(prune_rate * n)``
    smallest, i.e. keeps ``ceil(density * n)`` with ``density = 1 -
    prune_rate``; it breaks ties by ``torch.sort`` order, here by position.

    The trainable tree is the params (every leaf trains, biases and
    BatchNorm too, with the member's weight decay); the frozen tree is
    ``{'kept': counts}`` (:func:`kept_counts`, per member, so members may
    differ in density). :func:`supermask` of ``(state.params, state.frozen)``
    gives the masks in use. IMP masks land on the params themselves.

    Args:
      prunable: static bools of the rewired layers (default choice: every
        kernel, :func:`ltjax.core.masking.prunable`).
      density: the kept share of each prunable layer.

    Raises:
      ValueError: ``density`` outside (0, 1].

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import supermasks
        >>> params = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(0), (4, 3)),
        ...                       "bias": jnp.zeros(3)}}
        >>> selection = masking.prunable(params)
        >>> r = supermasks.dnw(selection, density=0.25)
        >>> weights, frozen = r.init(params, jax.random.key(1))    # the weights are trained
        >>> masks = supermasks.supermask(weights, frozen, selection)   # top-k of |W|
        >>> masking.counts(masks, selection)
        {'Dense_0/kernel': (3, 12)}

        After training (``Executor(model, dataset, recipe, reparam=r)``), member 0's
        wiring is ``supermask(tree.index(state.params, 0), tree.index(state.frozen, 0),
        selection)``.
    """
    _check_density(density)

    def init(params: PyTree, key: jax.Array, args: PyTree | None = None,
             ) -> tuple[PyTree, PyTree]:
        del key
        _flags(prunable, params)  # args: this member's own density (dnw_args)
        return params, {"kept": kept_counts(params, prunable, density) if args is None
                        else args["kept"]}

    def apply(trainable: PyTree, frozen: PyTree, key: jax.Array | None, *,
              train: bool) -> PyTree:
        del key, train
        flags = _flags(prunable, trainable)
        out = []
        for w, k, f in zip(jax.tree.leaves(trainable), jax.tree.leaves(frozen["kept"]), flags,
                           strict=True):
            if f:
                mask = topk.mask(jnp.abs(jax.lax.stop_gradient(w)), k).astype(w.dtype)
                frozen_w = jax.lax.stop_gradient(w)
                out.append(frozen_w * mask + (w - frozen_w))  # value W * M, gradient identity
            else:
                out.append(w)
        return jax.tree.unflatten(jax.tree.structure(trainable), out)

    def trainable_masks(masks: PyTree, trainable: PyTree) -> PyTree:
        del trainable
        return masks

    return reparam.Reparam(name=f"dnw(density={density!r})", init=init, apply=apply,
                           trainable_masks=trainable_masks)
