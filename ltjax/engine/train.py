"""One member's training: the pure step, evaluation and prediction.

- :func:`init_state` and :func:`train_steps`: one member. ``train_steps``
  runs ``num_steps`` steps as one ``lax.scan`` (or an unrolled loop). What is
  differentiated is the member's *trainable* tree, mapped to the model's
  params by a reparameterisation (:mod:`ltjax.engine.reparam`; identity by
  default). The IMP masks are a traced argument (a new pruning level does not
  re-trace); gradients are masked before the optimiser and params re-masked
  after it (:func:`ltjax.engine.optim.masked`), so momentum and weight decay cannot
  revive a pruned weight. Batches come from the device-resident data by
  indices drawn from the noise key and the step
  (:func:`ltjax.io.data.batch_indices`), so training resumes at any step.
- :func:`evaluate`, :func:`predict`, :func:`logits`,
  :func:`recompute_batch_stats`: one member's evaluation.

Many members as one program: :class:`ltjax.engine.executor.Executor`. The recipe,
schedules and optimisers live in :mod:`ltjax.engine.optim`.

Example:
    >>> import jax
    >>> from ltjax import models
    >>> from ltjax.engine import optim, train
    >>> model = models.create("mlp", widths=(8,), num_classes=3)
    >>> recipe = optim.Recipe(optimizer="sgd", learning_rate=0.1)
    >>> state = train.init_state(model, recipe, jax.random.key(0), (4,))
    >>> int(state.step), state.params["Dense_0"]["kernel"].shape
    (0, (4, 8))

    Training it on a dataset's device-resident split compiles a training
    program (not run here; ``dataset`` from :func:`ltjax.io.data.load`):

    ```python
    import functools
    arrays = jax.device_put(data.device_split(dataset.train, dataset))
    step_fn = functools.partial(train.train_steps, model, recipe, num_steps=100)
    state, losses = jax.jit(step_fn)(arrays, state, None, jax.random.key(1))
    ```
"""

from __future__ import annotations

import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ltjax import models
from ltjax.core import masking, rng
from ltjax.engine import optim
from ltjax.engine import reparam as reparam_lib
from ltjax.io import data

PyTree = Any

__all__ = ["TrainState", "cross_entropy", "evaluate", "fresh_opt_state", "init_state", "logits",
           "parse_steps", "predict", "recompute_batch_stats", "train_steps"]

_STEPS_RE = re.compile(r"^\s*(\d+)\s*(it|ep)\s*$")


def parse_steps(steps: str | int, *, steps_per_epoch: int) -> int:
    """Steps from an OpenLTH step string: ``'500it'`` or ``'2ep'`` (or an int).

    Example:
        >>> from ltjax.engine import train
        >>> train.parse_steps("2ep", steps_per_epoch=1000)
        2000
    """
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        return int(steps)
    match = _STEPS_RE.match(steps) if isinstance(steps, str) else None
    if match is None:
        raise ValueError(
            f"steps must be an int or a string like '500it' or '2ep', got {steps!r}"
        )
    count, unit = int(match.group(1)), match.group(2)
    return count if unit == "it" else count * steps_per_epoch


# --------------------------------------------------------------------------- state


@flax.struct.dataclass
class TrainState:
    """Everything a member's training carries; leaves get a ``[S]`` axis when stacked.

    Attributes:
      step: int32 steps taken (drives the schedule and the batch order).
      params: the trained tree. Under the identity reparameterisation (the
        default) these are the model's params (masked entries exactly zero);
        otherwise the reparameterisation's trainable tree (scores,
        thresholds, endpoints...).
      batch_stats: BatchNorm running statistics (``{}`` without BatchNorm).
      opt_state: the optax state of :func:`ltjax.engine.optim.make_optimizer`.
      frozen: the reparameterisation's frozen tree (``{}`` for the identity).
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    frozen: PyTree = flax.struct.field(default_factory=dict)


def _reparam(reparam: reparam_lib.Reparam | None) -> reparam_lib.Reparam:
    return reparam_lib.identity() if reparam is None else reparam


def fresh_opt_state(recipe: optim.Recipe, trainable: PyTree, *,
                    reparam: reparam_lib.Reparam | None = None) -> PyTree:
    """A fresh optimiser state of one member for its trainable tree.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.engine import optim, train
        >>> recipe = optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9)
        >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2))}}
        >>> opt_state = train.fresh_opt_state(recipe, params)   # e.g. after rewinding
        >>> len(jax.tree.leaves(opt_state))                      # one momentum buffer
        1
    """
    r = _reparam(reparam)
    labels = r.labels(trainable) if r.labels is not None else None
    return optim.make_optimizer(recipe, labels=labels, group_decay=r.group_decay).init(trainable)


def init_state(
    model: Any, recipe: optim.Recipe, key: jax.Array, input_shape: tuple[int, ...], *,
    reparam: reparam_lib.Reparam | None = None, reparam_args: PyTree | None = None,
) -> TrainState:
    """A fresh train state of one member from its ``init`` key.

    The model is initialised from ``key``; the reparameterisation's
    ``init`` gets ``rng.stream(key, 'reparam')`` and, when given, the
    member's ``reparam_args`` (:mod:`ltjax.engine.reparam`).
    """
    r = _reparam(reparam)
    params, batch_stats = models.init(model, key, input_shape)
    if r.is_identity:
        trainable, frozen = params, {}
    else:
        trainable, frozen = r.init(params, rng.stream(key, "reparam"),
                                   *(() if reparam_args is None else (reparam_args,)))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=trainable,
        batch_stats=batch_stats,
        opt_state=fresh_opt_state(recipe, trainable, reparam=r),
        frozen=frozen,
    )


def model_params(state: TrainState, masks: PyTree | None = None, *,
                 reparam: reparam_lib.Reparam | None = None,
                 key: jax.Array | None = None, train: bool = False) -> PyTree:
    """The model's params of one member's state (its reparameterisation applied, masked).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.engine import train
        >>> params = {"Dense_0": {"kernel": jnp.ones((2, 2))}}
        >>> state = train.TrainState(step=jnp.int32(0), params=params, batch_stats={},
        ...                          opt_state=())
        >>> masks = {"Dense_0": {"kernel": jnp.eye(2, dtype=bool)}}
        >>> train.model_params(state, masks)["Dense_0"]["kernel"]   # identity reparam, masked
        Array([[1., 0.],
               [0., 1.]], dtype=float32)

        Under another reparameterisation (``reparam=edge_popup``, say) the
        state's params are its trainable tree and this maps them to the model's.
    """
    r = _reparam(reparam)
    params = r.apply(state.params, state.frozen, key, train=train)
    return params if masks is None else masking.apply(params, masks)


# --------------------------------------------------------------------------- one member


def _forward(model, params, batch_stats, x, *, train: bool):
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
        if train:
            logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
            return logits, updates["batch_stats"]
    return model.apply(variables, x, train=train), batch_stats


def cross_entropy(
    logits: jax.Array, labels: jax.Array, *, label_smoothing: float | jax.Array = 0.0,
) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels (optional smoothing).

    ``label_smoothing`` may be traced (a member's value); the Python float 0
    takes the integer-label path.
    """
    if isinstance(label_smoothing, (int, float)) and not label_smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def train_steps(
    model: Any,
    recipe: optim.Recipe,
    arrays: data.DeviceSplit,
    state: TrainState,
    masks: PyTree | None,
    noise_key: jax.Array,
    *,
    num_steps: int,
    unroll: bool = False,
    hparams: optim.Hyperparams | None = None,
    reparam: reparam_lib.Reparam | None = None,
    subset: jax.Array | None = None,
    perms: jax.Array | None = None,
    perms_epoch: jax.Array | int | None = None,
) -> tuple[TrainState, jax.Array]:
    """``num_steps`` training steps of one member, as one ``lax.scan``.

    Step ``t`` trains on the batch :func:`ltjax.io.data.batch_indices` assigns to
    ``(noise_key, t)``, augmented with ``fold_in(stream(noise_key, 'augment'), t)``;
    the reparameterisation's key is ``fold_in(stream(noise_key, 'reparam'), t)``.
    The loss differentiated is the cross-entropy plus the
    reparameterisation's penalty; the returned losses are the cross-entropy.

    Args:
      model: a flax module (``apply(variables, x, train=...)``).
      recipe: the optimiser and schedule.
      arrays: the device-resident training split (:func:`ltjax.io.data.device_split`).
      state: the member's state.
      masks: bool masks with the model params' structure, or None (dense).
      noise_key: the member's ``noise`` stream key.
      num_steps: static number of steps.
      unroll: unroll the scan (conv nets on XLA:CPU; same numbers).
      hparams: this member's peak learning rate, weight decay and label
        smoothing (scalars, may be traced; ``label_smoothing=None`` means
        none); ``hparams=None`` takes the recipe's values.
      reparam: the reparameterisation (default identity).
      subset: int32 indices ``[n]`` into the split: the member trains on these
        examples only, its epochs being permutations of them
        (``subset[batch_indices(..., num_examples=n)]``; the data diet's pruned
        training sets). None: the whole split. The identity subset
        ``arange(N)`` gives the same batches as None.
      perms: the epochs' permutations of the window, ``[E, n]``
        (:func:`ltjax.io.data.batch_indices_in`: ``E = data.window_epochs(num_steps,
        n // batch_size)`` epochs from the start step's, of ``stream(noise_key,
        'order')``), computed once per epoch by a caller that trains in many
        calls; None: computed here. The same batches either way.
      perms_epoch: the epoch of ``perms[0]`` (default: the start step's); an
        earlier one when ``perms`` cover a longer window that holds this one's.

    Returns:
      The new state and the training loss of each step, ``[num_steps]``.
    """
    r = _reparam(reparam)
    peak = None if hparams is None else hparams.learning_rate
    decay = None if hparams is None else hparams.weight_decay
    if hparams is None:
        smoothing = recipe.label_smoothing
    else:  # None: no member smooths (a static zero, the integer-label loss)
        smoothing = 0.0 if hparams.label_smoothing is None else hparams.label_smoothing
    labels = r.labels(state.params) if r.labels is not None else None
    trainable_masks = None
    if masks is not None:
        trainable_masks = masks if r.is_identity else (
            r.trainable_masks(masks, state.params) if r.trainable_masks else None)
    order_key = rng.stream(noise_key, "order")
    augment_key = rng.stream(noise_key, "augment")
    reparam_key = rng.stream(noise_key, "reparam")
    if perms is None:
        indices = data.batch_indices(
            order_key, state.step, num_steps=num_steps,
            num_examples=arrays.y.shape[0] if subset is None else subset.shape[0],
            batch_size=recipe.batch_size,
        )
    else:
        indices = data.batch_indices_in(perms, state.step, num_steps=num_steps,
                                        batch_size=recipe.batch_size, first_epoch=perms_epoch)
    if subset is not None:
        indices = subset[indices]
    augment = recipe.augment and arrays.augment == "cifar"
    if trainable_masks is not None:
        state = state.replace(params=masking.apply(state.params, trainable_masks))

    def loss_fn(trainable, batch_stats, x, y, key):
        params = trainable if r.is_identity else model_params(  # identity: already masked
            state.replace(params=trainable), masks, reparam=r, key=key, train=True)
        logits, new_stats = _forward(model, params, batch_stats, x, train=True)
        loss = cross_entropy(logits, y, label_smoothing=smoothing).mean()
        objective = loss if r.penalty is None else loss + r.penalty(trainable, key)
        return objective, (loss, new_stats)

    def step_fn(state: TrainState, batch_index: jax.Array):
        x = arrays.x[batch_index]
        if augment:  # on raw pixels, so the padding is black as in torchvision
            x = data.augment_cifar(rng.step_key(augment_key, state.step), x.astype(jnp.float32))
        x = data.normalize(x, arrays.mean, arrays.std)
        y = arrays.y[batch_index]
        key = None if r.is_identity else rng.step_key(reparam_key, state.step)
        grads, (loss, batch_stats) = jax.grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, x, y, key)
        tx = optim.make_optimizer(
            recipe, learning_rate=optim.learning_rate_at(recipe, state.step, peak),
            weight_decay=decay, labels=labels, group_decay=r.group_decay, masks=trainable_masks)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1,
                                  params=optax.apply_updates(state.params, updates),
                                  batch_stats=batch_stats, opt_state=opt_state)
        return new_state, loss

    if not unroll:
        return jax.lax.scan(step_fn, state, indices)
    # A Python loop, not ``scan(unroll=True)``: the latter still wraps the body
    # in a one-trip while loop, and XLA:CPU runs convs inside loops ~30x slower.
    losses = []
    for i in range(num_steps):
        state, loss = step_fn(state, indices[i])
        losses.append(loss)
    return state, jnp.stack(losses)


def evaluate(
    model: Any, params: PyTree, batch_stats: PyTree, arrays: data.DeviceSplit, *,
    batch_size: int, unroll: bool = False,
) -> dict[str, jax.Array]:
    """Mean loss and accuracy of one replicate on a whole split.

    The split is read in fixed-size batches (``arrays`` padded to a multiple of
    ``batch_size`` by :func:`ltjax.io.data.device_split`); padding does not count.

    Returns:
      ``{'loss': scalar, 'accuracy': scalar}``.
    """
    num_examples = arrays.num_examples
    padded = arrays.y.shape[0]
    if padded % batch_size:
        raise ValueError(f"split of {padded} rows is not padded to batch_size={batch_size}")
    num_batches = padded // batch_size
    weights = (jnp.arange(padded) < num_examples).astype(jnp.float32)

    def body(carry, i):
        start = i * batch_size
        x = jax.lax.dynamic_slice_in_dim(arrays.x, start, batch_size)
        y = jax.lax.dynamic_slice_in_dim(arrays.y, start, batch_size)
        w = jax.lax.dynamic_slice_in_dim(weights, start, batch_size)
        logits, _ = _forward(model, params, batch_stats, data.normalize(x, arrays.mean, arrays.std),
                             train=False)
        loss_sum = jnp.sum(cross_entropy(logits, y) * w)
        correct = jnp.sum((jnp.argmax(logits, -1) == y) * w)
        return (carry[0] + loss_sum, carry[1] + correct), None

    zero = jnp.zeros((), jnp.float32)
    carry = (zero, zero)
    if unroll:  # no while loop around convs on XLA:CPU (see train_steps)
        for i in range(num_batches):
            carry, _ = body(carry, i)
    else:
        carry, _ = jax.lax.scan(body, carry, jnp.arange(num_batches))
    loss_sum, correct = carry
    return {"loss": loss_sum / num_examples, "accuracy": correct / num_examples}


def logits(model: Any, params: PyTree, batch_stats: PyTree, x: jax.Array, *,
           train: bool = False) -> jax.Array:
    """The model's logits on normalised inputs ``x`` ``[B, ...]``.

    With ``train=True`` BatchNorm layers use the batch's statistics (the
    updated running statistics are dropped). Jittable and differentiable.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax import models
        >>> from ltjax.engine import train
        >>> model = models.create("mlp", widths=(8,), num_classes=3)
        >>> params, batch_stats = models.init(model, jax.random.key(0), (4,))
        >>> x = jnp.zeros((2, 4))               # e.g. data.normalize(x, ds.mean, ds.std)
        >>> train.logits(model, params, batch_stats, x).shape      # [B, C]
        (2, 3)
    """
    return _forward(model, params, batch_stats, x, train=train)[0]


def predict(
    model: Any, params: PyTree, batch_stats: PyTree, arrays: data.DeviceSplit, *,
    batch_size: int, unroll: bool = False,
) -> jax.Array:
    """Logits ``[padded N, C]`` of one replicate on every row of a (padded) split.

    Read in batches like :func:`evaluate`; the rows past ``arrays.num_examples``
    are padding. Used for output-space ensembles.
    """
    padded = arrays.y.shape[0]
    if padded % batch_size:
        raise ValueError(f"split of {padded} rows is not padded to batch_size={batch_size}")

    def body(carry, i):
        x = jax.lax.dynamic_slice_in_dim(arrays.x, i * batch_size, batch_size)
        return carry, logits(model, params, batch_stats,
                             data.normalize(x, arrays.mean, arrays.std))

    num_batches = padded // batch_size
    if unroll:  # no while loop around convs on XLA:CPU (see train_steps)
        out = jnp.stack([body(None, i)[1] for i in range(num_batches)])
    else:
        _, out = jax.lax.scan(body, None, jnp.arange(num_batches))
    return out.reshape(padded, -1)


def recompute_batch_stats(
    model: Any, params: PyTree, batch_stats: PyTree, images: jax.Array | None = None, *,
    momentum: float = 0.9, batch_fn: Any = None, num_batches: int | None = None,
) -> PyTree:
    """BatchNorm statistics recomputed from scratch on ``images`` ``[K, B, ...]``.

    Each of the K batches is run in train mode from zero statistics, which
    gives ``(1 - momentum) * batch_statistic``; the result is the plain mean of
    the K batch statistics (torch's ``momentum=None`` cumulative average, as
    used to reset statistics after interpolation; biased batch variance, as
    flax computes it, where torch's running variance averages unbiased ones).
    ``momentum`` must be the BatchNorm layers' momentum (0.9 in every bundled
    model). Instead of ``images``, ``batch_fn(i) -> [B, ...]`` with
    ``num_batches`` builds batch i inside the loop (an epoch of batches is
    never held in memory at once).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax import models
        >>> from ltjax.engine import train
        >>> from ltjax.models.mlp import BatchNormMLP
        >>> model = BatchNormMLP(widths=(4,), num_classes=3)
        >>> params, batch_stats = models.init(model, jax.random.key(0), (4,))
        >>> images = jnp.arange(24.0).reshape(2, 3, 4)          # K = 2 batches of B = 3
        >>> stats = train.recompute_batch_stats(model, params, batch_stats, images)
        >>> jax.tree.map(jnp.shape, stats)
        {'BatchNorm_0': {'mean': (4,), 'var': (4,)}}
        >>> x = images.reshape(6, 4)                             # batches built in the loop
        >>> def batch_fn(i):                 # i is traced: a dynamic slice, not x[i * 3:...]
        ...     return jax.lax.dynamic_slice_in_dim(x, i * 3, 3)
        >>> again = train.recompute_batch_stats(model, params, batch_stats,
        ...                                     batch_fn=batch_fn, num_batches=len(x) // 3)
        >>> bool(jnp.allclose(again["BatchNorm_0"]["var"], stats["BatchNorm_0"]["var"]))
        True
    """
    if not batch_stats:
        return batch_stats
    if (images is None) == (batch_fn is None):
        raise ValueError("give either images [K, B, ...] or batch_fn with num_batches")
    if images is not None:
        num_batches, batch_fn = images.shape[0], images.__getitem__
    if not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be an int >= 1, got {num_batches!r}")
    zeros = jax.tree.map(jnp.zeros_like, batch_stats)

    def body(total, i):
        _, new_stats = _forward(model, params, zeros, batch_fn(i), train=True)
        return jax.tree.map(jnp.add, total, new_stats), None

    total, _ = jax.lax.scan(body, zeros, jnp.arange(num_batches))
    scale = 1.0 / ((1.0 - momentum) * num_batches)
    return jax.tree.map(lambda t: t * scale, total)
