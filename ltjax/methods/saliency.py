"""Saliency scores for pruning at initialisation: SNIP, GraSP and SynFlow.

The three scores compared by Frankle, Dziugaite, Roy & Carbin 2021 ("Pruning
Neural Networks at Initialization: Why Are We Missing the Mark?", ICLR 2021),
with the semantics of their reference code, ganguli-lab/Synaptic-Flow
(``Pruners/pruners.py`` and ``prune.py``, read at 9dfa57a):

- :func:`snip_scores`: connection sensitivity ``|theta * dL/dtheta|`` (Lee,
  Ajanthan & Torr 2019, "SNIP: Single-shot Network Pruning based on
  Connection Sensitivity", ICLR 2019). Keep the highest.
- :func:`grasp_scores`: gradient signal preservation ``theta * (H g)`` (Wang,
  Zhang & Grosse 2020, "Picking Winning Tickets Before Training by
  Preserving Gradient Flow", ICLR 2020). Keep the highest.
- :func:`synflow_scores`: synaptic flow ``|theta| * dR/d|theta|`` of the
  net with absolute weights on an all-ones input (Tanaka, Kunin, Yamins &
  Ganguli 2020, "Pruning neural networks without any data by iteratively
  conserving synaptic flow", NeurIPS 2020), data-free; by default as
  ranking-safe log scores. Keep the highest.
- :func:`synflow_prune`: iterative SynFlow, rescoring the masked net each
  round on the exponential schedule ``density ** (r / rounds)``; with
  ``invert=True``, inverted SynFlow (every round keeps the lowest scores).

Scores are returned for every leaf; the caller's ``prunable`` tree selects
which are ranked (:func:`ltjax.core.pruning.prune_to_density`, global scope in the
paper). The inversion ablation is :func:`ltjax.core.pruning.inverted_scores`
(SynFlow's: ``synflow_prune(..., invert=True)``); the
layerwise-shuffle and reinit ablations are
:func:`ltjax.core.pruning.random_prune_like` and
:func:`ltjax.core.rewinding.rewind` of a fresh init.

Nothing here imports flax: scores take plain pytrees and closures. The caller
closes ``loss_fn`` or ``forward_fn`` over the model **in eval mode** (the
reference scores in eval mode) and, for SNIP and GraSP, over the batch.

Example:
    >>> import jax.numpy as jnp, optax
    >>> from ltjax.core import masking, pruning
    >>> from ltjax.methods import saliency
    >>> params = {"Dense_0": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]])}}
    >>> selection = masking.prunable(params)
    >>> x, y = jnp.eye(2), jnp.array([0, 1])
    >>> def loss_fn(p):                     # e.g. the cross-entropy of model.apply on a batch
    ...     return optax.softmax_cross_entropy_with_integer_labels(x @ p["Dense_0"]["kernel"],
    ...                                                            y).mean()
    >>> masks = pruning.prune_to_density(saliency.snip_scores(loss_fn, params), selection,
    ...                                  density=0.5)
    >>> masks["Dense_0"]["kernel"]
    Array([[False,  True],
           [False,  True]], dtype=bool)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import masking, pruning, topk

PyTree = Any


def snip_scores(loss_fn: Callable[[PyTree], jax.Array], params: PyTree) -> PyTree:
    """SNIP's connection sensitivity ``|theta * dL/dtheta|`` for every leaf.

    Lee, Ajanthan & Torr 2019 (ICLR). The reference (Synaptic-Flow's ``SNIP``,
    after mi-lad/snip) differentiates the loss with respect to an all-ones
    mask, which is the same product, and then divides by the sum of all
    scores; a positive constant does not change the ranking, so the scores
    here are **not** normalised.

    Args:
      loss_fn: ``params -> scalar`` loss, closed over the batch (the reference
        uses 10 examples per class) and the model in eval mode.
      params: the parameters at initialisation (with masks already applied,
        pruned weights score 0).

    Returns:
      Non-negative scores with the structure of ``params``; keep the highest.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from ltjax.core import masking, pruning
        >>> from ltjax.methods import saliency
        >>> params = {"Dense_0": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]])}}
        >>> selection = masking.prunable(params)
        >>> x, y = jnp.eye(2), jnp.array([0, 1])
        >>> def loss_fn(p):                     # e.g. the cross-entropy of model.apply on a batch
        ...     return optax.softmax_cross_entropy_with_integer_labels(x @ p["Dense_0"]["kernel"],
        ...                                                            y).mean()
        >>> scores = saliency.snip_scores(loss_fn, params)        # |theta * dL/dtheta|
        >>> bool((scores["Dense_0"]["kernel"] >= 0).all())
        True
        >>> masks = pruning.prune_to_density(scores, selection, density=0.5)
        >>> masking.counts(masks, selection)
        {'Dense_0/kernel': (2, 4)}
    """
    grads = jax.grad(loss_fn)(params)
    return jax.tree.map(lambda p, g: jnp.abs(p * g), params, grads)


def grasp_scores(
    loss_fn: Callable[[PyTree], jax.Array], params: PyTree, *, prunable: PyTree | None = None,
) -> PyTree:
    """GraSP's ``theta * (H g)`` with ``g`` the (stopped) gradient, for every leaf.

    Wang, Zhang & Grosse 2020 (ICLR). ``H g`` is the Hessian-gradient product,
    computed forward-over-reverse: ``jax.jvp`` of ``jax.grad(loss_fn)`` along
    ``g = stop_gradient(grad L)``, the same vector as the reference's
    ``grad(g . grad L)``.

    The paper removes the weights with the highest ``-theta * Hg``; equivalently
    (Synaptic-Flow's convention, used here) keep the **highest** ``theta * Hg``.
    Scores are signed, so invert them with
    :func:`ltjax.core.pruning.inverted_scores` (negation), never ``1 / v``.

    Two details of the reference belong to the caller or do not matter:

    - it divides the logits by a temperature of 200 before the loss: put that
      in ``loss_fn`` (``cross_entropy(logits / 200, labels)``);
    - it divides the scores by ``|sum S| + 1e-10``, a positive constant that
      does not change the ranking: the scores here are not normalised.

    Args:
      loss_fn: ``params -> scalar`` loss, closed over the batch and the model in
        eval mode (and the temperature).
      params: the parameters at initialisation.
      prunable: optional static bool tree (:func:`ltjax.core.masking.prunable`).
        When given, ``g`` is zero outside the selected leaves, so ``Hg`` is
        ``H_PP g_P`` with ``P`` the prunable weights, as in the reference (and
        the original GraSP code), which differentiate only with respect to the
        conv and linear weights. With ``None``, ``g`` covers every leaf.

    Returns:
      Signed scores with the structure of ``params``; keep the highest.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from ltjax.core import masking, pruning
        >>> from ltjax.methods import saliency
        >>> params = {"Dense_0": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]])}}
        >>> selection = masking.prunable(params)
        >>> x, y = jnp.eye(2), jnp.array([0, 1])
        >>> def loss_fn(p):                     # e.g. the cross-entropy of model.apply on a batch
        ...     return optax.softmax_cross_entropy_with_integer_labels(x @ p["Dense_0"]["kernel"],
        ...                                                            y).mean()
        >>> scores = saliency.grasp_scores(loss_fn, params, prunable=selection)
        >>> masks = pruning.prune_to_density(scores, selection, density=0.5)
        >>> masking.counts(masks, selection)
        {'Dense_0/kernel': (2, 4)}

        The reference divides the logits by a temperature (200): ``loss_fn = lambda p:
        cross_entropy(model.apply({"params": p}, x) / 200, y)``.
    """
    grad_fn = jax.grad(loss_fn)
    g = jax.lax.stop_gradient(grad_fn(params))
    if prunable is not None:
        if jax.tree.structure(prunable) != jax.tree.structure(params):
            raise ValueError(
                "prunable must have the structure of params (masking.prunable(params))")
        g = jax.tree.map(lambda x, keep: x if keep else jnp.zeros_like(x), g, prunable)
    _, hg = jax.jvp(grad_fn, (params,), (g,))
    return jax.tree.map(lambda p, h: p * h, params, hg)


def _check_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def synflow_scores(
    forward_fn: Callable[[PyTree], jax.Array], params: PyTree, *, dtype: Any = jnp.float64,
    log: bool = True,
) -> PyTree:
    """SynFlow's synaptic flow ``S = |theta| * dR/d|theta|``, ``R = sum(forward_fn(|theta|))``.

    Tanaka, Kunin, Yamins & Ganguli 2020 (NeurIPS). Data-free: the caller closes
    ``forward_fn`` over an all-ones input of batch 1 (``jnp.ones((1, *input_shape))``)
    and the model in eval mode; masks must already be applied to ``params``
    (pruned weights then score exactly 0). Every leaf, biases included, is
    replaced by its absolute value, as the reference ``linearize`` does; it
    also takes the absolute value of BatchNorm's running statistics: to match,
    close ``forward_fn`` over ``abs`` batch statistics.

    ``R`` is a product over the layers and overflows float32 in deep nets, so
    by default it is computed in float64 (under ``jax.enable_x64``; the
    reference has ``model.double()`` commented out). :func:`ltjax.core.pruning`
    ranks scores in float32, where a float64 ``S`` above ``3.4e38`` would
    become ``inf``: with ``log=True`` (the default) the scores are returned as
    ``log(S / max S)`` in float32, in ``[-inf, 0]`` with ``S == 0`` mapping to
    ``-inf``. The map is increasing, so the ranking is never inverted; scores
    closer than float32's resolution of the log (a relative difference below
    about ``|log(S / max S)| * 6e-8``) become ties, which pruning breaks by
    position. ``max S`` is over all leaves (a constant: rankings and
    layerwise scopes are unaffected). A float64 overflow (``R > 1.8e308``)
    gives ``nan`` or ``+inf`` scores; :func:`synflow_prune` checks for them.

    Args:
      forward_fn: ``params -> output array``; the scalar ``R`` is the sum of the
        output.
      params: the (masked) parameters.
      dtype: ``jnp.float64`` (default) or ``jnp.float32``, the dtype of the
        computation.
      log: return ``log(S / max S)`` in float32 (default) or ``S`` itself in
        ``dtype`` (a float64 array outside ``enable_x64``: read it with NumPy;
        jnp operations outside the context truncate it to float32).

    Returns:
      Scores with the structure of ``params``; keep the highest.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import saliency
        >>> params = {"Dense_0": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]])},
        ...           "Dense_1": {"kernel": jnp.array([[1.0], [0.25]])}}
        >>> selection = masking.prunable(params)
        >>> def forward_fn(p):       # e.g. model.apply({"params": p}, ones, train=False)
        ...     return jnp.ones((1, 2)) @ p["Dense_0"]["kernel"] @ p["Dense_1"]["kernel"]
        >>> masks = {"Dense_0": {"kernel": jnp.array([[True, True], [True, False]])},
        ...          "Dense_1": {"kernel": jnp.array([True, True])[:, None]}}
        >>> scores = saliency.synflow_scores(forward_fn, masking.apply(params, masks), log=False)
        >>> [[round(float(v), 4) for v in row] for row in scores["Dense_0"]["kernel"]]
        [[1.0, 0.5], [0.5, 0.0]]
    """
    dt = _check_dtype(dtype)
    context = jax.enable_x64(True) if dt.itemsize == 8 else contextlib.nullcontext()
    with context:
        abs_params = jax.tree.map(lambda p: jnp.abs(jnp.asarray(p)).astype(dt), params)
        flow = jax.grad(lambda q: jnp.sum(forward_fn(q)))(abs_params)
        scores = jax.tree.map(lambda q, g: jnp.abs(q * g), abs_params, flow)
        if not log:
            return scores
        logs = jax.tree.map(jnp.log, scores)
        top = jnp.max(jnp.stack([jnp.max(x, initial=-jnp.inf) for x in jax.tree.leaves(logs)]))
        shift = jnp.where(jnp.isfinite(top), top, jnp.zeros((), dt))
        return jax.tree.map(lambda x: (x - shift).astype(jnp.float32), logs)




def _check_rounds(rounds: int) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")


@functools.partial(jax.jit, static_argnames=("forward_fn", "dtype"))
def _masked_synflow(
    forward_fn: Callable[[PyTree], jax.Array], params: PyTree, masks: PyTree, *, dtype: np.dtype,
) -> tuple[PyTree, jax.Array]:
    """One round's log scores and how many are ``nan`` or ``+inf`` (one compiled program)."""
    scores = synflow_scores(forward_fn, masking.apply(params, masks), dtype=dtype)
    bad = sum(jnp.sum(jnp.isnan(s) | (s == jnp.inf)) for s in jax.tree.leaves(scores))
    return scores, bad


def synflow_prune(
    forward_fn: Callable[[PyTree], jax.Array], params: PyTree, prunable: PyTree, *,
    density: float, rounds: int = 100, scope: str = "global", masks: PyTree | None = None,
    dtype: Any = jnp.float64, invert: bool = False,
) -> PyTree:
    """Iterative SynFlow: ``rounds`` rounds of scoring the masked net and pruning.

    Tanaka et al. 2020 (NeurIPS), Algorithm 1, with the reference's exponential
    schedule: round ``r = 1 .. rounds`` keeps ``density ** (r / rounds)`` of the
    prunable weights (:func:`ltjax.core.pruning.prune_to_density`: exact counts,
    ties broken by position), scoring :func:`synflow_scores` of
    ``masking.apply(params, masks)``. Pruning continues from the previous
    round's masks, so pruned weights are never revived. The last round keeps
    exactly ``round(density * total)`` (per layer with ``scope='layerwise'``).
    ``rounds=1`` is single-shot SynFlow.

    ``invert=True`` is inverted SynFlow, the ablation of Frankle, Dziugaite,
    Roy & Carbin 2021 (ICLR): each round negates the scores of the masked net
    before ranking (:func:`ltjax.core.pruning.inverted_scores`), so it keeps the
    *lowest* flow among the surviving weights, as the reference's
    ``prune.py:prune_loop`` calls ``pruner.invert()`` in every round. Because
    every round rescores the net the previous round kept, this is not the
    one-shot inversion of one score (``rounds=1``). A surviving weight whose
    flow an earlier round cut to zero has the lowest score and is kept
    first; pruned weights stay pruned.

    Runs eagerly: a Python loop over one scoring program, compiled once per
    ``forward_fn`` object and params shapes (reuse the same ``forward_fn`` to
    reuse it), and eager pruning. ``params`` keep their signs (only the
    scores see ``|theta|``). On LeNet-300-100 (266K prunable weights) the 100
    rounds take about 15-20 s on 2 CPU cores, nearly all of it the sort in
    :func:`ltjax.core.pruning.prune_to_density` (about 0.15 s a round).

    Args:
      forward_fn: ``params -> output``, closed over an all-ones input of batch 1
        and the model in eval mode (see :func:`synflow_scores`).
      params: the parameters at initialisation.
      prunable: static bool tree from :func:`ltjax.core.masking.prunable`.
      density: final kept fraction of the prunable weights, in (0, 1].
      rounds: number of scoring rounds, an int >= 1 (100 in the paper).
      scope: ``'global'`` (the paper) or ``'layerwise'``.
      masks: masks to start from (default all-True); the schedule counts from
        all prunable weights, so they must keep at least the first round's
        ``density ** (1 / rounds)``.
      dtype: dtype of the scoring (see :func:`synflow_scores`).
      invert: keep the lowest scores in every round (inverted SynFlow).

    Returns:
      The final masks (bool, structure of ``params``).

    Raises:
      ValueError: ``density`` outside (0, 1], ``rounds`` not an int >= 1, a bad
        ``scope`` or ``dtype``, ``invert`` not a bool, ``masks`` not matching
        ``params``, or scores that overflowed even ``dtype``.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import saliency
        >>> params = {"Dense_0": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]])},
        ...           "Dense_1": {"kernel": jnp.array([[1.0], [0.25]])}}
        >>> selection = masking.prunable(params)
        >>> def forward_fn(p):       # e.g. model.apply({"params": p}, ones, train=False)
        ...     return jnp.ones((1, 2)) @ p["Dense_0"]["kernel"] @ p["Dense_1"]["kernel"]
        >>> masks = saliency.synflow_prune(forward_fn, params, selection, density=0.5, rounds=5)
        >>> masking.counts(masks, selection)        # no layer collapses
        {'Dense_0/kernel': (1, 4), 'Dense_1/kernel': (2, 2)}
        >>> inverted = saliency.synflow_prune(forward_fn, params, selection, density=0.5,
        ...                                   rounds=5, invert=True)
    """
    topk.check_share(density, name="density")
    _check_rounds(rounds)
    _check_dtype(dtype)
    if scope not in pruning.SCOPES:
        raise ValueError(f"scope must be one of {pruning.SCOPES}, got {scope!r}")
    if not isinstance(invert, (bool, np.bool_)):
        raise ValueError(f"invert must be a bool, got {invert!r}")
    masks = masking.ones_like(params) if masks is None else masks
    masking.check(masks, params)

    for r in range(1, int(rounds) + 1):
        scores, bad = _masked_synflow(forward_fn, params, masks, dtype=np.dtype(dtype))
        if int(bad):
            raise ValueError(
                f"synflow scores overflowed {np.dtype(dtype).name} in round {r}: {int(bad)} "
                "entries are nan or inf; use dtype=jnp.float64 or rescale the weights"
            )
        if invert:
            scores = pruning.inverted_scores(scores)
        masks = pruning.prune_to_density(scores, prunable, density=density ** (r / rounds),
                                         scope=scope, masks=masks)
    return masks
