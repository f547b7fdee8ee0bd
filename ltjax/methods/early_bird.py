"""Early-Bird tickets: channel masks from BatchNorm scales that stop changing early.

You, Li, Xu, Fu, Wang, Chen, Baraniuk, Wang & Lin 2020, "Drawing Early-Bird
Tickets: Towards More Efficient Training of Deep Networks" (ICLR 2020). Train
with network slimming's L1 penalty on the BatchNorm scales (Liu et al. 2017:
``s * sum |gamma|``, whose subgradient ``s * sign(gamma)`` is what the
reference's ``updateBN`` adds to the gradient); at the start of every epoch
draw a global channel mask pruning the share ``p`` of channels with the
smallest ``|gamma|``; keep the last 5 masks; the ticket has emerged when the
newest mask is within Hamming distance 0.1 (share of channels that differ,
``<= 0.1``: :func:`emergence_epoch`) of each of the 4 before it. The ticket is
then retrained.

Facts of the reference (GATECH-EIC/Early-Bird-Tickets@4a16ae0, ``main.py``,
``EarlyBird``, ``updateBN``) and where ltjax differs:

- its threshold is ``sorted(|gamma|)[int(N * p)]`` and it keeps ``|gamma| >
  threshold``, so it prunes ``int(N * p) + 1`` channels plus ties; ltjax prunes
  exactly ``floor(p * N)`` (ties by position: the earlier channel is pruned
  first), the count the paper states, in exact arithmetic
  (:func:`ltjax.core.topk.count`, ``'floor'``): where ``p * N`` is a whole number
  the float product can miss, the reference's ``int(N * p)`` is one less
  (``int(90 * 0.7) == 62``; here 63; none of the studies' channel counts);
- a channel is pruned as a mask, not by surgery: its BatchNorm ``scale`` and
  ``bias`` entries are held at zero, so the channel's output after
  BatchNorm is exactly zero in training and evaluation (the conv or dense
  layer feeding it still computes it: no FLOPs are saved, the function is
  that of the pruned network; the reference rebuilds a smaller network);
- the retraining starts from a fresh init of the masked network, as both of
  the reference's retraining scripts do (``main_scratch.py``: the full
  schedule, the paper's "EB Train (re-init)"; ``main_c.py``, the headline EB
  Train: ``--start-epoch``, the schedule resumes at the Early-Bird epoch and
  only the remaining epochs are trained); :mod:`ltjax.studies.early_bird`
  offers both (``config.retrain``).

Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from ltjax.methods import early_bird
    >>> params = {"Conv_0": {"kernel": jnp.ones((3, 3, 1, 4))},
    ...           "BatchNorm_0": {"scale": jnp.array([0.5, 0.1, 0.1, 0.9]), "bias": jnp.zeros(4)}}
    >>> masks = early_bird.channel_masks(params, ratio=0.5)      # params' structure, bool
    >>> early_bird.mask_vector(masks)                              # the kept channels
    array([ True, False, False,  True])
    >>> history = [early_bird.mask_vector(masks)] * 3              # one vector per epoch
    >>> early_bird.emergence_epoch(history) is None                # None until it emerges
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import topk, tree
from ltjax.engine import reparam

PyTree = Any

#: The default FIFO length and distance threshold of the reference's ``EarlyBird``.
WINDOW, THRESHOLD = 5, 0.1


def _is_bn(name: str, leaf_name: str) -> bool:
    parts = name.split("/")
    return parts[-1] == leaf_name and bool(re.search(r"BatchNorm|bn", name))


def bn_scale_names(params: PyTree) -> list[str]:
    """The paths of the BatchNorm ``scale`` leaves (gamma), in tree order.

    Raises:
      ValueError: ``params`` have none.
    """
    names = [n for n in tree.names(params) if _is_bn(n, "scale")]
    if not names:
        raise ValueError("params have no BatchNorm 'scale' leaf (Early-Bird needs BatchNorm)")
    return names


def slimming_penalty(params: PyTree, strength: float) -> jax.Array:
    """``strength * sum |gamma|`` over every BatchNorm scale: network slimming's L1.

    Its gradient is ``strength * sign(gamma)`` (0 at 0), the reference's ``updateBN``.
    """
    total = jnp.float32(0.0)
    for name, leaf in zip(tree.names(params), jax.tree.leaves(params), strict=True):
        if _is_bn(name, "scale"):
            total = total + jnp.sum(jnp.abs(leaf))
    return strength * total


def slimming(strength: float) -> reparam.Reparam:
    """Ordinary training plus :func:`slimming_penalty` (the reference's ``-sr``, default 1e-4).

    Raises:
      ValueError: ``strength`` negative or not finite.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.methods import early_bird
        >>> r = early_bird.slimming(1e-4)        # an L1 penalty on the BatchNorm scales
        >>> params = {"BatchNorm_0": {"scale": jnp.array([0.5, -1.5]), "bias": jnp.zeros(2)}}
        >>> round(float(early_bird.slimming_penalty(params, 1e-4)), 6)     # 1e-4 * (0.5 + 1.5)
        0.0002

        Training with it: ``Executor(model, dataset, recipe, reparam=slimming(1e-4))``.
    """
    if not (isinstance(strength, int | float) and math.isfinite(strength) and strength >= 0):
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    base = reparam.identity()
    return reparam.Reparam(
        name=f"slimming({strength!r})", init=base.init, apply=base.apply,
        trainable_masks=base.trainable_masks,
        penalty=lambda trainable, key: slimming_penalty(trainable, float(strength)))


def mask_vector(params_or_masks: PyTree) -> np.ndarray:
    """All BatchNorm channels' values (|gamma| or a channel mask) concatenated, in tree order."""
    names = bn_scale_names(params_or_masks)
    found = dict(zip(tree.names(params_or_masks), jax.tree.leaves(params_or_masks), strict=True))
    return np.concatenate([np.asarray(found[n]).reshape(-1) for n in names])


def channel_keep(gammas: np.ndarray, ratio: float) -> np.ndarray:
    """All but the ``floor(ratio * N)`` channels of smallest ``|gamma|`` (ties: earlier pruned).

    The count is :func:`ltjax.core.topk.count` (``'floor'``, exact), the ranking
    :func:`ltjax.core.topk.host_mask` in float64.

    Raises:
      ValueError: ``ratio`` outside [0, 1), or a NaN or infinite gamma.

    Example:
        >>> import numpy as np
        >>> from ltjax.methods import early_bird
        >>> early_bird.channel_keep(np.array([0.5, 0.1, 0.1, 0.9]), 0.5)
        array([ True, False, False,  True])
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1) (the share of channels pruned), got {ratio!r}")
    magnitude = np.abs(np.asarray(gammas, np.float64))
    tree.check_finite(magnitude, name="gammas")  # a NaN gamma has no rank: it would be kept
    pruned = topk.count(magnitude.size, ratio, rounding="floor")
    # The highest N - pruned; among equal |gamma| the later channel is kept.
    return topk.host_mask(magnitude, magnitude.size - pruned, ties="last")


def channel_masks(params: PyTree, ratio: float) -> PyTree:
    """The Early-Bird masks of ``params``: a global channel mask from the BatchNorm scales.

    Returns bool masks with the params' structure: the pruned channels'
    BatchNorm ``scale`` and ``bias`` entries False, everything else True
    (:mod:`ltjax.core.masking` masks, so the executor trains the ticket).

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from ltjax.methods import early_bird
        >>> gammas = jnp.array([0.5, 0.1, 0.1, 0.9])
        >>> params = {"Conv_0": {"kernel": jnp.ones((3, 3, 1, 4))},
        ...           "BatchNorm_0": {"scale": gammas, "bias": jnp.zeros(4)}}
        >>> masks = early_bird.channel_masks(params, ratio=0.5)
        >>> masks["BatchNorm_0"]["scale"], bool(masks["Conv_0"]["kernel"].all())
        (array([ True, False, False,  True]), True)
    """
    return masks_from_channels(params, channel_keep(mask_vector(params), ratio))


def masks_from_channels(params: PyTree, keep: np.ndarray) -> PyTree:
    """Masks (params' structure) keeping the channels where ``keep`` (:func:`mask_vector` order).

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from ltjax.methods import early_bird
        >>> gammas = jnp.array([0.5, 0.1, 0.1, 0.9])
        >>> params = {"Conv_0": {"kernel": jnp.ones((3, 3, 1, 4))},
        ...           "BatchNorm_0": {"scale": gammas, "bias": jnp.zeros(4)}}
        >>> masks = early_bird.masks_from_channels(params, np.array([True, True, False, True]))
        >>> masks["BatchNorm_0"]["bias"]
        array([ True,  True, False,  True])
    """
    names = bn_scale_names(params)
    found = dict(zip(tree.names(params), jax.tree.leaves(params), strict=True))
    keep = np.asarray(keep, bool).reshape(-1)
    total = sum(int(np.size(found[n])) for n in names)
    if keep.size != total:
        raise ValueError(f"keep has {keep.size} entries, the BatchNorm layers {total} channels")
    by_prefix, offset = {}, 0
    for n in names:
        size = int(np.size(found[n]))
        by_prefix[n[: -len("scale")]] = keep[offset:offset + size].reshape(np.shape(found[n]))
        offset += size

    def one(name: str, leaf: Any) -> np.ndarray:
        prefix = name[: name.rfind("/") + 1]
        if prefix in by_prefix and name.rsplit("/", 1)[-1] in ("scale", "bias"):
            return by_prefix[prefix].copy()
        return np.ones(np.shape(leaf), bool)

    return tree.map_with_name(one, params)


def mask_distance(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """The share of channels where two channel masks differ (0 identical, 1 complementary)."""
    a, b = np.asarray(mask_a, bool), np.asarray(mask_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {a.shape} and {b.shape}")
    return float(np.mean(a != b))


def _check_window(window: Any) -> int:
    """``window`` as an int >= 2: the newest mask and at least one before it to compare."""
    if isinstance(window, bool | np.bool_) or not isinstance(window, int | np.integer) or (
            window < 2):
        raise ValueError(f"window must be an integer >= 2 (the newest mask and the "
                         f"window - 1 masks it is compared with), got {window!r}")
    return int(window)


def _check_threshold(threshold: Any) -> float:
    """``threshold`` as a float in [0, 1]: distances are shares of channels in [0, 1]."""
    if isinstance(threshold, bool | np.bool_) or not isinstance(
            threshold, int | float | np.integer | np.floating) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a finite number in [0, 1] (the largest share of "
                         f"channels that may differ, inclusive), got {threshold!r}")
    return float(threshold)


def window_distances(history: Sequence[np.ndarray], window: int = WINDOW) -> list[float]:
    """Distances of the newest mask to each of the ``window - 1`` before it (fewer at the start).

    Raises:
      ValueError: ``window`` below 2 (no mask to compare the newest with).
    """
    window = _check_window(window)
    newest = history[-1]
    return [mask_distance(newest, old) for old in history[-window:-1]]


def emergence_epoch(history: Sequence[np.ndarray], *, window: int = WINDOW,
                    threshold: float = THRESHOLD) -> int | None:
    """The first index ``e`` (epoch) whose window of ``window`` masks is full and all
    ``window - 1`` distances to mask ``e`` are at most ``threshold``; None if never.

    The reference's ``EarlyBird.early_bird_emerge`` (GATECH-EIC/Early-Bird-Tickets,
    ``main.py``): a FIFO of the last ``window`` masks, the distance of the
    newest to each other one. It returns False only if some distance is
    ``> 0.1``, so a distance equal to the threshold counts as emerged
    (``<=``); we follow the code that ran the paper's experiments. The
    reference's README words it "all smaller than given threshold"; the two
    readings differ only when a distance is exactly the threshold
    (``k / N == threshold`` for ``N`` channels). A distance is the share
    ``k / N`` of :func:`mask_distance`, correctly rounded (1 of 10 channels
    is the float ``0.1``). A window needs at least two masks (``window=1``
    would compare nothing, so every first mask would "emerge"); threshold 0
    asks for identical masks, and any threshold of 1 or more always holds.

    Raises:
      ValueError: ``window`` not an integer >= 2, ``threshold`` not a finite
        number in [0, 1] (NaN would never emerge).

    Example:
        >>> import numpy as np
        >>> from ltjax.methods import early_bird
        >>> a, b = np.array([True, False]), np.array([False, True])
        >>> early_bird.emergence_epoch([a, b, a, a, a, a, a])   # window [a] * 5 ends at index 6
        6
    """
    window = _check_window(window)
    threshold = _check_threshold(threshold)
    for end in range(window - 1, len(history)):
        distances = window_distances(history[: end + 1], window)
        if len(distances) == window - 1 and max(distances) <= threshold:
            return end
    return None
