"""Exact counts and top-k masks: the one share-to-count rule and the one top-k of ltjax.

Every method that keeps "the top k" (pruning, supermasks, SupSup, Early-Bird
channels, the data diet's subsets) ranks with :func:`mask` (one array),
:func:`masks` (one ranking over several arrays) or :func:`host_mask` (its
NumPy twin on the host), and every share turned into a count goes through
:func:`count`.

**Shares.** :func:`rational` reads a share as an exact fraction: a
:class:`fractions.Fraction` or an integer as it is, and a float as the
*simplest fraction that rounds to it* (the one of smallest denominator in the
float's round-to-nearest interval, at the float's own precision). So 0.3 is
3/10 and ``0.3 * 100`` keeps 30, not the 31 of float arithmetic
(``0.3 * 100 == 30.000000000000004``); ``1 / 3`` is 1/3; ``np.float32(0.2)``
is 1/5. Any decimal of at most 7 places is read as that decimal. A float
computed by arithmetic is read as the float it is: ``1 - 0.7`` is
0.30000000000000004, not 3/10 (pass ``1 - Fraction("0.7")`` for that).

**Counts.** :func:`count` is ``rounding(share * n)`` in exact arithmetic, with
the rounding named at every call site:

- ``'ceil'``: pruning fractions (OpenLTH's ``ceil``; Frankle & Carbin 2019),
  edge-popup / DNW / SupSup kept counts (their references zero the
  ``int((1 - k) n)`` smallest, i.e. keep ``ceil(k n)``), Knowledge
  Evolution's fit units;
- ``'floor'``: Early-Bird's pruned channels (``int(N * p)`` in the reference,
  whose float product gives one fewer when ``p * N`` is a whole number the
  float misses, e.g. ``int(90 * 0.7) == 62``; here 63);
- ``'half_even'``: one-shot pruning to a density
  (:func:`ltjax.core.pruning.prune_to_density`, Zhou et al.'s masks; Python's
  ``round``, ties to even, but of the exact product: ``0.35`` of 90 keeps 32,
  where ``round(0.35 * 90)`` gives 31 from ``31.499999999999996``).

**Ties.** Equal scores are ranked by position (flat index in row-major order,
then leaf order for several arrays): ``ties='first'`` ranks the earlier
position higher (kept first: supermasks, the data diet's hardest / easiest),
``ties='last'`` the later one (pruning, which removes the lowest scores and
among equal ones the earlier first; Early-Bird). ``-0.0`` equals ``0.0``;
``-inf`` ranks lowest, ``+inf`` above every finite value and NaN above
``+inf`` (all NaNs equal), the order of ``jnp.sort``; subnormal numbers rank
by their value on every backend (XLA's CPU compares them as zero, so a sort
there ties them with 0). Exactly ``k`` entries are kept (all of them if ``k``
is larger, none if ``k <= 0``).

**Algorithm.** :func:`mask` and :func:`masks` find the k-th largest key by a
32-pass bisection over the bits of an order-preserving uint32 image of the
float32 scores (compare-and-count, no sort, ``k`` may be traced), then admit
the tied entries by position with a cumulative sum. :func:`host_mask` ranks
with ``np.lexsort`` in the scores' own dtype (float64 scores stay float64),
under the same rule.

Example:
    >>> import jax.numpy as jnp
    >>> from ltjax.core import topk
    >>> topk.count(100, 0.3, rounding="ceil"), topk.count(10, 0.3, rounding="ceil")
    (30, 3)
    >>> topk.mask(jnp.array([0.3, 0.1, 0.3, 0.5]), 2)
    Array([ True, False, False,  True], dtype=bool)
    >>> topk.mask(jnp.array([0.3, 0.1, 0.3, 0.5]), 2, ties="last")
    Array([False, False,  True,  True], dtype=bool)
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: The roundings of :func:`count`.
ROUNDINGS = ("ceil", "floor", "half_even")
#: Which of two equal scores ranks higher: the earlier position or the later one.
TIES = ("first", "last")

_INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------- shares and counts

def _simplest_between(lo: Fraction, hi: Fraction) -> Fraction:
    """The fraction of smallest denominator in ``[lo, hi]`` (``0 <= lo <= hi``)."""
    whole = math.floor(lo)
    if whole == lo:
        return Fraction(whole)
    if whole + 1 <= hi:
        return Fraction(whole + 1)
    return whole + 1 / _simplest_between(1 / (hi - whole), 1 / (lo - whole))


def _float_rational(value: np.floating) -> Fraction:
    """The simplest fraction that rounds to ``value`` at its own precision (``value >= 0``)."""
    if value == 0:
        return Fraction(0)
    dtype = value.dtype  # float16/32/64 or an ml_dtypes float such as bfloat16
    exact = Fraction(float(value))
    below = Fraction(float(np.nextafter(value, dtype.type(0))))
    above = Fraction(float(np.nextafter(value, dtype.type(np.inf))))
    lo, hi = (exact + below) / 2, (exact + above) / 2
    simplest = _simplest_between(lo, hi)
    # The interval's ends round to ``value`` only when its last mantissa bit is even
    # (round half to even); an end found as the simplest is then not ``value``'s.
    even = int(np.asarray(value).view(np.dtype(f"u{dtype.itemsize}"))) % 2 == 0
    if simplest in (lo, hi) and not even:
        return exact
    return simplest


def check_share(share: Any, *, name: str, zero: bool = False, one: bool = True) -> float:
    """``share`` as a float, refused unless it is a real scalar in its interval.

    The interval is ``(0, 1]`` by default (a kept share: a density);
    ``zero=True, one=False`` gives ``[0, 1)`` (a removed share: a pruning
    fraction). Python, NumPy and concrete JAX real scalars and fractions are
    accepted; bools, strings, arrays, NaN and traced values are not.

    Raises:
      ValueError: naming ``name``, the interval and the value.

    Example:
        >>> import numpy as np
        >>> from ltjax.core import topk
        >>> topk.check_share(np.float32(0.5), name="density")
        0.5
    """
    value = None
    if not isinstance(share, bool | np.bool_ | str | bytes) and np.ndim(share) == 0:
        try:
            value = float(share)
        except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
            value = None
    low_ok = value is not None and (value >= 0.0 if zero else value > 0.0)
    high_ok = value is not None and (value <= 1.0 if one else value < 1.0)
    if not (low_ok and high_ok):
        interval = f"{'[' if zero else '('}0, 1{']' if one else ')'}"
        raise ValueError(f"{name} must be a number in {interval}, got {share!r}")
    return value


def rational(share: Any) -> Fraction:
    """``share`` as an exact fraction: the rule of every share in ltjax.

    A :class:`fractions.Fraction` (or other rational) and an integer are taken
    as they are; a float (Python, NumPy or a concrete JAX scalar) as the
    simplest fraction that rounds to it at its own precision, so the decimal
    (or the fraction) that was typed: ``0.3 -> 3/10``, ``1/3 -> 1/3``,
    ``np.float32(0.2) -> 1/5``.

    Raises:
      ValueError: a bool, a string, an array of more than one value, a traced
        value, NaN, an infinity or a negative number.

    Example:
        >>> import numpy as np
        >>> from ltjax.core import topk
        >>> topk.rational(0.3), topk.rational(1 / 3), topk.rational(np.float32(0.2))
        (Fraction(3, 10), Fraction(1, 3), Fraction(1, 5))
    """
    if isinstance(share, bool | np.bool_ | str | bytes):
        raise ValueError(f"a share must be a number, got {share!r}")
    if isinstance(share, numbers.Integral):  # int, NumPy integers
        value = Fraction(int(share))
    elif isinstance(share, numbers.Rational):  # Fraction
        value = Fraction(int(share.numerator), int(share.denominator))
    else:
        try:
            array = np.asarray(share)
        except (TypeError, jax.errors.TracerArrayConversionError,
                jax.errors.ConcretizationTypeError) as error:
            raise ValueError(f"a share must be a concrete number (not traced), got "
                             f"{share!r}") from error
        if array.ndim != 0 or array.dtype == np.bool_ or not (
                jnp.issubdtype(array.dtype, jnp.integer)
                or jnp.issubdtype(array.dtype, jnp.floating)):
            raise ValueError(f"a share must be a real scalar, got {share!r}")
        if jnp.issubdtype(array.dtype, jnp.integer):
            value = Fraction(int(array))
        else:
            if not np.isfinite(np.float64(array)) or array < 0:
                raise ValueError(f"a share must be a finite number >= 0, got {share!r}")
            value = _float_rational(array[()])
    if value < 0:
        raise ValueError(f"a share must be a finite number >= 0, got {share!r}")
    return value


def _check_rounding(rounding: str) -> None:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")


def count(n: Any, share: Any, *, rounding: str) -> Any:
    """``rounding(share * n)`` exactly: how many of ``n`` a share is.

    Args:
      n: how many there are: an int (the count is computed on the host, any
        size), or a JAX integer array, traced or not (int32 arithmetic; the
        share's fraction ``p/q`` must then have ``(p + 1) * (q - 1) < 2^31``,
        true of every decimal of up to 4 places).
      share: the share, read by :func:`rational` (a float as the decimal
        typed); usually in [0, 1].
      rounding: ``'ceil'``, ``'floor'`` or ``'half_even'`` (ties to even, as
        Python's ``round``).

    Returns:
      A Python int for an int ``n``, an int32 array for an array ``n``.

    Raises:
      ValueError: an unknown rounding, a bad share (:func:`rational`), a
        negative ``n``, or a share whose fraction is too fine for int32
        arithmetic on an array ``n``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import topk
        >>> topk.count(100, 0.3, rounding="ceil"), topk.count(10, 0.25, rounding="half_even")
        (30, 2)
        >>> jax.jit(lambda n: topk.count(n, 0.2, rounding="ceil"))(jnp.int32(11))
        Array(3, dtype=int32)
    """
    _check_rounding(rounding)
    value = rational(share)
    p, q = value.numerator, value.denominator
    if isinstance(n, bool | np.bool_):
        raise ValueError(f"n must be an integer count, got {n!r}")
    if not isinstance(n, numbers.Integral | jax.core.Tracer) and np.ndim(n) == 0:
        if not jnp.issubdtype(np.asarray(n).dtype, jnp.integer):
            raise ValueError(f"n must be an integer count, got {n!r}")
        n = int(n)  # a concrete scalar array: counted on the host
    if isinstance(n, numbers.Integral):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        exact = value * int(n)
        if rounding == "ceil":
            return math.ceil(exact)
        if rounding == "floor":
            return math.floor(exact)
        return round(exact)  # Fraction.__round__: half to even
    if (p + 1) * (q - 1) > _INT32_MAX:
        raise ValueError(
            f"share {share!r} is {value}: its denominator is too large for an exact int32 count "
            f"of an array n; pass an int n or a share with fewer decimals (or a Fraction)")
    n = jnp.asarray(n, jnp.int32)
    whole, part = n // q, n % q  # share * n = whole * p + part * p / q
    scaled = part * p
    if rounding == "ceil":
        return whole * p + (scaled + q - 1) // q
    below = scaled // q
    if rounding == "floor":
        return whole * p + below
    rest = scaled - below * q
    result = whole * p + below
    up = (2 * rest > q) | ((2 * rest == q) & (result % 2 == 1))
    return result + up.astype(jnp.int32)


# --------------------------------------------------------------------------- top-k

def _check_ties(ties: str) -> None:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")


def _keys(values: jax.Array) -> jax.Array:
    """An order-preserving uint32 image of float32 values (``-0 == 0``, one NaN, the largest).

    Integer operations on the bit patterns only: subnormal values rank by their value on
    every backend (a float comparison on XLA's CPU treats them as zero).
    """
    bits = jax.lax.bitcast_convert_type(values.reshape(-1).astype(jnp.float32), jnp.uint32)
    magnitude = bits & jnp.uint32(0x7FFFFFFF)
    bits = jnp.where(magnitude == 0, jnp.uint32(0), bits)  # -0.0 -> +0.0
    bits = jnp.where(magnitude > jnp.uint32(0x7F800000), jnp.uint32(0x7FC00000), bits)  # NaN
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(1 << 31))


def _select(keys: jax.Array, k: Any, alive: jax.Array | None, ties: str) -> jax.Array:
    """The flat mask of the ``k`` largest ``keys`` among the ``alive`` ones, ties by position."""
    k = jnp.asarray(k, jnp.int32)

    def settle(i: jax.Array, threshold: jax.Array) -> jax.Array:
        """Bit ``31 - i`` of the largest t with at least k alive keys >= t."""
        candidate = threshold | jnp.left_shift(jnp.uint32(1), (31 - i).astype(jnp.uint32))
        at_least = keys >= candidate
        if alive is not None:
            at_least = at_least & alive
        enough = jnp.sum(at_least, dtype=jnp.int32) >= k
        return jnp.where(enough, candidate, threshold)

    # A rolled loop: one pass in the program, not 32 (a 32-pass unrolled ranking took seconds
    # to compile in every program that prunes).
    threshold = jax.lax.fori_loop(0, 32, settle, jnp.uint32(0))
    above, tied = keys > threshold, keys == threshold
    if alive is not None:
        above, tied = above & alive, tied & alive
    room = k - jnp.sum(above, dtype=jnp.int32)
    if ties == "first":
        order = jnp.cumsum(tied, dtype=jnp.int32)
    else:
        order = jnp.cumsum(tied[::-1], dtype=jnp.int32)[::-1]
    return above | (tied & (order <= room))


def mask(values: jax.Array, k: Any, *, ties: str = "first",
         alive: jax.Array | None = None) -> jax.Array:
    """The bool mask of the ``k`` highest ``values`` (among the ``alive`` entries).

    Exactly ``min(max(k, 0), number alive)`` entries are True; ties by
    position (``ties``, see the module docstring). ``values`` are ranked as
    float32. ``k`` may be traced (a per-member count); jittable and
    vmappable. 32 compare-and-count passes, no sort.

    Args:
      values: scores of any shape (float32, or anything float32 holds).
      k: how many to keep (int or int32 array).
      ties: ``'first'`` (among equal values the earlier position is kept
        first) or ``'last'``.
      alive: optional bool array of ``values``' shape: only these entries
        compete; the others are never kept.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import topk
        >>> topk.mask(jnp.array([0.3, 0.1, 0.3, 0.5]), 2)
        Array([ True, False, False,  True], dtype=bool)
    """
    _check_ties(ties)
    flat_alive = None if alive is None else jnp.asarray(alive, bool).reshape(-1)
    if flat_alive is not None and flat_alive.shape[0] != math.prod(jnp.shape(values)):
        raise ValueError(f"alive must have the shape of values {jnp.shape(values)}, "
                         f"got {jnp.shape(alive)}")
    return _select(_keys(jnp.asarray(values)), k, flat_alive, ties).reshape(jnp.shape(values))


@functools.partial(jax.jit, static_argnames=("ties",))
def masks(values: Sequence[jax.Array], k: Any, *, ties: str = "first",
          alive: Sequence[jax.Array] | None = None) -> list[jax.Array]:
    """One ranking over several arrays: the masks of their ``k`` highest values together.

    :func:`mask` of the concatenation of the flattened ``values`` (in list
    order), split back into their shapes: e.g. global pruning over all
    prunable layers. Jitted (one compiled program per layout when called
    eagerly); ``k`` may be traced.

    Args:
      values: arrays of scores.
      k: how many to keep over all of them.
      ties: ``'first'`` or ``'last'`` (position: the list order, then the
        flat index).
      alive: optional bool arrays of the same shapes; only those entries compete.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.core import topk
        >>> topk.masks([jnp.array([0.2, 0.1]), jnp.array([[0.2], [0.3]])], 2, ties="last")
        [Array([False, False], dtype=bool), Array([[ True], [ True]], dtype=bool)]
    """
    _check_ties(ties)
    values = list(values)
    if not values:
        return []
    sizes = [math.prod(jnp.shape(v)) for v in values]
    keys = jnp.concatenate([_keys(jnp.asarray(v)) for v in values])
    flat_alive = None
    if alive is not None:
        alive = list(alive)
        if [jnp.shape(a) for a in alive] != [jnp.shape(v) for v in values]:
            raise ValueError(f"alive must have the shapes of values "
                             f"{[jnp.shape(v) for v in values]}, got "
                             f"{[jnp.shape(a) for a in alive]}")
        flat_alive = jnp.concatenate([jnp.asarray(a, bool).reshape(-1) for a in alive])
    flat = _select(keys, k, flat_alive, ties)
    out, start = [], 0
    for v, size in zip(values, sizes, strict=True):
        out.append(flat[start:start + size].reshape(jnp.shape(v)))
        start += size
    return out


def host_mask(values: Any, k: int, *, ties: str = "first") -> np.ndarray:
    """:func:`mask` on the host, in NumPy, in the values' own dtype (float64 stays float64).

    The same rule as :func:`mask` (exactly ``k`` kept, clipped to ``[0,
    size]``; ties by position; ``-0.0 == 0.0``; NaN highest), ranked by
    ``np.lexsort``: for host-side selections (the data diet's subsets,
    Early-Bird's channels) whose scores may be float64.

    Example:
        >>> import numpy as np
        >>> from ltjax.core import topk
        >>> topk.host_mask(np.array([0.3, 0.1, 0.3, 0.5]), 2, ties="last")
        array([False, False,  True,  True])
    """
    _check_ties(ties)
    array = np.asarray(values)
    flat = array.reshape(-1)
    if flat.dtype.kind == "f":
        flat = np.where(flat == 0, np.zeros((), flat.dtype), flat)  # -0.0 -> 0.0
    position = np.arange(flat.size)
    # Ascending by value, then by position's rank (NumPy sorts NaN last): the top k are last.
    order = np.lexsort((-position if ties == "first" else position, flat))
    kept = min(max(int(k), 0), flat.size)
    out = np.zeros(flat.size, bool)
    out[order[flat.size - kept:]] = True
    return out.reshape(array.shape)
