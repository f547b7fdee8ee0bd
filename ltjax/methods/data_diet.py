"""The data diet's example scores and subset selection: EL2N, GraNd, forgetting.

Paul, Ganguli & Dziugaite 2021 ("Deep Learning on a Data Diet: Finding
Important Examples Early in Training", NeurIPS 2021), with the semantics of
their reference code, mansheej/data_diet@aee462e (``scores.py``,
``forgetting.py``, ``data.py``):

- :func:`el2n_scores`: the error L2 norm ``||softmax(f(x)) - e_y||_2`` of the
  eval-mode network, averaged over R runs (the paper scores at epoch 20 with
  10 runs). :func:`el2n_per_member` keeps the run axis.
- :func:`grand_scores`: the gradient norm ``||grad_w CE(f(x), y)||_2`` over
  every parameter, per example, averaged over R runs (the paper scores at
  initialisation). :func:`grand_per_member` keeps the run axis.
- :func:`forgetting_counts`: Toneva et al. 2019's forgetting events, counted
  as the reference counts them during training.
- :func:`noise_precision`: how many of the top-scored examples carry a
  corrupted label (the paper's noisy-label experiment); :func:`spearman` and
  :func:`input_norms`: Kirsch 2023's check that GraNd at initialisation tracks
  the input norm.
- :func:`select`: exactly ``kept`` example indices: the hardest (optionally
  after skipping an ``offset`` of the very hardest), the easiest, or a random
  subset. Subsets train for the full-data step count (the paper's protocol,
  the caller's business: :mod:`ltjax.studies.data_diet`).

Nothing here imports flax. The scores take ``logits_fn(params, batch_stats,
x) -> [B, C]``, the model's eval-mode forward pass on a batch (normalise the
inputs inside it), and ``params`` / ``batch_stats`` stacked over R members
``[R, ...]``; examples are scored in chunks of ``chunk_size`` (the last one
padded), so device memory is bounded by the chunk, whatever the data size,
and ``x`` may stay a host NumPy array. Members are scored one after the other
(``lax.map``), so member r's scores do not depend on the others.

Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from ltjax.methods import data_diet
    >>> params = {"w": jnp.stack([jnp.eye(3), 2 * jnp.eye(3)])}      # R = 2 members, stacked
    >>> def logits_fn(p, s, xb):      # one member's eval-mode logits of a batch [B, C]
    ...     return xb @ p["w"]
    >>> x, y = np.eye(3, dtype=np.float32), np.array([0, 1, 0], np.int32)   # N = 3
    >>> scores = data_diet.el2n_scores(logits_fn, params, {}, x, y, num_classes=3)  # [N]
    >>> [round(float(v), 4) for v in scores]          # example 2 is mislabelled: the hardest
    [0.39, 0.39, 1.0972]
    >>> data_diet.select(scores, 2, mode="hardest")   # int32 [kept], sorted; ties by position
    array([0, 2], dtype=int32)

    A network's ``logits_fn`` is e.g. ``lambda p, s, xb: train.logits(model, p, s,
    data.normalize(xb, mean, std))``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from ltjax.core import topk

PyTree = Any
LogitsFn = Callable[[PyTree, PyTree, jax.Array], jax.Array]

MODES = ("hardest", "easiest", "random")


# --------------------------------------------------------------------------- per batch


def el2n(logits: jax.Array, labels: jax.Array, *, num_classes: int) -> jax.Array:
    """EL2N ``||softmax(logits) - onehot(labels)||_2`` per example ``[B]``.

    Paul et al. 2021, eq. (2); the reference's ``get_lord_error_fn`` with
    ``ord=2``.

    Args:
      logits: ``[B, num_classes]``.
      labels: integer labels ``[B]``.
      num_classes: the number of classes.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.methods import data_diet
        >>> scores = data_diet.el2n(jnp.zeros((1, 2)), jnp.array([0]), num_classes=2)
        >>> round(float(scores[0]), 4)                  # sqrt(0.5)
        0.7071
    """
    _check_logits(logits, num_classes)
    errors = jax.nn.softmax(logits, axis=-1) - jax.nn.one_hot(labels, num_classes,
                                                               dtype=logits.dtype)
    return jnp.linalg.norm(errors, axis=-1)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels ``[B]``."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


# --------------------------------------------------------------------------- scores


def el2n_per_member(
    logits_fn: LogitsFn, params: PyTree, batch_stats: PyTree, x: Any, y: Any, *,
    num_classes: int, chunk_size: int = 1024,
) -> jax.Array:
    """EL2N of every example under each of R members, ``[R, N]``.

    Paul et al. 2021 (NeurIPS). Member r's row is what the reference computes
    for one run (``compute_scores(..., 'l2_error')``).

    Args:
      logits_fn: ``(params, batch_stats, x[B, ...]) -> logits [B, num_classes]``,
        the eval-mode forward pass of one member.
      params: parameters stacked over members ``[R, ...]``.
      batch_stats: BatchNorm statistics stacked the same way ``[R, ...]`` (``{}``
        for a model without them).
      x: inputs ``[N, ...]`` (NumPy or JAX; moved to the device a chunk at a time).
      y: integer labels ``[N]`` in ``[0, num_classes)``.
      num_classes: the number of classes.
      chunk_size: examples per chunk (the last chunk is padded).

    Returns:
      float scores ``[R, N]``; higher is harder.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from ltjax.methods import data_diet
        >>> params = {"w": jnp.stack([jnp.eye(3), 2 * jnp.eye(3)])}      # R = 2 members, stacked
        >>> def logits_fn(p, s, xb):      # one member's eval-mode logits of a batch [B, C]
        ...     return xb @ p["w"]
        >>> x, y = np.eye(3, dtype=np.float32), np.array([0, 1, 0], np.int32)   # N = 3
        >>> per_member = data_diet.el2n_per_member(logits_fn, params, {}, x, y, num_classes=3)
        >>> per_member.shape                                # [R, N]
        (2, 3)
        >>> scores = data_diet.el2n_scores(logits_fn, params, {}, x, y, num_classes=3)
        >>> bool(jnp.allclose(per_member.mean(0), scores))
        True
    """
    def one(p: PyTree, s: PyTree, xb: jax.Array, yb: jax.Array) -> jax.Array:
        return el2n(logits_fn(p, s, xb), yb, num_classes=num_classes)

    return _chunked(one, params, batch_stats, x, y, num_classes=num_classes,
                    chunk_size=chunk_size)


def el2n_scores(
    logits_fn: LogitsFn, params: PyTree, batch_stats: PyTree, x: Any, y: Any, *,
    num_classes: int, chunk_size: int = 1024,
) -> jax.Array:
    """EL2N averaged over the R members, ``[N]`` (:func:`el2n_per_member`'s mean).

    Paul et al. 2021: EL2N at epoch 20 averaged over 10 runs keeps half of
    CIFAR-10 at no accuracy loss.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from ltjax.methods import data_diet
        >>> params = {"w": jnp.stack([jnp.eye(3), 2 * jnp.eye(3)])}      # R = 2 members, stacked
        >>> def logits_fn(p, s, xb):      # one member's eval-mode logits of a batch [B, C]
        ...     return xb @ p["w"]
        >>> x, y = np.eye(3, dtype=np.float32), np.array([0, 1, 0], np.int32)   # N = 3
        >>> data_diet.el2n_scores(logits_fn, params, {}, x, y, num_classes=3).shape   # [N]
        (3,)
    """
    return el2n_per_member(logits_fn, params, batch_stats, x, y, num_classes=num_classes,
                           chunk_size=chunk_size).mean(axis=0)


def grand_per_member(
    logits_fn: LogitsFn, params: PyTree, batch_stats: PyTree, x: Any, y: Any, *,
    num_classes: int, chunk_size: int = 128,
) -> jax.Array:
    """GraNd ``||grad_params CE(f(x_i), y_i)||_2`` of every example under each member, ``[R, N]``.

    Paul et al. 2021, eq. (1), over every leaf of ``params`` (the reference's
    ``get_grad_norm_fn`` takes the ``jacrev`` of the per-example losses with
    respect to all params; here each chunk is a ``vmap(grad)`` over its
    examples, the same numbers). The forward pass is eval mode, one example at
    a time (BatchNorm uses its running statistics, as in the reference).

    Memory: a chunk holds ``chunk_size`` per-example gradients, about
    ``chunk_size * num_params * 4`` bytes.

    Args:
      logits_fn, params, batch_stats, x, y, num_classes: as :func:`el2n_per_member`.
      chunk_size: examples per chunk.

    Returns:
      float scores ``[R, N]``; higher is harder.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from ltjax.methods import data_diet
        >>> params = {"w": jnp.stack([jnp.eye(3), 2 * jnp.eye(3)])}      # R = 2 members, stacked
        >>> def logits_fn(p, s, xb):      # one member's eval-mode logits of a batch [B, C]
        ...     return xb @ p["w"]
        >>> x, y = np.eye(3, dtype=np.float32), np.array([0, 1, 0], np.int32)   # N = 3
        >>> per_member = data_diet.grand_per_member(logits_fn, params, {}, x, y, num_classes=3)
        >>> per_member.shape                                # [R, N]
        (2, 3)
        >>> el2n = data_diet.el2n_per_member(logits_fn, params, {}, x, y, num_classes=3)
        >>> bool(jnp.allclose(per_member, el2n))  # a linear net on one-hot inputs: GraNd = EL2N
        True
    """
    def one(p: PyTree, s: PyTree, xb: jax.Array, yb: jax.Array) -> jax.Array:
        def loss(q: PyTree, xi: jax.Array, yi: jax.Array) -> jax.Array:
            logits = logits_fn(q, s, xi[None])
            _check_logits(logits, num_classes)
            return _cross_entropy(logits, yi[None])[0]

        grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(p, xb, yb)
        squares = [jnp.sum(jnp.square(g).reshape(g.shape[0], -1), axis=1)
                   for g in jax.tree.leaves(grads)]
        return jnp.sqrt(sum(squares[1:], squares[0]))

    return _chunked(one, params, batch_stats, x, y, num_classes=num_classes,
                    chunk_size=chunk_size)


def grand_scores(
    logits_fn: LogitsFn, params: PyTree, batch_stats: PyTree, x: Any, y: Any, *,
    num_classes: int, chunk_size: int = 128,
) -> jax.Array:
    """GraNd averaged over the R members, ``[N]`` (:func:`grand_per_member`'s mean).

    Paul et al. 2021 score GraNd at initialisation over 10 runs. Kirsch 2023
    (arXiv 2303.14753) finds that GraNd at init does no better than random and
    tracks the input norm: for softmax regression it is exactly
    ``EL2N * sqrt(||x||^2 + 1)``.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from ltjax.methods import data_diet
        >>> params = {"w": jnp.stack([jnp.eye(3), 2 * jnp.eye(3)])}      # R = 2 members, stacked
        >>> def logits_fn(p, s, xb):      # one member's eval-mode logits of a batch [B, C]
        ...     return xb @ p["w"]
        >>> x, y = np.eye(3, dtype=np.float32), np.array([0, 1, 0], np.int32)   # N = 3
        >>> scores = data_diet.grand_scores(logits_fn, params, {}, x, y, num_classes=3)  # [N]
        >>> [round(float(v), 4) for v in scores]
        [0.39, 0.39, 1.0972]
    """
    return grand_per_member(logits_fn, params, batch_stats, x, y, num_classes=num_classes,
                            chunk_size=chunk_size).mean(axis=0)


def _chunked(
    one: Callable[[PyTree, PyTree, jax.Array, jax.Array], jax.Array], params: PyTree,
    batch_stats: PyTree, x: Any, y: Any, *, num_classes: int, chunk_size: int,
) -> jax.Array:
    """``one(member params, member stats, x chunk, y chunk) -> [B]`` over members and chunks."""
    num_members = _num_members(params, batch_stats)
    num_classes = _positive_int(num_classes, "num_classes", minimum=2)
    chunk_size = _positive_int(chunk_size, "chunk_size")
    n, labels = _check_examples(x, y, num_classes)
    chunk = min(chunk_size, n)

    @jax.jit
    def members(p: PyTree, s: PyTree, xb: jax.Array, yb: jax.Array) -> jax.Array:
        return jax.lax.map(lambda ps: one(ps[0], ps[1], xb, yb), (p, s))

    out = []
    for start in range(0, n, chunk):
        xb = jnp.asarray(x[start:start + chunk])
        yb = jnp.asarray(labels[start:start + chunk])
        pad = chunk - xb.shape[0]
        if pad:  # repeat the last example: one compiled shape, finite values
            xb = jnp.concatenate([xb, jnp.repeat(xb[-1:], pad, axis=0)])
            yb = jnp.concatenate([yb, jnp.repeat(yb[-1:], pad, axis=0)])
        out.append(members(params, batch_stats, xb, yb)[:, :chunk - pad])
    scores = jnp.concatenate(out, axis=1)
    assert scores.shape == (num_members, n), scores.shape
    return scores


# --------------------------------------------------------------------------- forgetting


def forgetting_counts(correct: Any, *, presented: Any | None = None) -> np.ndarray:
    """Forgetting events per example (Toneva et al. 2019), as the data diet's reference counts.

    Paul et al. 2021 compare EL2N with forgetting scores; the reference's
    ``forgetting.py`` updates, after every step, the examples of the batch:
    an example is forgotten when it was correct at its previous presentation
    and is incorrect now (the state before the first presentation counts as
    incorrect, so a first presentation is never a forgetting event); an
    example never classified correctly scores ``+inf``. Correctness is the
    in-batch (train-mode, augmented) prediction of the step, recorded by the
    caller.

    Args:
      correct: bool ``[T, N]``: ``correct[t, i]`` whether example i was
        classified correctly at its presentation t.
      presented: optional bool ``[T, N]``: which examples row t presented (a
        step's batch); entries not presented are skipped, the previous
        presentation carries over. ``None``: every example at every row (e.g.
        one row per epoch).

    Returns:
      float64 ``[N]``: the number of correct -> incorrect transitions, ``inf``
      where never correct. Lower is easier; an unforgettable example scores 0.

    Example:
        >>> import numpy as np
        >>> from ltjax.methods.data_diet import forgetting_counts
        >>> forgetting_counts(np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], bool))
        array([ 1.,  0., inf])
    """
    correct = np.asarray(correct)
    if correct.ndim != 2 or correct.dtype != np.bool_:
        raise ValueError(f"correct must be a bool array [T, N], got {_describe(correct)}")
    if presented is None:
        presented = np.ones_like(correct)
    presented = np.asarray(presented)
    if presented.shape != correct.shape or presented.dtype != np.bool_:
        raise ValueError(f"presented must be a bool array of correct's shape {correct.shape}, "
                         f"got {_describe(presented)}")
    previous = np.zeros(correct.shape[1], bool)
    counts = np.zeros(correct.shape[1], np.float64)
    for now, shown in zip(correct, presented, strict=True):
        counts += shown & previous & ~now
        previous = np.where(shown, now, previous)
    ever = np.any(correct & presented, axis=0)
    return np.where(ever, counts, np.inf)


# --------------------------------------------------------------------------- selection


def select(
    scores: Any, kept: int, *, mode: str = "hardest", offset: int = 0,
    key: jax.Array | None = None,
) -> np.ndarray:
    """Exactly ``kept`` example indices, sorted ascending (int32 ``[kept]``).

    Paul et al. 2021's subsets (reference ``data.py``):

    - ``'hardest'``: the ``kept`` highest scores after skipping the ``offset``
      highest (ranks ``offset .. offset + kept - 1`` from the top). The
      reference's offset subset is the window ``argsort(scores)[o : o + kept]``
      counted from the *lowest* score; the same window is
      ``offset = N - kept - o`` here, and ``offset=0`` is the reference's
      ``keep_max_scores``.
    - ``'easiest'``: the ``kept`` lowest scores after skipping the ``offset``
      lowest (``offset=0`` is ``keep_min_scores``; ``offset=o`` is the
      reference's window at ``o``).
    - ``'random'``: ``kept`` distinct indices drawn with ``key`` (the reference
      draws with a NumPy seed); ``offset`` does not apply and is ignored.

    Ties are broken by position (the lower index counts as harder for
    ``'hardest'`` and as easier for ``'easiest'``), so the selection is
    deterministic. ``+inf`` scores (:func:`forgetting_counts`) rank highest.

    Args:
      scores: float ``[N]``, higher is harder; no NaN.
      kept: the number of examples to keep, in ``[1, N]``.
      mode: ``'hardest'``, ``'easiest'`` or ``'random'``.
      offset: ranked examples skipped from the chosen end, ``>= 0`` with
        ``offset + kept <= N``.
      key: a JAX key, required for ``'random'``.

    Returns:
      int32 indices ``[kept]`` into the scored examples, sorted ascending.

    Example:
        >>> import numpy as np
        >>> from ltjax.methods.data_diet import select
        >>> select(np.array([0.1, 0.9, 0.5, 0.7]), 2, mode="hardest")
        array([1, 3], dtype=int32)
        >>> select(np.array([0.1, 0.9, 0.5, 0.7]), 2, offset=1)   # skip the very hardest
        array([2, 3], dtype=int32)
    """
    scores = np.asarray(jax.device_get(scores))
    if scores.ndim != 1 or not np.issubdtype(scores.dtype, np.number):
        raise ValueError(f"scores must be a 1-D numeric array [N], got {_describe(scores)}")
    if np.isnan(scores).any():
        raise ValueError(f"scores must not contain NaN, got {int(np.isnan(scores).sum())} NaN")
    n = scores.shape[0]
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    kept = _positive_int(kept, "kept")
    if kept > n:
        raise ValueError(f"kept must be at most the number of scores ({n}), got {kept}")
    offset = _positive_int(offset, "offset", minimum=0)
    if mode == "random":
        if key is None:
            raise ValueError("key must be a JAX key for mode='random', got None")
        chosen = np.asarray(jax.random.permutation(key, n))[:kept]
    else:
        if offset + kept > n:
            raise ValueError(f"offset + kept must be at most the number of scores ({n}), "
                             f"got offset={offset} + kept={kept}")
        # Ranks offset .. offset + kept - 1 from the chosen end: the top offset + kept
        # without the top offset (ltjax.core.topk.host_mask; ties: the lower index first).
        ranked = scores if mode == "hardest" else -scores
        window = (topk.host_mask(ranked, offset + kept, ties="first")
                  & ~topk.host_mask(ranked, offset, ties="first"))
        chosen = np.flatnonzero(window)
    return np.sort(chosen).astype(np.int32)


# --------------------------------------------------------------------------- diagnostics


def noise_precision(scores: Any, corrupted: Any, *, top: int | None = None) -> dict[str, float]:
    """How well the top-scored examples find the corrupted labels: precision and recall.

    Paul et al. 2021 (Section 5, Figure 5): with label noise, the highest EL2N
    scores are mostly the corrupted examples. The top set is :func:`select`'s
    ``'hardest'`` ``top`` examples (ties by position), by default as many as
    there are corrupted ones (the top 10 % when 10 % is corrupted), where
    precision equals recall.

    Args:
      scores: float ``[N]``, higher is harder; no NaN.
      corrupted: the indices of the corrupted examples, distinct, in ``[0, N)``
        (at least one).
      top: the size of the top set, in ``[1, N]``; None: ``len(corrupted)``.

    Returns:
      ``{'top': k, 'top_share': k / N, 'precision': hits / k, 'recall': hits /
      len(corrupted)}``, where ``hits`` counts corrupted examples in the top k.

    Example:
        >>> import numpy as np
        >>> from ltjax.methods.data_diet import noise_precision
        >>> noise_precision(np.array([0.9, 0.1, 0.8, 0.2]), [0, 3])
        {'top': 2, 'top_share': 0.5, 'precision': 0.5, 'recall': 0.5}
    """
    scores = np.asarray(jax.device_get(scores))
    corrupted = np.asarray(corrupted)
    n = scores.shape[0] if scores.ndim == 1 else 0
    if corrupted.ndim != 1 or corrupted.size == 0 or not np.issubdtype(corrupted.dtype,
                                                                         np.integer):
        raise ValueError(f"corrupted must be a non-empty 1-D int array of indices, got "
                         f"{_describe(corrupted)}")
    if np.unique(corrupted).size != corrupted.size or corrupted.min() < 0 or (
            corrupted.max() >= n):
        raise ValueError(f"corrupted must hold distinct indices in [0, N={n})")
    k = corrupted.size if top is None else _positive_int(top, "top")
    hits = np.isin(select(scores, k, mode="hardest"), corrupted).sum()
    return {"top": int(k), "top_share": k / n, "precision": float(hits / k),
            "recall": float(hits / corrupted.size)}


def spearman(a: Any, b: Any) -> float:
    """Spearman's rank correlation of two samples ``[N]``: Pearson's of their ranks.

    Tied values get the average of the ranks they span
    (``scipy.stats.spearmanr``, after checks on the arguments). Kirsch 2023
    (arXiv 2303.14753) uses it to show
    that GraNd at initialisation tracks the input norm ``||x||``
    (:func:`input_norms`), against Paul et al. 2021's reading of it as
    example difficulty.

    Args:
      a: numbers ``[N]``, ``N >= 2``, no NaN.
      b: numbers ``[N]``.

    Returns:
      the correlation in ``[-1, 1]``; NaN if either sample is constant.

    Example:
        >>> from ltjax.methods.data_diet import spearman
        >>> # ranks [1, 2.5, 2.5, 4] and [1, 3, 2, 4]
        >>> round(spearman([1, 2, 2, 4], [10, 30, 20, 40]), 4)
        0.9487
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size < 2:
        raise ValueError(f"a and b must be 1-D of one length >= 2, got shapes {a.shape}, "
                         f"{b.shape}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("a and b must not contain NaN")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(a, b).statistic)


def input_norms(x: Any, mean: Any, std: Any, *, chunk_size: int = 4096) -> np.ndarray:
    """``||(x - mean) / std||_2`` per example ``[N]``: the norm of the input the model sees.

    Kirsch 2023's check of GraNd at initialisation (see :func:`spearman`);
    computed on the host in float32, ``chunk_size`` examples at a time.

    Args:
      x: inputs ``[N, ...]``.
      mean: per-channel mean, broadcast on the trailing axes (``Dataset.mean``).
      std: per-channel std, likewise.
      chunk_size: examples per chunk.

    Example:
        >>> import numpy as np
        >>> from ltjax.methods.data_diet import input_norms
        >>> norms = input_norms(np.ones((2, 3)), np.zeros(3), np.ones(3))  # [sqrt(3), sqrt(3)]
        >>> norms.shape, round(float(norms[0]), 4)
        ((2,), 1.7321)
    """
    x = np.asarray(x)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    out = np.empty(x.shape[0], np.float32)
    for start in range(0, x.shape[0], chunk_size):
        chunk = (x[start:start + chunk_size].astype(np.float32) - mean) / std
        out[start:start + chunk_size] = np.linalg.norm(chunk.reshape(len(chunk), -1), axis=1)
    return out


# --------------------------------------------------------------------------- checks


def _check_logits(logits: jax.Array, num_classes: int) -> None:
    if logits.ndim != 2 or logits.shape[-1] != num_classes:
        raise ValueError(f"logits_fn must return logits [B, num_classes={num_classes}], "
                         f"got shape {logits.shape}")


def _num_members(params: PyTree, batch_stats: PyTree) -> int:
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("params must have at least one array leaf, stacked [R, ...]")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    stat_sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None
                  for leaf in jax.tree.leaves(batch_stats)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError("params must be stacked over members: every leaf [R, ...] with one R, "
                         f"got leading sizes {sorted(sizes, key=str)}")
    if stat_sizes - sizes:
        raise ValueError(f"batch_stats must be stacked like params ([R={next(iter(sizes))}, "
                         f"...]), got leading sizes {sorted(stat_sizes, key=str)}")
    return sizes.pop()


def _check_examples(x: Any, y: Any, num_classes: int) -> tuple[int, np.ndarray]:
    labels = np.asarray(jax.device_get(y))
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"y must be integer labels [N], got {_describe(labels)}")
    n = labels.shape[0]
    if np.ndim(x) < 1 or np.shape(x)[0] != n:
        raise ValueError(f"x must have one row per label ([N={n}, ...]), got shape "
                         f"{np.shape(x)}")
    if n == 0:
        raise ValueError("x and y must hold at least one example, got N=0")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"y must lie in [0, num_classes={num_classes}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    return n, labels


def _positive_int(value: Any, argument: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{argument} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{argument} must be an int >= {minimum}, got {value}")
    return int(value)


def _describe(a: np.ndarray) -> str:
    return f"shape {a.shape} dtype {a.dtype}"
