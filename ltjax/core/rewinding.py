"""Rewinding and the controls of lottery-ticket experiments.

- :func:`rewind`: reset the surviving weights to their values at step k
  (Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket
  Hypothesis"; k = 0 is the original reset of Frankle & Carbin 2019); given
  a fresh init instead, the random re-initialisation control (a new init,
  the same mask).
- :func:`rewind_state`: the same for a whole train state: params and batch
  statistics from step k, the step counter at k (so the learning-rate
  schedule resumes at k), a fresh optimiser state by default or the one of
  step k on request.
- mask shuffling within layers (the random-pruning control that keeps each
  layer's count) is :func:`ltjax.core.pruning.random_prune_like` with ``scope='layerwise'``.

All take plain pytrees and work under ``vmap`` over replicates.

Example:
    >>> import jax.numpy as jnp, optax
    >>> from ltjax.core import rewinding
    >>> from ltjax.engine import train
    >>> tx = optax.sgd(0.1, momentum=0.9)
    >>> params_k = {"w": jnp.array([0.5, -2.0, 1.5])}          # the params at step k = 5
    >>> state_at_k = train.TrainState(step=jnp.int32(5), params=params_k, batch_stats={},
    ...                               opt_state=tx.init(params_k))
    >>> masks = {"w": jnp.array([True, False, True])}
    >>> state = rewinding.rewind_state(state_at_k, masks,
    ...                                fresh_opt_state=tx.init(state_at_k.params))
    >>> state.params["w"], int(state.step)      # the schedule resumes at step k
    (Array([0.5, 0. , 1.5], dtype=float32), 5)
"""

from __future__ import annotations

from typing import Any

from ltjax.core import masking, tree

PyTree = Any


def rewind(params: PyTree, masks: PyTree) -> PyTree:
    """``params`` under ``masks``: the kept weights at their values, pruned ones exactly zero.

    With the params of step k it is rewinding (k = 0: the lottery-ticket
    reset); with a fresh init (a new key) it is the random re-initialisation
    control of Frankle & Carbin 2019 (Section 2): "randomly reinitialized"
    subnetworks keep the ticket's structure but not its initial values.

    Raises:
      ValueError: masks not of the params' structure, shapes or bool dtype.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import rewinding
        >>> params_at_init = {"w": jnp.array([0.5, -2.0, 1.5])}
        >>> masks = {"w": jnp.array([True, False, True])}
        >>> rewinding.rewind(params_at_init, masks)          # the ticket
        {'w': Array([0.5, 0. , 1.5], dtype=float32)}
        >>> fresh = {"w": jax.random.normal(jax.random.key(1), (3,))}   # a new init
        >>> control = rewinding.rewind(fresh, masks)          # reinit control: same mask
        >>> control["w"] != 0
        Array([ True, False,  True], dtype=bool)
    """
    tree.check_same_structure(masks, params, name="masks", reference_name="params")
    return masking.apply(params, masks)


def rewind_state(state_at_k: Any, masks: PyTree, *, fresh_opt_state: PyTree | None = None) -> Any:
    """A train state rewound to step k under ``masks``.

    Args:
      state_at_k: a :class:`ltjax.engine.train.TrainState` saved at the rewind step.
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
