"""Key derivation: replicate keys and named streams.

Every random number in ltjax comes from ``key(seed)`` by folding in integers:
the replicate index, then a *stream* named by a string (hashed with a stable
CRC32, never Python's salted built-in string hash), then the step. So replicate ``r``
does not depend on how many replicates run, and training can resume at any
step (``fold_in(noise, step)``), as in big_vision.

The two streams of a replicate (DESIGN.md, "Seeds"):

- ``init``: the initialisation (the ticket),
- ``noise``: SGD noise (data order, augmentation).

Example:
    >>> from ltjax.core import rng
    >>> keys = rng.replicate_keys(0, 4)            # [4] typed keys
    >>> init_keys = rng.stream(keys, "init")        # works on stacked keys too
    >>> init_keys.shape
    (4,)
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp

INIT = "init"
NOISE = "noise"


def stable_hash(name: str) -> int:
    """A process-independent 31-bit integer for ``name`` (CRC32).

    Example:
        >>> from ltjax.core import rng
        >>> rng.stable_hash("init") == rng.stable_hash("init")
        True
        >>> rng.stable_hash("init")
        1182065780
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


def replicate_keys(seed: int, num_replicates: int, *, start: int = 0) -> jax.Array:
    """Keys of replicates ``start .. start + num_replicates - 1`` of ``seed``.

    Replicate ``r`` gets ``fold_in(key(seed), r)``, so it is the same key
    whether 2 or 8 replicates run.

    Args:
      seed: the experiment's integer seed.
      num_replicates: how many keys (S).
      start: index of the first replicate.

    Returns:
      Typed keys of shape ``[S]``.
    """
    if num_replicates < 1:
        raise ValueError(f"num_replicates must be >= 1, got {num_replicates}")
    base = jax.random.key(seed)
    indices = jnp.arange(start, start + num_replicates, dtype=jnp.uint32)
    return jax.vmap(lambda r: jax.random.fold_in(base, r))(indices)


def stream(keys: jax.Array, name: str) -> jax.Array:
    """The named sub-stream of one key or of a stacked array of keys.

    Example:
        >>> from ltjax.core import rng
        >>> noise = rng.stream(rng.replicate_keys(0, 2), "noise")
        >>> noise.shape, noise.dtype
        ((2,), key<fry>)
    """
    salt = stable_hash(name)
    return jax.vmap(lambda k: jax.random.fold_in(k, salt))(keys.ravel()).reshape(keys.shape)


def init_and_noise(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The ``init`` and ``noise`` streams of replicate keys (same shape)."""
    return stream(keys, INIT), stream(keys, NOISE)


def step_key(key: jax.Array, step: jax.Array | int) -> jax.Array:
    """The key of training step ``step`` in a stream: ``fold_in(key, step)``."""
    return jax.random.fold_in(key, step)
