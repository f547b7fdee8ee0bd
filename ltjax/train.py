"""Masked training and evaluation of many replicates as one jitted program.

The pieces, from the inside out:

- :class:`Recipe`: the optimiser and schedule of the LTH and LMC papers
  (SGD, momentum, Adam, coupled weight decay, linear warm-up, step drops).
- :func:`init_state` and :func:`train_steps`: one replicate. ``train_steps``
  runs ``num_steps`` masked SGD steps as one ``lax.scan``; the masks are a
  traced argument (a new pruning level does not re-trace), gradients are
  masked before the optimiser and params re-masked after it, so momentum and
  weight decay cannot revive a pruned weight. Batches come from the
  device-resident data by indices drawn from the noise key and the step
  (:func:`ltjax.data.batch_indices`), so training resumes at any step.
- :class:`Executor`: S replicates. The seed axis is sharded over the local
  devices with ``NamedSharding(Mesh(devices, ('seed',)), P('seed'))`` through
  ``shard_map``; inside a device the local seeds are either ``vmap``-ed or
  run one after another.

Executor strategies (measured on a 2-core CPU, FACTS.md, and
``benchmarks/train_throughput.py``):

=================  ===========================  ==================================
strategy            per-seed step loop           seeds on one device
=================  ===========================  ==================================
``'scan_vmap'``     rolled ``lax.scan``          ``vmap``
``'unrolled_loop'`` unrolled ``scan`` (few        Python-unrolled loop, one program
                    steps per call)
=================  ===========================  ==================================

``'auto'`` picks ``'unrolled_loop'`` for conv nets on CPU, where a conv in a
rolled scan is ~28x slower and vmapping conv seeds gives 0.25x, and
``'scan_vmap'`` otherwise (dense nets everywhere; convs on GPU/TPU). Every
strategy computes the same numbers (tests compare them).

Example:
    >>> dataset = data.load("digits")
    >>> model = models.create("lenet_300_100")
    >>> recipe = Recipe(optimizer="adam", learning_rate=1.2e-3, batch_size=60)
    >>> executor = Executor(model, dataset, recipe)
    >>> init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(0, 4))
    >>> state = executor.init(init_keys)
    >>> state, losses = executor.train(state, None, noise_keys, num_steps=100)
    >>> executor.evaluate(state, "test")["accuracy"]   # [4]
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ltjax import data, masking, models, rng, tree

PyTree = Any

STRATEGIES = ("auto", "scan_vmap", "unrolled_loop")
OPTIMIZERS = ("sgd", "adam")


# --------------------------------------------------------------------------- recipe


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """Hyperparameters of one training run (shared by all replicates).

    The learning rate is applied outside the optimiser state, as a function of
    the train state's step, so a run rewound to step k with a fresh optimiser
    resumes the schedule at k (Frankle et al. 2020).

    Attributes:
      optimizer: ``'sgd'`` (with ``momentum`` > 0: heavy-ball, torch's
        convention ``v = mu v + g``) or ``'adam'``.
      learning_rate: the peak learning rate.
      momentum: SGD momentum (ignored by Adam).
      nesterov: Nesterov momentum for SGD.
      weight_decay: coupled L2 decay added to the gradient (torch's
        ``weight_decay``, as OpenLTH uses).
      warmup_steps: linear warm-up ``lr * min(1, step / warmup_steps)``
        (OpenLTH's warm-up; step 0 has learning rate 0).
      lr_drop_steps: steps at which the learning rate is multiplied by
        ``lr_drop_factor`` (e.g. ResNet-20: ``(32000, 48000)``).
      lr_drop_factor: the drop factor (0.1 in the LTH/LMC recipes).
      batch_size: examples per step.
      label_smoothing: label smoothing of the cross-entropy (0 = none).
      augment: use the dataset's augmentation (CIFAR: crop + flip) if it has one.

    Example:
        >>> Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9,
        ...        weight_decay=1e-4, lr_drop_steps=(32000, 48000), batch_size=128)
    """

    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_drop_steps: tuple[int, ...] = ()
    lr_drop_factor: float = 0.1
    batch_size: int = 128
    label_smoothing: float = 0.0
    augment: bool = True

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        object.__setattr__(self, "lr_drop_steps", tuple(int(s) for s in self.lr_drop_steps))


def learning_rate_at(recipe: Recipe, step: jax.Array | int) -> jax.Array:
    """The learning rate of ``recipe`` at ``step`` (warm-up times step drops).

    Example:
        >>> learning_rate_at(Recipe(learning_rate=0.1, lr_drop_steps=(10,)), 10)
        Array(0.01, dtype=float32)
    """
    step = jnp.asarray(step)
    drops = sum((step >= s).astype(jnp.int32) for s in recipe.lr_drop_steps)
    lr = recipe.learning_rate * jnp.power(jnp.float32(recipe.lr_drop_factor), drops)
    if recipe.warmup_steps:
        lr = lr * jnp.minimum(1.0, step / recipe.warmup_steps)
    return jnp.asarray(lr, jnp.float32)


def make_optimizer(recipe: Recipe) -> optax.GradientTransformation:
    """The optax transform of ``recipe`` *without* the learning rate.

    Its updates point along the gradient; the step subtracts
    ``learning_rate_at(step) * update``.
    """
    parts = []
    if recipe.weight_decay:
        parts.append(optax.add_decayed_weights(recipe.weight_decay))
    if recipe.optimizer == "adam":
        parts.append(optax.scale_by_adam())
    elif recipe.momentum:
        parts.append(optax.trace(decay=recipe.momentum, nesterov=recipe.nesterov))
    return optax.chain(*parts)


_STEPS_RE = re.compile(r"^\s*(\d+)\s*(it|ep)\s*$")


def parse_steps(steps: str | int, *, steps_per_epoch: int) -> int:
    """Steps from an OpenLTH step string: ``'500it'`` or ``'2ep'`` (or an int).

    Example:
        >>> parse_steps("2ep", steps_per_epoch=1000)
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
    """Everything a replicate's training carries; leaves get a ``[S]`` axis when stacked.

    Attributes:
      step: int32 steps taken (drives the schedule and the batch order).
      params: the model's params (masked entries exactly zero).
      batch_stats: BatchNorm running statistics (``{}`` without BatchNorm).
      opt_state: the optax state of :func:`make_optimizer`.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree


def init_state(
    model: Any, recipe: Recipe, key: jax.Array, input_shape: tuple[int, ...],
) -> TrainState:
    """A fresh train state of one replicate from its ``init`` key."""
    params, batch_stats = models.init(model, key, input_shape)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=make_optimizer(recipe).init(params),
    )


# --------------------------------------------------------------------------- one replicate


def _forward(model, params, batch_stats, x, *, train: bool):
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
        if train:
            logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
            return logits, updates["batch_stats"]
    return model.apply(variables, x, train=train), batch_stats


def cross_entropy(
    logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0,
) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels (optional smoothing)."""
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_steps(
    model: Any,
    recipe: Recipe,
    arrays: data.DeviceSplit,
    state: TrainState,
    masks: PyTree | None,
    noise_key: jax.Array,
    *,
    num_steps: int,
    unroll: bool = False,
) -> tuple[TrainState, jax.Array]:
    """``num_steps`` masked training steps of one replicate, as one ``lax.scan``.

    Step ``t`` trains on the batch :func:`ltjax.data.batch_indices` assigns to
    ``(noise_key, t)``, augmented with ``fold_in(stream(noise_key, 'augment'), t)``.

    Args:
      model: a flax module (``apply(variables, x, train=...)``).
      recipe: the optimiser and schedule.
      arrays: the device-resident training split (:func:`ltjax.data.device_split`).
      state: the replicate's state.
      masks: bool masks with the params' structure, or None for dense training.
      noise_key: the replicate's ``noise`` stream key.
      num_steps: static number of steps.
      unroll: unroll the scan (conv nets on XLA:CPU; same numbers).

    Returns:
      The new state and the training loss of each step, ``[num_steps]``.
    """
    tx = make_optimizer(recipe)
    order_key = rng.stream(noise_key, "order")
    augment_key = rng.stream(noise_key, "augment")
    indices = data.batch_indices(
        order_key, state.step, num_steps=num_steps, num_examples=arrays.y.shape[0],
        batch_size=recipe.batch_size,
    )
    augment = recipe.augment and arrays.augment == "cifar"
    if masks is not None:
        state = state.replace(params=masking.apply(state.params, masks))

    def loss_fn(params, batch_stats, x, y):
        logits, new_stats = _forward(model, params, batch_stats, x, train=True)
        loss = cross_entropy(logits, y, label_smoothing=recipe.label_smoothing).mean()
        return loss, new_stats

    def step_fn(state: TrainState, batch_index: jax.Array):
        x = arrays.x[batch_index]
        if augment:  # on raw pixels, so the padding is black as in torchvision
            x = data.augment_cifar(rng.step_key(augment_key, state.step), x.astype(jnp.float32))
        x = data.normalize(x, arrays.mean, arrays.std)
        y = arrays.y[batch_index]
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, x, y
        )
        if masks is not None:
            grads = masking.apply(grads, masks)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        lr = learning_rate_at(recipe, state.step)
        params = jax.tree.map(lambda p, u: p - (lr * u).astype(p.dtype), state.params, updates)
        if masks is not None:
            params = masking.apply(params, masks)
        new_state = TrainState(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
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
    ``batch_size`` by :func:`ltjax.data.device_split`); padding does not count.

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
        >>> out = logits(model, params, {}, data.normalize(x, ds.mean, ds.std))  # [B, C]
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
    model: Any, params: PyTree, batch_stats: PyTree, images: jax.Array, *, momentum: float = 0.9,
) -> PyTree:
    """BatchNorm statistics recomputed from scratch on ``images`` ``[K, B, ...]``.

    Each of the K batches is run in train mode from zero statistics, which
    gives ``(1 - momentum) * batch_statistic``; the result is the plain mean of
    the K batch statistics (torch's ``momentum=None`` cumulative average, as
    used to reset statistics after interpolation; biased batch variance, as
    flax computes it). ``momentum`` must be the BatchNorm layers' momentum
    (0.9 in every bundled model).

    Example:
        >>> stats = recompute_batch_stats(model, params, batch_stats, images)
    """
    if not batch_stats:
        return batch_stats
    zeros = jax.tree.map(jnp.zeros_like, batch_stats)

    def body(total, x):
        _, new_stats = _forward(model, params, zeros, x, train=True)
        return jax.tree.map(jnp.add, total, new_stats), None

    total, _ = jax.lax.scan(body, zeros, images)
    scale = 1.0 / ((1.0 - momentum) * images.shape[0])
    return jax.tree.map(lambda t: t * scale, total)


# --------------------------------------------------------------------------- many replicates


def choose_strategy(params: PyTree, backend: str | None = None) -> str:
    """``'unrolled_loop'`` for conv nets on CPU, else ``'scan_vmap'`` (see module doc)."""
    backend = backend or jax.default_backend()
    return "unrolled_loop" if (models.is_conv(params) and backend == "cpu") else "scan_vmap"


def _map_local_seeds(fn: Callable, strategy: str, in_axes: tuple) -> Callable:
    """Map ``fn`` over the local seed block: vmap, or an unrolled Python loop."""
    if strategy == "scan_vmap":
        return jax.vmap(fn, in_axes=in_axes)

    def looped(*args):
        mapped = [a for a, ax in zip(args, in_axes, strict=True) if ax == 0]
        num_local = jax.tree.leaves(mapped)[0].shape[0]
        outs = []
        for i in range(num_local):
            outs.append(fn(*[tree.index(a, i) if ax == 0 else a
                             for a, ax in zip(args, in_axes, strict=True)]))
        return tree.stack(outs)

    return looped


class Executor:
    """Trains and evaluates S replicates of one model on one dataset as one program.

    The replicate (seed) axis is the leading axis of every state, mask and key
    argument; it is sharded over ``gcd(S, len(devices))`` devices.

    Args:
      model: a flax module from :mod:`ltjax.models`.
      dataset: a :class:`ltjax.data.Dataset`; its splits are put on the devices once.
      recipe: the training recipe.
      strategy: ``'auto'``, ``'scan_vmap'`` or ``'unrolled_loop'`` (module doc). A model
        whose ``materialize_inputs`` field is None (auto, the default) gets it
        switched on for ``'unrolled_loop'`` (identical numbers, faster on XLA:CPU).
      steps_per_call: steps per jitted call; default 500 for ``'scan_vmap'``
        and 1 for ``'unrolled_loop'`` (several unrolled steps per call add
        nothing on CPU, FACTS.md).
      eval_batch_size: rows per evaluation batch.
      devices: the devices of the seed mesh (default: all local devices).
    """

    def __init__(
        self, model: Any, dataset: data.Dataset, recipe: Recipe, *, strategy: str = "auto",
        steps_per_call: int | None = None, eval_batch_size: int = 1000,
        devices: list[jax.Device] | None = None,
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if recipe.batch_size > len(dataset.train):
            raise ValueError(
                f"batch_size={recipe.batch_size} is larger than the train split "
                f"({len(dataset.train)} examples) of {dataset.name!r}"
            )
        self.model = model
        self.dataset = dataset
        self.recipe = recipe
        self.devices = list(devices or jax.local_devices())
        abstract = jax.eval_shape(lambda k: init_state(model, recipe, k, dataset.input_shape),
                                  jax.random.key(0))
        self.strategy = choose_strategy(abstract.params) if strategy == "auto" else strategy
        if getattr(model, "materialize_inputs", False) is None:
            # "Auto": on for the unrolled CPU path (same numbers bit for bit, faster
            # conv steps on XLA:CPU: ltjax.models.common.materialize), off under vmap.
            self.model = model = model.clone(
                materialize_inputs=self.strategy == "unrolled_loop")
        self.steps_per_call = steps_per_call or (500 if self.strategy == "scan_vmap" else 1)
        self.eval_batch_size = eval_batch_size
        self.steps_per_epoch = len(dataset.train) // recipe.batch_size
        #: Shapes and dtypes of one replicate's state (no replicate axis).
        self.abstract_state = abstract
        self._host_splits = {"train": dataset.train, "validation": dataset.validation,
                             "test": dataset.test}

    # -- placement

    def mesh(self, num_replicates: int) -> Mesh:
        """The seed mesh for S replicates: ``gcd(S, len(devices))`` devices."""
        num_devices = math.gcd(num_replicates, len(self.devices))
        return _mesh(tuple(self.devices[:num_devices]))

    def padded_size(self, num_replicates: int) -> int:
        """S rounded up so every device of the mesh gets as many replicates.

        ``train`` and ``evaluate`` run ``padded_size(S)`` replicates (copies of
        the last one fill the gap) so that, e.g., 3 seeds use 2 devices rather
        than the ``gcd(3, 2) = 1`` the state is stored on; the copies are dropped.
        """
        used = min(num_replicates, len(self.devices))
        return -(-num_replicates // used) * used

    def seed_sharding(self, num_replicates: int) -> NamedSharding:
        """``NamedSharding(mesh, P('seed'))`` for arrays with a leading seed axis."""
        return NamedSharding(self.mesh(num_replicates), P("seed"))

    def shard(self, stacked: PyTree) -> PyTree:
        """Put a stacked tree (leading axis S) onto the seed mesh."""
        num = _num_replicates(stacked)
        return jax.device_put(stacked, self.seed_sharding(num))

    @functools.cache  # noqa: B019  (one executor per run; cache is tiny)
    def device_split(self, split: str, num_devices: int, for_eval: bool) -> data.DeviceSplit:
        """A split's arrays replicated on the first ``num_devices`` devices.

        For evaluation the rows are padded to a multiple of ``eval_batch_size``.
        """
        host = self._host_splits.get(split)
        if host is None:
            raise ValueError(
                f"split must be one of 'train', 'validation', 'test' with data in "
                f"{self.dataset.name!r}; got {split!r}"
            )
        pad_to = self.eval_batch_size if for_eval else 1
        mesh = _mesh(tuple(self.devices[:num_devices]))
        return jax.device_put(data.device_split(host, self.dataset, pad_to=pad_to),
                              NamedSharding(mesh, P()))

    # -- init

    @functools.cached_property
    def _init_fn(self) -> Callable:
        return jax.jit(jax.vmap(lambda k: init_state(self.model, self.recipe, k,
                                                     self.dataset.input_shape)))

    def init(self, init_keys: jax.Array, masks: PyTree | None = None) -> TrainState:
        """Fresh states ``[S]`` from ``init`` keys ``[S]`` (masked if masks ``[S]`` given)."""
        state = self._init_fn(init_keys)
        if masks is not None:
            masking.check(masks, self.abstract_state.params, leading_axes=1)
            state = state.replace(params=masking.apply(state.params, masks))
        return self.shard(state)

    # -- train

    def train(
        self, state: TrainState, masks: PyTree | None, noise_keys: jax.Array, *, num_steps: int,
    ) -> tuple[TrainState, np.ndarray]:
        """Advance every replicate by ``num_steps`` steps.

        Args:
          state: stacked states ``[S]`` (all at the same step).
          masks: stacked bool masks ``[S]`` or None (dense).
          noise_keys: ``noise`` keys ``[S]``.
          num_steps: steps to take.

        Returns:
          The new state and the mean training loss of each replicate, ``[S]``.

        Raises:
          FloatingPointError: a replicate's training loss became NaN or inf.
        """
        num = _num_replicates(state)
        if noise_keys.shape != (num,):
            raise ValueError(f"noise_keys must have shape ({num},), got {noise_keys.shape}")
        if masks is not None:
            masking.check(masks, self.abstract_state.params, leading_axes=1)
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        padded = self.padded_size(num)
        state, masks, noise_keys = jax.device_put(
            _pad((state, masks, noise_keys), num, padded), self.seed_sharding(padded))
        first_step = int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])
        loss_sums = np.zeros(num, np.float64)
        done = 0
        while done < num_steps:
            chunk = min(self.steps_per_call, num_steps - done)
            fn = _compiled_train(self, padded, chunk, masks is not None)
            state, losses = fn(state, masks, noise_keys)
            losses = np.asarray(losses, np.float64)[:num]
            if not np.all(np.isfinite(losses)):
                bad = sorted(set(np.nonzero(~np.isfinite(losses))[0].tolist()))
                raise FloatingPointError(
                    f"training loss is NaN/inf for replicate(s) {bad} between steps "
                    f"{first_step + done} and {first_step + done + chunk} "
                    f"(learning_rate={self.recipe.learning_rate}); lower the learning rate"
                )
            loss_sums += losses.sum(axis=1)
            done += chunk
        if padded != num:
            state = self.shard(jax.tree.map(lambda x: x[:num], state))
        return state, loss_sums / max(num_steps, 1)

    # -- evaluate

    def evaluate(self, state: TrainState, split: str) -> dict[str, np.ndarray]:
        """Loss and accuracy ``[S]`` of every replicate on ``split``."""
        return self.evaluate_params(state.params, state.batch_stats, split)

    def evaluate_params(self, params: PyTree, batch_stats: PyTree,
                        split: str) -> dict[str, np.ndarray]:
        """Loss and accuracy ``[S]`` of stacked ``params`` / ``batch_stats`` ``[S, ...]``.

        Any stack works: replicates, or the points of an interpolation path.
        """
        out = self._evaluate_stacked(params, batch_stats, split, "metrics")
        return {k: np.asarray(v) for k, v in out.items()}

    def predict_params(self, params: PyTree, batch_stats: PyTree, split: str) -> np.ndarray:
        """Logits ``[S, N, C]`` of stacked ``params`` / ``batch_stats`` ``[S, ...]`` on ``split``.

        Example:
            >>> probs = jax.nn.softmax(executor.predict_params(params, stats, "test")).mean(0)
        """
        out = self._evaluate_stacked(params, batch_stats, split, "logits")
        return np.asarray(out)[:, :self._host_splits[split].y.shape[0]]

    def _evaluate_stacked(self, params: PyTree, batch_stats: PyTree, split: str,
                          output: str) -> Any:
        """``_compiled_eval`` on stacked trees padded over the devices, unpadded after."""
        num = _num_replicates(params)
        padded = self.padded_size(num)
        params, batch_stats = jax.device_put(_pad((params, batch_stats), num, padded),
                                             self.seed_sharding(padded))
        out = _compiled_eval(self, padded, split, output)(params, batch_stats)
        return jax.tree.map(lambda v: v[:num], out)

    def recompute_batch_stats(self, state: TrainState, *, num_batches: int = 20,
                              batch_size: int | None = None, seed: int = 0) -> TrainState:
        """``state`` with BatchNorm statistics recomputed on training batches.

        The same ``num_batches`` batches (no augmentation; order from ``seed``)
        serve every replicate. See :func:`recompute_batch_stats`.
        """
        stats = self.recomputed_batch_stats(state.params, state.batch_stats,
                                            num_batches=num_batches, batch_size=batch_size,
                                            seed=seed)
        return self.shard(state.replace(batch_stats=stats))

    def recomputed_batch_stats(self, params: PyTree, batch_stats: PyTree, *,
                               num_batches: int = 20, batch_size: int | None = None,
                               seed: int = 0) -> PyTree:
        """BatchNorm statistics ``[S, ...]`` of stacked ``params`` recomputed on training data."""
        if not jax.tree.leaves(batch_stats):
            return batch_stats
        batch_size = batch_size or self.recipe.batch_size
        sharding = self.seed_sharding(_num_replicates(params))
        params, batch_stats = jax.device_put((params, batch_stats), sharding)
        arrays = self.device_split("train", sharding.num_devices, for_eval=False)
        index = data.batch_indices(jax.random.key(seed), 0, num_steps=num_batches,
                                   num_examples=arrays.y.shape[0], batch_size=batch_size)
        return self._recompute_fn(params, batch_stats, arrays, index)

    @functools.cached_property
    def _recompute_fn(self) -> Callable:
        def recompute(params, batch_stats, arrays, index):
            images = data.normalize(arrays.x[index], arrays.mean, arrays.std)
            return jax.vmap(lambda p, b: recompute_batch_stats(self.model, p, b, images))(
                params, batch_stats)

        return jax.jit(recompute)


@functools.cache
def _mesh(devices: tuple) -> Mesh:
    return Mesh(np.array(devices), ("seed",))


def _pad(stacked: PyTree, num: int, padded: int) -> PyTree:
    """Leaves ``[num, ...]`` -> ``[padded, ...]`` by repeating the last replicate."""
    if padded == num:
        return stacked
    index = np.concatenate([np.arange(num), np.full(padded - num, num - 1)])
    return jax.tree.map(lambda x: x[index], stacked)


def _num_replicates(stacked: PyTree) -> int:
    leaves = jax.tree.leaves(stacked)
    if not leaves or jnp.ndim(leaves[0]) == 0:
        raise ValueError("expected a stacked tree with a leading replicate axis [S, ...]")
    return int(leaves[0].shape[0])


@functools.lru_cache(maxsize=64)
def _compiled_train(executor: Executor, num_replicates: int, num_steps: int, masked: bool):
    mesh = executor.mesh(num_replicates)
    arrays = executor.device_split("train", mesh.size, for_eval=False)
    unroll = executor.strategy == "unrolled_loop"

    def one(state, masks, key, arrays):
        return train_steps(executor.model, executor.recipe, arrays, state, masks, key,
                           num_steps=num_steps, unroll=unroll)

    local = _map_local_seeds(one, executor.strategy, in_axes=(0, 0 if masked else None, 0, None))
    sharded = jax.shard_map(
        local, mesh=mesh, in_specs=(P("seed"), P("seed"), P("seed"), P()),
        out_specs=(P("seed"), P("seed")), check_vma=False,
    )
    jitted = jax.jit(sharded)
    return lambda state, masks, keys: jitted(state, masks, keys, arrays)


@functools.lru_cache(maxsize=64)
def _compiled_eval(executor: Executor, num_replicates: int, split: str, output: str):
    """Per-replicate :func:`evaluate` (``output='metrics'``) or :func:`predict` (``'logits'``)."""
    mesh = executor.mesh(num_replicates)
    arrays = executor.device_split(split, mesh.size, for_eval=True)
    unroll = executor.strategy == "unrolled_loop"
    per_replicate = {"metrics": evaluate, "logits": predict}[output]

    def one(params, batch_stats, arrays):
        return per_replicate(executor.model, params, batch_stats, arrays,
                             batch_size=executor.eval_batch_size, unroll=unroll)

    local = _map_local_seeds(one, executor.strategy, in_axes=(0, 0, None))
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P("seed"), P("seed"), P()),
                            out_specs=P("seed"), check_vma=False)
    jitted = jax.jit(sharded)
    return lambda params, batch_stats: jitted(params, batch_stats, arrays)
