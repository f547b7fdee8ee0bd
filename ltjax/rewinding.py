"""Rewinding and the controls of lottery-ticket experiments.

- :func:`rewind`: reset the surviving weights to their values at step k
  (Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket
  Hypothesis"; k = 0 is the original reset of Frankle & Carbin 2019).
- :func:`rewind_state`: the same for a whole train state: params and batch
  statistics from step k, the step counter at k (so the learning-rate
  schedule resumes at k), a fresh optimiser state by default or the one of
  step k on request.
- :func:`reinitialize`: the random re-initialisation control: a new init,
  the same mask.
- mask shuffling within layers (the random-pruning control that keeps each
  layer's count) is :func:`ltjax.pruning.random_prune_like` with ``scope='layerwise'``.

All take plain pytrees and work under ``vmap`` over replicates.

Example:
    >>> state = rewind_state(state_at_k, masks, fresh_opt_state=tx.init(state_at_k.params))
"""

from __future__ import annotations

from typing import Any

from ltjax import masking, tree

PyTree = Any


def rewind(params_at_k: PyTree, masks: PyTree) -> PyTree:
    """The surviving weights at their step-k values, pruned weights exactly zero.

    Example:
        >>> ticket = rewind(params_at_init, masks)
    """
    tree.check_same_structure(masks, params_at_k, name="masks", reference_name="params_at_k")
    return masking.apply(params_at_k, masks)


def rewind_state(state_at_k: Any, masks: PyTree, *, fresh_opt_state: PyTree | None = None) -> Any:
    """A train state rewound to step k under ``masks``.

    Args:
      state_at_k: a :class:`ltjax.train.TrainState` saved at the rewind step.
      masks: the new masks.
      fresh_opt_state: the optimiser state to start from (Frankle et al. 2020
        reset it); None keeps ``state_at_k.opt_state`` (rewinding the
        optimiser too).

    Returns:
      The state with masked step-k params, step-k batch statistics and step
      counter, and the chosen optimiser state.
    """
    opt_state = state_at_k.opt_state if fresh_opt_state is None else fresh_opt_state
    return state_at_k.replace(params=rewind(state_at_k.params, masks), opt_state=opt_state)


def reinitialize(new_params: PyTree, masks: PyTree) -> PyTree:
    """The random re-initialisation control: ``new_params`` (a fresh init) under ``masks``.

    Frankle & Carbin 2019 (Section 2): "randomly reinitialized" subnetworks
    keep the ticket's structure but not its initial values.
    """
    tree.check_same_structure(masks, new_params, name="masks", reference_name="new_params")
    return masking.apply(new_params, masks)

