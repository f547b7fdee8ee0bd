"""Sanity checks of lottery tickets: weight correlation and the jackpot classes.

- :func:`weight_correlation`: the correlation indicator (overlap ratio)
  ``R_p(theta, theta')`` of Liu et al. 2021 ("Lottery Ticket Preserves Weight
  Correlation: Is It Desirable or Not?", ICML, Sec. 4.2, Eq. 1), reused by
  Ma et al. 2021 (App. G): the share of the top-``p`` largest-magnitude
  weights of each layer that are top-``p`` in both trees. ``R_p ~ p`` for
  unrelated weights, ``R_p > p`` for a positive correlation, 1 for equal
  magnitude rankings.
- :func:`corrupt_batch`: the corrupted data of Su et al. 2020
  ("Sanity-Checking Pruning Methods: Random Tickets can Win the Jackpot",
  NeurIPS 2020): random labels, or random labels and randomly permuted
  pixels, for scoring the pruning methods at initialisation (SNIP, GraSP) on
  data that carries no information. Their random tickets are
  :func:`ltjax.core.pruning.smart_ratio_prune`.
- :func:`classify_ticket`: Ma et al. 2021 ("Sanity Checks for Lottery
  Tickets: Does Your Winning Ticket Really Win the Jackpot?", NeurIPS,
  Sec. 2.2 and App. C): a subnetwork is a *jackpot* winning ticket if it meets
  the paper's conditions 1-5, a *secondary prize* ticket if it meets 1-4 but
  not 5, and neither otherwise.

The conditions of Ma et al. 2021, Sec. 2.2 (paraphrased; LT is the ticket
``theta_0 * m`` trained, RR the random reinitialisation ``theta_0' * m``
trained, SDT a small dense net with as many weights as ``m`` keeps):

1. The sparsity is non-trivial and the subnetwork is trained for sufficiently
   many epochs (the paper: non-structured sparsity must exceed "approximately
   60%" to pay off on devices).
2. The small dense net (SDT) shows a clear accuracy drop against the
   well-trained subnetwork.
3. At some learning rate LT is clearly more accurate than RR trained at *any*
   learning rate.
4. At some learning rate LT is similar to, or more accurate than, the dense
   net pretrained at the *same* learning rate.
5. At some learning rate LT is similar to, or more accurate than, the
   well-trained dense net (appropriate learning rate, enough epochs; in the
   paper's evaluation the highest pretraining accuracy over the sweep).

"Similar" means an accuracy drop of at most 0.5 points on CIFAR-10, 1 on
CIFAR-100 and Tiny-ImageNet, 1.5 on ImageNet-1K; a "clear gap" (condition 3)
is a difference of more than 0.5 points. Two thresholds are inferred, not
stated as rules: condition 1's 60 % (from the remark above), and the
clear-gap margin for condition 2 (App. C writes ``A_LT > A_SD`` "where >
indicates a clear accuracy gap"). Whether the epochs were sufficient is the
caller's statement.

Nothing here imports flax; :func:`weight_correlation` is jittable and
vmappable (``prunable`` and ``p`` static).

Example:
    >>> import jax.numpy as jnp
    >>> from ltjax.core import masking
    >>> from ltjax.methods import sanity
    >>> init_params = {"Dense_0": {"kernel": jnp.array([[3.0, -1.0], [0.5, -4.0]])}}
    >>> trained_params = {"Dense_0": {"kernel": jnp.array([[0.2, -1.0], [0.5, -4.0]])}}
    >>> r = sanity.weight_correlation(init_params, trained_params,
    ...                               masking.prunable(init_params), p=0.5)
    >>> float(r)                          # half of the top half is shared
    0.5
    >>> verdict = sanity.classify_ticket(
    ...     {0.01: {"dense": 0.903, "ticket": 0.900, "reinit": 0.880},
    ...      0.1: {"dense": 0.923, "ticket": 0.880, "reinit": 0.878}},
    ...     small_dense=0.85, sparsity=0.832)
    >>> verdict.label
    'secondary prize'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import masking, pruning, topk, tree

PyTree = Any
Accuracy = Any  # a float in [0, 1], or an array of replicate accuracies (their mean is used)

JACKPOT = "jackpot"
SECONDARY_PRIZE = "secondary prize"
NONE = "none"

# Ma et al. 2021, Sec. 2.2: the largest accuracy drop that still counts as "similar".
SIMILAR_DROP = {"cifar10": 0.005, "cifar100": 0.01, "tiny_imagenet": 0.01, "imagenet": 0.015}
CLEAR_GAP = 0.005  # Ma et al. 2021, Sec. 2.2: a "clear gap" is a difference over 0.5 points.
MIN_SPARSITY = 0.6  # Ma et al. 2021, Sec. 2.2: non-structured sparsity "approximately 60%".
_EPS = 1e-9  # float slack: 0.898 - 0.903 is a drop of exactly 0.005, not 0.0050000000000000044

SWEEP_KEYS = ("dense", "ticket", "reinit")
CONDITIONS = ("1_sparsity_and_epochs", "2_beats_small_dense", "3_beats_reinit",
              "4_matches_dense_same_lr", "5_matches_best_dense")


#: The corruptions of :func:`corrupt_batch`.
CORRUPTIONS = ("random_labels", "random_pixels")


# --------------------------------------------------------------------------------------------
# Corrupted data (Su et al. 2020)
# --------------------------------------------------------------------------------------------


def corrupt_batch(key: jax.Array, x: jax.Array, y: jax.Array, *, corruption: str,
                  num_classes: int) -> tuple[jax.Array, jax.Array]:
    """A batch with random labels, or with random labels and each example's pixels permuted.

    Su et al. 2020's sanity check of the pruning methods at initialisation
    (reference ``JingtongSu/sanity-checking-pruning``, ``train_ticket.py``,
    ``--randLabel`` and ``--shufflePixel``): SNIP and GraSP score the net on a
    batch of corrupted training data.

    - ``'random_labels'``: every label replaced by a uniform draw from
      ``num_classes`` (the reference's ``corrupt_prob=1``); images unchanged.
    - ``'random_pixels'``: the same random labels, and the values of each
      example permuted by its own random permutation over all its entries
      (pixels and channels, the reference's ``xs[i][randperm(...)]``, Zhang
      et al. 2017's "random pixels"); the reference's ``--shufflePixel``
      also randomises the labels.

    Apply it to the raw images, before normalisation, as the reference does.
    The labels come from ``split(key)[0]`` and the permutations from
    ``split(split(key)[1], len(x))``, so both corruptions of one key share
    their labels.

    Args:
      key: a JAX key.
      x: the images ``[B, ...]``.
      y: the integer labels ``[B]``.
      corruption: one of :data:`CORRUPTIONS`.
      num_classes: the number of classes the labels are drawn from.

    Returns:
      ``(x, y)`` corrupted, of the input shapes and dtypes.

    Raises:
      ValueError: an unknown ``corruption``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.methods import sanity
        >>> images, labels = jnp.arange(16.0).reshape(4, 2, 2, 1), jnp.arange(4)
        >>> x, y = sanity.corrupt_batch(jax.random.key(0), images, labels,
        ...                             corruption="random_labels", num_classes=10)
        >>> bool(jnp.array_equal(x, images)), y.shape, y.dtype    # images unchanged
        (True, (4,), dtype('int32'))
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}")
    labels_key, pixels_key = jax.random.split(key)
    y = jax.random.randint(labels_key, jnp.shape(y), 0, num_classes, dtype=jnp.asarray(y).dtype)
    if corruption == "random_pixels":
        x = jnp.asarray(x)
        x = jax.vmap(lambda k, image: jax.random.permutation(k, image.ravel()).reshape(
            image.shape))(jax.random.split(pixels_key, x.shape[0]), x)
    return x, y


# --------------------------------------------------------------------------------------------
# Weight correlation (Liu et al. 2021)
# --------------------------------------------------------------------------------------------


def _check_p(p: Any) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise ValueError(f"p must be a number in (0, 1], got {p!r}")


def top_p_masks(params: PyTree, prunable: PyTree, *, p: float,
                masks: PyTree | None = None) -> PyTree:
    """``T_p``: the top-``p`` largest-magnitude weights of each prunable layer, as masks.

    Each prunable layer keeps its ``floor(p * n_l)`` largest ``|w|``, where
    ``n_l`` is the layer's size, or with ``masks`` its number of remaining
    weights (Liu et al. 2021: for a sparse net ``p`` is relative to the
    remaining weights). Ties are broken as in :func:`ltjax.core.pruning.prune`
    (among equal ``|w|`` the higher flat index is kept); ``p`` is read as the
    decimal typed (:func:`ltjax.core.topk.rational`), and ``1 - p`` exactly. Leaves
    outside ``prunable`` come back unchanged (all-True without ``masks``).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.methods import sanity
        >>> top = sanity.top_p_masks({"kernel": jnp.array([[3.0, -1.0], [0.5, -4.0]])},
        ...                          {"kernel": True}, p=0.5)
        >>> top["kernel"]
        Array([[ True, False],
               [False,  True]], dtype=bool)
    """
    _check_p(p)
    masks = masking.ones_like(params) if masks is None else masks
    masking.check(masks, params)
    # Removing ceil((1 - p) * n) of the n remaining weights keeps exactly floor(p * n).
    return pruning.prune(pruning.magnitude_scores(params), masks, prunable,
                         fraction=1 - topk.rational(p), scope="layerwise")


def weight_correlation(
    params_a: PyTree, params_b: PyTree, prunable: PyTree, *, p: float,
    masks: PyTree | None = None,
) -> jax.Array:
    """Correlation indicator ``R_p`` (Liu et al. 2021, Eq. 1; Ma et al. 2021, App. G).

    ``R_p(a, b) = sum_l |T_p(a_l) & T_p(b_l)| / sum_l |T_p(a_l)|`` over the
    prunable layers ``l``, with ``T_p`` from :func:`top_p_masks` (``k_l =
    floor(p * n_l)`` weights per layer). The paper divides by ``p * sum_l
    N_l``; the two agree whenever every ``p * n_l`` is an integer, and the
    denominator used here keeps ``R_p(a, a) == 1`` exactly and ``R_p <= 1``
    otherwise. For independent magnitude rankings ``E[R_p] ~ p``.

    Args:
      params_a: one set of weights (e.g. ``theta_0`` or ``theta_0 * m``).
      params_b: another, with the structure and shapes of ``params_a``.
      prunable: static bool tree (:func:`ltjax.core.masking.prunable`): the layers
        that count; other leaves are ignored.
      p: the top share, in (0, 1].
      masks: for sparse nets (e.g. ``R_p(theta_0 * m, theta_T * m)``): the
        mask ``m`` of both; ``T_p`` is then taken among the remaining weights.

    Returns:
      A float32 scalar (NaN under ``jit`` when every ``T_p`` is empty).

    Raises:
      ValueError: ``p`` outside (0, 1], mismatched trees or masks, or (outside
        ``jit``) ``p`` so small that every layer's ``T_p`` is empty.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import sanity
        >>> init_params = {"Dense_0": {"kernel": jnp.array([[3.0, -1.0], [0.5, -4.0]])}}
        >>> selection = masking.prunable(init_params)
        >>> float(sanity.weight_correlation(init_params, init_params, selection, p=0.5))
        1.0
        >>> trained_params = {"Dense_0": {"kernel": jnp.array([[0.2, -1.0], [5.0, -0.1]])}}
        >>> float(sanity.weight_correlation(init_params, trained_params, selection, p=0.5))
        0.0

        For independent rankings ``R_p`` is about ``p``: unrelated weights.
    """
    _check_p(p)
    tree.check_same_structure(params_b, params_a, name="params_b", reference_name="params_a")
    top_a = top_p_masks(params_a, prunable, p=p, masks=masks)
    top_b = top_p_masks(params_b, prunable, p=p, masks=masks)
    kept = masking.num_kept(top_a, prunable)  # == num_kept(top_b, prunable)
    if not isinstance(kept, jax.core.Tracer) and int(kept) == 0:
        raise ValueError(f"p={p} is too small: floor(p * n_l) is 0 in every prunable layer")
    both = masking.overlap(top_a, top_b, prunable)
    return jnp.where(kept > 0, both / jnp.maximum(kept, 1), jnp.nan).astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# Jackpot / secondary prize (Ma et al. 2021)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TicketClass:
    """The verdict of :func:`classify_ticket`.

    Attributes:
      label: ``'jackpot'``, ``'secondary prize'`` or ``'none'``.
      conditions: ``{name: held}`` for the paper's five conditions, in order
        (names in :data:`CONDITIONS`).
      reasons: ``{name: why}``: the compared (mean) accuracies and witness
        learning rates behind each entry of ``conditions``.
    """

    label: str
    conditions: dict[str, bool]
    reasons: dict[str, str]


def _mean_accuracy(value: Accuracy, name: str) -> float:
    try:
        values = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an accuracy or an array of them, got {value!r}") from None
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be non-empty and finite, got {value!r}")
    if values.min() < 0.0 or values.max() > 1.0:
        raise ValueError(f"{name} must be accuracies in [0, 1] (not percent), got {value!r}")
    return float(values.mean())


def _sweep_means(lr_sweep: Mapping[float, Mapping[str, Accuracy]]) -> dict[float, dict[str, float]]:
    if not isinstance(lr_sweep, Mapping) or not lr_sweep:
        raise ValueError(f"lr_sweep must be a non-empty mapping lr -> accuracies, got {lr_sweep!r}")
    out = {}
    for lr, entry in lr_sweep.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"lr_sweep[{lr!r}] must map {SWEEP_KEYS} to accuracies, got {entry!r}")
        missing = [k for k in SWEEP_KEYS if k not in entry]
        unknown = [k for k in entry if k not in SWEEP_KEYS]
        if missing or unknown:
            raise ValueError(f"lr_sweep[{lr!r}] must have exactly the keys {SWEEP_KEYS}; "
                             f"missing {missing}, unknown {unknown}")
        out[lr] = {k: _mean_accuracy(entry[k], f"lr_sweep[{lr!r}][{k!r}]") for k in SWEEP_KEYS}
    return out


def _check_margin(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


def classify_ticket(
    lr_sweep: Mapping[float, Mapping[str, Accuracy]], *, small_dense: Accuracy,
    sparsity: float, sufficient_epochs: bool = True, similar: float = SIMILAR_DROP["cifar10"],
    clear_gap: float = CLEAR_GAP, min_sparsity: float = MIN_SPARSITY,
) -> TicketClass:
    """Jackpot winning ticket, secondary prize ticket, or none (Ma et al. 2021, Sec. 2.2).

    Per learning rate ``lr``, ``LT(lr)``, ``RR(lr)`` and ``D(lr)`` are the mean
    accuracies of the ticket, the random reinitialisation and the dense net,
    all trained at ``lr``. The paper's conditions are then evaluated as:

    1. ``sparsity >= min_sparsity`` and ``sufficient_epochs``.
    2. ``max_lr LT(lr) - SD > clear_gap`` (SD: ``small_dense``'s mean).
    3. ``max_lr LT(lr) - max_lr RR(lr) > clear_gap`` (some lr beats RR at any lr).
    4. ``LT(lr) >= D(lr) - similar`` for some ``lr``.
    5. ``max_lr LT(lr) >= max_lr D(lr) - similar`` (the well-trained dense net
       is the best dense net of the sweep, as in the paper's evaluation).

    Label: ``'jackpot'`` if 1-5 hold, ``'secondary prize'`` if 1-4 hold and 5
    does not, ``'none'`` otherwise. Condition 5 implies 4. Boundaries (with
    1e-9 of float slack, so decimal inputs behave as written): a drop of
    exactly ``similar`` is still similar; a gap of exactly ``clear_gap`` is
    not clear.

    Args:
      lr_sweep: ``{lr: {"dense": acc, "ticket": acc, "reinit": acc}}``; each
        accuracy a float in [0, 1] or an array of replicate accuracies (the
        mean is used). Include the standard (well-trained) recipe's lr.
      small_dense: accuracy of the small dense net with as many weights as the
        ticket (its best over learning rates if several were tried).
      sparsity: the ticket's sparsity (pruned share), in [0, 1].
      sufficient_epochs: the caller's statement that every run trained for
        enough epochs (condition 1; not checkable from accuracies).
      similar: the largest drop that counts as similar (0.005 CIFAR-10; see
        :data:`SIMILAR_DROP` for the paper's other datasets).
      clear_gap: the margin a clear gap must exceed (0.005).
      min_sparsity: the least non-trivial sparsity (0.6).

    Raises:
      ValueError: an empty sweep, a missing or unknown accuracy key, an
        accuracy outside [0, 1] (percent instead of fractions), or a margin
        or sparsity out of range.

    Example:
        >>> from ltjax.methods import sanity
        >>> sanity.classify_ticket({0.1: {"dense": 0.923, "ticket": 0.921, "reinit": 0.905}},
        ...                        small_dense=0.90, sparsity=0.832).label
        'jackpot'
    """
    sweep = _sweep_means(lr_sweep)
    sd = _mean_accuracy(small_dense, "small_dense")
    _check_margin(similar, "similar")
    _check_margin(clear_gap, "clear_gap")
    for value, name in ((sparsity, "sparsity"), (min_sparsity, "min_sparsity")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")

    def best(key: str) -> tuple[float, float]:
        lr = max(sweep, key=lambda r: sweep[r][key])
        return lr, sweep[lr][key]

    (lt_lr, lt), (rr_lr, rr), (d_lr, d) = best("ticket"), best("reinit"), best("dense")
    same_lr = {lr: acc["ticket"] - acc["dense"] for lr, acc in sweep.items()}
    lr4 = max(same_lr, key=same_lr.get)

    held = dict(zip(CONDITIONS, (
        sparsity >= min_sparsity and bool(sufficient_epochs),
        lt - sd > clear_gap + _EPS,
        lt - rr > clear_gap + _EPS,
        same_lr[lr4] >= -similar - _EPS,
        lt - d >= -similar - _EPS,
    ), strict=True))
    reasons = dict(zip(CONDITIONS, (
        f"sparsity {sparsity:.4g} vs min_sparsity {min_sparsity:.4g}; "
        f"sufficient_epochs={bool(sufficient_epochs)}",
        f"best LT {lt:.4f} (lr {lt_lr:g}) - small dense {sd:.4f} = {lt - sd:+.4f} "
        f"vs clear_gap {clear_gap:g}",
        f"best LT {lt:.4f} (lr {lt_lr:g}) - best RR {rr:.4f} (lr {rr_lr:g}) = {lt - rr:+.4f} "
        f"vs clear_gap {clear_gap:g}",
        f"at lr {lr4:g}: LT {sweep[lr4]['ticket']:.4f} - dense {sweep[lr4]['dense']:.4f} = "
        f"{same_lr[lr4]:+.4f} vs -similar {-similar:g}",
        f"best LT {lt:.4f} (lr {lt_lr:g}) - best dense {d:.4f} (lr {d_lr:g}) = {lt - d:+.4f} "
        f"vs -similar {-similar:g}",
    ), strict=True))
    first_four = all(held[c] for c in CONDITIONS[:4])
    if first_four and held[CONDITIONS[4]]:
        label = JACKPOT
    elif first_four:
        label = SECONDARY_PRIZE
    else:
        label = NONE
    return TicketClass(label=label, conditions=held, reasons=reasons)
