"""SupSup: supermasks in superposition (Wortsman et al. 2020), and PermutedMNIST tasks.

Wortsman, Ramanujan, Liu, Kembhavi, Rastegari, Yosinski & Farhadi 2020,
"Supermasks in Superposition" (NeurIPS 2020); reference RAIVNLab/supsup@6a31878
(``models/modules.py``, ``models/module_util.py``, ``adaptors.py``,
``data/mnist.py``, ``experiments/GNu/MNISTPerm/LeNet-250-tasks/supsup_h.py``).

One network of fixed random weights ``W`` (the signed Kaiming constant
``sign(w) * sqrt(2 / fan_in)``, :func:`ltjax.methods.supermasks.signed_constant`)
serves every task; task ``i`` trains only its own score tensor ``S_i`` and
uses ``W * M_i``. Masks (:func:`task_masks`):

- ``'threshold'`` (the reference's ``FastMultitaskMaskConv``, used in its
  GNu PermutedMNIST runs): ``M = 1[S >= 0]``, straight-through to ``S``
  (``GetSubnetFast``: ``dL/dS = W * dL/dW_eff``);
- ``'top_k'`` (``MultitaskMaskConv``, its GG runs): per layer the
  ``ceil(density * n)`` entries of the highest ``|S|`` (edge-popup's mask,
  :func:`ltjax.core.topk.mask`, ties by position; the reference sorts),
  straight-through to ``|S|``.

When the task is not given, the tasks' masks are superposed,
``W_eff = W * sum_i alpha_i M_i`` (:func:`superpose`), and the task is the
one whose ``alpha_i`` most decreases the entropy ``H`` of the outputs at
``alpha_i = 1/T`` (:func:`infer_task`: ``argmin_i dH/dalpha_i``, one forward
and one backward pass), or, in the binary variant (:func:`infer_task_binary`),
the survivor of repeatedly keeping the tasks whose gradient is at most the
median. The gradient is ``dH/dalpha_i = <grad_{W_eff} H, W * M_i>`` summed
over layers. Facts of the reference kept here:

- ``H`` is the mean softmax entropy of ``logits[:data_to_repeat]``, which is
  the *first example of the batch only* in its PermutedMNIST configs
  (``data_to_repeat = 1``); ``first_only=True`` does that, the default
  (``False``) averages over the whole batch (the paper's description). The
  task inferred is applied to the whole batch;
- ties of the gradient go to the lowest task index (``torch.min``'s and
  ``jnp.argmin``'s rule);
- the binary variant's median of an even count is the lower middle value
  (``torch.median``), and it stops after ``floor(log2 T) + 1`` rounds (the
  reference's guard; here the lowest gradient among the survivors then wins);
- PermutedMNIST (``data/mnist.py``): task ``i``'s pixels are permuted by
  ``np.random.seed(i + seed); np.random.permutation(784)``, so *task 0 is a
  random permutation too*, not the identity (:func:`pixel_permutations`,
  ``identity_first=False``; our permutations come from a JAX key, not
  NumPy's global seed). The reference permutes normalized pixels; with one
  scalar mean and std (MNIST) that equals permuting raw ones.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from ltjax.core import masking
    >>> from ltjax.methods import supsup
    >>> weights = {"Dense_0": {"kernel": jnp.arange(12.0).reshape(4, 3) - 6}}   # fixed weights
    >>> selection = masking.prunable(weights)
    >>> def apply_fn(params, x):            # e.g. model.apply({"params": p}, x, train=False)
    ...     return x.reshape(x.shape[0], -1) @ params["Dense_0"]["kernel"]
    >>> scores = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(1), (3, 4, 3))}}
    >>> masks = jax.vmap(lambda s: supsup.task_masks(s, selection))(scores)   # [T, ...]
    >>> perms = supsup.pixel_permutations(jax.random.key(0), 3, 4)   # 3 tasks of 2 x 2 images
    >>> x = supsup.permute_pixels(jnp.ones((2, 2, 2, 1)), perms[1])    # a batch of task 1
    >>> task = supsup.infer_task(apply_fn, weights, masks, x, prunable=selection)
    >>> task.shape, 0 <= int(task) < 3     # the task whose mask makes the net most confident
    ((), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import topk, tree
from ltjax.engine import reparam
from ltjax.methods import supermasks

PyTree = Any

#: The mask kinds of :func:`task_masks` and :func:`task_supermask`.
MASK_KINDS = ("threshold", "top_k")


# --------------------------------------------------------------------------- permuted tasks

def num_positions(input_shape: tuple[int, ...]) -> int:
    """The pixel positions one permutation acts on: ``H * W`` of ``[H, W, C]``, else all features.

    Example:
        >>> from ltjax.methods.supsup import num_positions
        >>> num_positions((28, 28, 1)), num_positions((40,))
        (784, 40)
    """
    shape = tuple(int(d) for d in input_shape)
    return math.prod(shape[:-1]) if len(shape) == 3 else math.prod(shape)


def pixel_permutations(key: jax.Array, num_tasks: int, num_pixels: int, *,
                       identity_first: bool = False) -> jax.Array:
    """The pixel permutation of each task of a PermutedMNIST-style sequence, ``[T, D]`` int32.

    Task ``t`` is ``jax.random.permutation(fold_in(key, t), num_pixels)``, so
    a task's permutation does not depend on how many tasks there are. As in
    the reference (``data/mnist.py``), task 0 is a random permutation too;
    ``identity_first=True`` makes it the identity (plain MNIST first, as some
    papers do).

    Args:
      key: the tasks' key.
      num_tasks: T >= 1.
      num_pixels: D, the positions permuted (:func:`num_positions`).
      identity_first: task 0 unpermuted.

    Raises:
      ValueError: ``num_tasks`` or ``num_pixels`` below 1.

    Example:
        >>> import jax
        >>> from ltjax.methods import supsup
        >>> supsup.pixel_permutations(jax.random.key(0), 3, 784).shape
        (3, 784)
    """
    if num_tasks < 1 or num_pixels < 1:
        raise ValueError(f"num_tasks and num_pixels must be >= 1, got {num_tasks}, {num_pixels}")
    perms = jax.vmap(lambda t: jax.random.permutation(jax.random.fold_in(key, t), num_pixels))(
        jnp.arange(num_tasks, dtype=jnp.uint32)).astype(jnp.int32)
    if identity_first:
        perms = perms.at[0].set(jnp.arange(num_pixels, dtype=jnp.int32))
    return perms


def permute_pixels(x: jax.Array, permutation: jax.Array) -> jax.Array:
    """``x`` ``[B, H, W, C]`` (or ``[B, D]``) with its pixel positions permuted.

    Output pixel ``j`` is input pixel ``permutation[j]`` (row-major positions;
    the channels of a pixel move together), as the reference's
    ``x.flatten()[perm]``.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.methods import supsup
        >>> x = jnp.arange(4.0).reshape(1, 2, 2, 1)
        >>> supsup.permute_pixels(x, jnp.array([3, 2, 1, 0]))[0, :, :, 0]
        Array([[3., 2.],
               [1., 0.]], dtype=float32)
    """
    n = x.shape[0]
    flat = x.reshape(n, -1, x.shape[-1]) if x.ndim == 4 else x.reshape(n, -1)
    if flat.shape[1] != permutation.shape[-1]:
        raise ValueError(f"permutation of {permutation.shape[-1]} positions for inputs of shape "
                         f"{x.shape[1:]} ({flat.shape[1]} positions)")
    return jnp.take(flat, permutation, axis=1).reshape(x.shape)


class PermutedInput(nn.Module):
    """``model`` on inputs whose pixels are permuted by a ``permutation`` param.

    The permutation is a float32 param ``[D]`` holding integer indices (the
    identity at init), so each member of one executor program can carry its
    own task's permutation in its frozen tree (:func:`task_supermask` leaves
    non-prunable leaves frozen); the model's params sit under ``'model'``.
    Permuting the normalized input equals permuting raw pixels for datasets
    normalized per channel (every ltjax image dataset).

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.methods import supsup
        >>> wrapped = supsup.PermutedInput(model=models.create("mlp", widths=(4,), use_bias=False))
        >>> params, _ = models.init(wrapped, jax.random.key(0), (2, 2, 1))
        >>> sorted(params), params["permutation"]       # the identity at init
        (['model', 'permutation'], Array([0., 1., 2., 3.], dtype=float32))
    """

    model: nn.Module

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        size = num_positions(x.shape[1:])
        perm = self.param("permutation", lambda _: jnp.arange(size, dtype=jnp.float32))
        perm = jax.lax.stop_gradient(perm)
        return self.model(permute_pixels(x, jnp.round(perm).astype(jnp.int32)), train=train)


# --------------------------------------------------------------------------- masks

def _check_kind(kind: str) -> None:
    if kind not in MASK_KINDS:
        raise ValueError(f"kind must be one of {MASK_KINDS}, got {kind!r}")


def task_masks(scores: PyTree, prunable: PyTree, *, kind: str = "threshold",
               density: float = 0.5) -> PyTree:
    """One task's bool masks from its scores (params' structure; all-True off prunable leaves).

    ``'threshold'``: ``S >= 0`` (GNu's fast masks); ``'top_k'``: per layer the
    ``ceil(density * n)`` entries of the highest ``|S|`` (ties by position).

    Raises:
      ValueError: an unknown ``kind``, ``density`` outside (0, 1].

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.methods import supsup
        >>> supsup.task_masks({"k": jnp.array([[-0.1, 0.0], [0.2, -0.3]])}, {"k": True})
        {'k': Array([[False,  True],
                [ True, False]], dtype=bool)}
    """
    _check_kind(kind)
    supermasks.kept_count(1, density)  # validates density

    def one(s: jax.Array, f: bool) -> jax.Array:
        if not f:
            return jnp.ones(jnp.shape(s), bool)
        if kind == "threshold":
            return s >= 0
        return topk.mask(jnp.abs(s), supermasks.kept_count(int(np.size(s)), density))

    return jax.tree.map(one, scores, prunable)


def task_supermask(prunable: PyTree, *, kind: str = "threshold",
                   density: float = 0.5) -> reparam.Reparam:
    """One SupSup task (its scores over the fixed signed-constant weights) as a Reparam.

    The trainable tree holds the task's scores (``kaiming_uniform(a=sqrt(5))``
    on prunable leaves, zeros elsewhere, as :func:`ltjax.methods.supermasks.edge_popup`),
    the frozen tree ``{'weights', 'kept'}`` the signed Kaiming constant of the
    member's init and the per-layer kept counts (used by ``'top_k'`` only).
    Every non-prunable leaf (biases, :class:`PermutedInput`'s permutation) is
    taken from the frozen weights. The forward pass uses ``W * M``:

    - ``'threshold'``: ``M = 1[S >= 0]``, ``dL/dS = W * dL/dW_eff`` (identity STE);
    - ``'top_k'``: edge-popup's mask and STE to ``|S|``
      (``dL/dS = sign(S) * W * dL/dW_eff``).

    To share one network across tasks, give every task's member the same
    ``frozen['weights']`` (as :func:`ltjax.studies.supsup.run_supsup` does).

    Raises:
      ValueError: an unknown ``kind``, ``density`` outside (0, 1].

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.core import masking
        >>> from ltjax.methods import supsup
        >>> wrapped = supsup.PermutedInput(model=models.create("mlp", widths=(4,), use_bias=False))
        >>> params, _ = models.init(wrapped, jax.random.key(0), (2, 2, 1))
        >>> r = supsup.task_supermask(masking.prunable(params))
        >>> scores, frozen = r.init(params, jax.random.key(1))
        >>> sorted(frozen)             # the shared signed-constant weights, the kept counts
        ['kept', 'weights']

        One task per member: ``Executor(PermutedInput(model=lenet), dataset, recipe,
        reparam=task_supermask(selection))``.
    """
    _check_kind(kind)
    base = supermasks.edge_popup(prunable, density=density, weight_init="signed_constant")
    name = f"supsup(kind={kind!r}" + (f", density={density!r})" if kind == "top_k" else ")")
    if kind == "top_k":
        return reparam.Reparam(name=name, init=base.init, apply=base.apply, labels=base.labels)

    def apply(trainable: PyTree, frozen: PyTree, key: jax.Array | None, *,
              train: bool) -> PyTree:
        del key, train

        def one(s: jax.Array, w: jax.Array, f: bool) -> jax.Array:
            if not f:
                return w
            mask = (jax.lax.stop_gradient(s) >= 0).astype(w.dtype)
            return w * (mask + (s - jax.lax.stop_gradient(s)).astype(w.dtype))

        return jax.tree.map(one, trainable, frozen["weights"], prunable)

    return reparam.Reparam(name=name, init=base.init, apply=apply, labels=base.labels)


def _check_task_masks(weights: PyTree, masks: PyTree) -> int:
    """The task count ``T`` of masks stacked ``[T, ...]`` over ``weights``' leaves (checked)."""
    tree.check_same_structure(masks, weights, name="masks", reference_name="weights",
                              leading_axes=1)
    names, leaves = tree.names(masks), jax.tree.leaves(masks)
    if not leaves:
        raise ValueError("masks must have at least one leaf")
    num_tasks = int(jnp.shape(leaves[0])[0])
    for name, leaf in zip(names, leaves, strict=True):
        if jnp.shape(leaf)[0] != num_tasks:
            raise ValueError(f"masks['{name}'] has {jnp.shape(leaf)[0]} tasks (leading axis) "
                             f"but masks['{names[0]}'] has {num_tasks}")
    return num_tasks


def superpose(weights: PyTree, masks: PyTree, alphas: jax.Array, *, prunable: PyTree) -> PyTree:
    """``W * sum_i alpha_i M_i`` on prunable leaves; other leaves of ``weights`` unchanged.

    Args:
      weights: the fixed weights (one network, no task axis).
      masks: the tasks' bool (or 0/1 float) masks stacked ``[T, ...]``.
      alphas: ``[T]`` task coefficients.
      prunable: static bools of the masked leaves.

    Raises:
      ValueError: a mask leaf that is not ``[T, *weight.shape]`` (never
        broadcast), leaves with different ``T``, or ``alphas`` not ``[T]``.
        Shapes only (static): also checked under ``jit`` / ``grad``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import supsup
        >>> weights = {"Dense_0": {"kernel": jnp.arange(12.0).reshape(4, 3) - 6}}   # fixed weights
        >>> selection = masking.prunable(weights)
        >>> def apply_fn(params, x):            # e.g. model.apply({"params": p}, x, train=False)
        ...     return x.reshape(x.shape[0], -1) @ params["Dense_0"]["kernel"]
        >>> scores = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(1), (3, 4, 3))}}
        >>> masks = jax.vmap(lambda s: supsup.task_masks(s, selection))(scores)   # [T, ...]
        >>> params_of_task_2 = supsup.superpose(weights, masks, jax.nn.one_hot(2, 3),
        ...                                     prunable=selection)
        >>> only_2 = jnp.where(masks["Dense_0"]["kernel"][2], weights["Dense_0"]["kernel"], 0)
        >>> bool(jnp.array_equal(params_of_task_2["Dense_0"]["kernel"], only_2))
        True
    """
    num_tasks = _check_task_masks(weights, masks)
    if tuple(jnp.shape(alphas)) != (num_tasks,):
        raise ValueError(f"alphas must have shape ({num_tasks},), one per task of masks, "
                         f"got {tuple(jnp.shape(alphas))}")

    def one(w: jax.Array, m: jax.Array, f: bool) -> jax.Array:
        if not f:
            return w
        return w * jnp.tensordot(alphas.astype(w.dtype), m.astype(w.dtype), axes=1)

    return jax.tree.map(one, weights, masks, prunable)


# --------------------------------------------------------------------------- task inference

def entropy(logits: jax.Array) -> jax.Array:
    """Mean softmax entropy of logits ``[B, C]`` (nats).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.methods import supsup
        >>> round(float(supsup.entropy(jnp.zeros((2, 4)))), 4)   # log 4
        1.3863
    """
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.sum(jnp.exp(log_p) * log_p, axis=-1))


def entropy_gradient(apply_fn: Callable[[PyTree, jax.Array], jax.Array], weights: PyTree,
                     masks: PyTree, x: jax.Array, *, prunable: PyTree,
                     first_only: bool = False, alphas: jax.Array | None = None) -> jax.Array:
    """``dH/dalpha`` ``[T]`` of the superposed net's output entropy, by ``jax.grad``.

    ``H`` is :func:`entropy` of ``apply_fn(superpose(weights, masks, alpha), x)``
    over the whole batch, or over its first row only (``first_only``, the
    reference's ``data_to_repeat = 1``: the logits of the whole batch are
    computed and sliced, as there). ``alphas`` default to ``1/T`` each.

    Args:
      apply_fn: ``(params, x) -> logits``.
      weights: the fixed weights.
      masks: the tasks' masks stacked ``[T, ...]``.
      x: a batch ``[B, ...]``.
      prunable: static bools of the masked leaves.
      first_only: the entropy of the first example only.
      alphas: where to take the gradient (default ``1/T``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import supsup
        >>> weights = {"Dense_0": {"kernel": jnp.arange(12.0).reshape(4, 3) - 6}}   # fixed weights
        >>> selection = masking.prunable(weights)
        >>> def apply_fn(params, x):            # e.g. model.apply({"params": p}, x, train=False)
        ...     return x.reshape(x.shape[0], -1) @ params["Dense_0"]["kernel"]
        >>> scores = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(1), (3, 4, 3))}}
        >>> masks = jax.vmap(lambda s: supsup.task_masks(s, selection))(scores)   # [T, ...]
        >>> g = supsup.entropy_gradient(apply_fn, weights, masks, jnp.ones((2, 4)),
        ...                             prunable=selection)
        >>> g.shape                                          # [T]
        (3,)
    """
    num_tasks = jax.tree.leaves(masks)[0].shape[0]
    if alphas is None:
        alphas = jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)

    def objective(a: jax.Array) -> jax.Array:
        logits = apply_fn(superpose(weights, masks, a, prunable=prunable), x)
        return entropy(logits[:1] if first_only else logits)

    return jax.grad(objective)(alphas)


def infer_task(apply_fn: Callable[[PyTree, jax.Array], jax.Array], weights: PyTree,
               masks: PyTree, x: jax.Array, *, prunable: PyTree,
               first_only: bool = False) -> jax.Array:
    """One-shot task inference: ``argmin_i dH/dalpha_i`` at ``alpha = 1/T`` (int32 scalar).

    Ties go to the lowest index. See :func:`entropy_gradient` for the arguments.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import supsup
        >>> weights = {"Dense_0": {"kernel": jnp.arange(12.0).reshape(4, 3) - 6}}   # fixed weights
        >>> selection = masking.prunable(weights)
        >>> def apply_fn(params, x):            # e.g. model.apply({"params": p}, x, train=False)
        ...     return x.reshape(x.shape[0], -1) @ params["Dense_0"]["kernel"]
        >>> scores = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(1), (3, 4, 3))}}
        >>> masks = jax.vmap(lambda s: supsup.task_masks(s, selection))(scores)   # [T, ...]
        >>> g = supsup.entropy_gradient(apply_fn, weights, masks, jnp.ones((2, 4)),
        ...                             prunable=selection)
        >>> task = supsup.infer_task(apply_fn, weights, masks, jnp.ones((2, 4)), prunable=selection)
        >>> bool(task == jnp.argmin(g))      # the steepest entropy descent
        True
    """
    grad = entropy_gradient(apply_fn, weights, masks, x, prunable=prunable,
                            first_only=first_only)
    return jnp.argmin(grad).astype(jnp.int32)


def infer_task_binary(apply_fn: Callable[[PyTree, jax.Array], jax.Array], weights: PyTree,
                      masks: PyTree, x: jax.Array, *, prunable: PyTree,
                      first_only: bool = False) -> jax.Array:
    """Binary task inference: keep the tasks with ``dH/dalpha_i <=`` their median until one is left.

    Each round puts ``alpha = 1/k`` on the ``k`` surviving tasks (0 on the
    others), takes the gradient, and keeps the survivors whose gradient is at
    most the median of the survivors' gradients (the lower middle one for an
    even ``k``, as ``torch.median``). After ``floor(log2 T) + 1`` rounds (the
    reference's guard against ties) the survivor of the lowest gradient wins.
    Jittable (a fixed number of rounds).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.core import masking
        >>> from ltjax.methods import supsup
        >>> weights = {"Dense_0": {"kernel": jnp.arange(12.0).reshape(4, 3) - 6}}   # fixed weights
        >>> selection = masking.prunable(weights)
        >>> def apply_fn(params, x):            # e.g. model.apply({"params": p}, x, train=False)
        ...     return x.reshape(x.shape[0], -1) @ params["Dense_0"]["kernel"]
        >>> scores = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(1), (3, 4, 3))}}
        >>> masks = jax.vmap(lambda s: supsup.task_masks(s, selection))(scores)   # [T, ...]
        >>> task = supsup.infer_task_binary(apply_fn, weights, masks, jnp.ones((2, 4)),
        ...                                 prunable=selection)
        >>> task.dtype, 0 <= int(task) < 3
        (dtype('int32'), True)
    """
    num_tasks = jax.tree.leaves(masks)[0].shape[0]
    rounds = int(math.floor(math.log2(num_tasks))) + 1 if num_tasks > 1 else 0

    def round_(_, carry):
        alive, _ = carry
        count = jnp.sum(alive)
        alphas = jnp.where(alive, 1.0 / count, 0.0).astype(jnp.float32)
        grad = entropy_gradient(apply_fn, weights, masks, x, prunable=prunable,
                                first_only=first_only, alphas=alphas)
        ranked = jnp.sort(jnp.where(alive, grad, jnp.inf))
        median = ranked[(count - 1) // 2]
        keep = alive & (grad <= median)
        return jnp.where(count > 1, keep, alive), jnp.where(alive, grad, jnp.inf)

    alive = jnp.ones((num_tasks,), bool)
    alive, last = jax.lax.fori_loop(0, rounds, round_, (alive, jnp.zeros((num_tasks,))))
    return jnp.argmin(jnp.where(alive, last, jnp.inf)).astype(jnp.int32)
