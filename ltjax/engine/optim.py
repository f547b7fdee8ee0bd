"""The training recipe as optax: schedules, optimisers, weight decay, groups, masked updates.

A :class:`Recipe` names the optimiser and the schedule shared by every member
of a program; :class:`Hyperparams` holds what may differ per member (peak
learning rate, weight decay, label smoothing: traced arrays ``[S]``, so a
learning-rate x weight-decay grid trains as one program).

The learning rate is ``peak * schedule(step)``, evaluated at the train state's
step rather than from an optimiser counter, so a run rewound to step k with a
fresh optimiser resumes the schedule at k (Frankle et al. 2020,
"Linear Mode Connectivity and the Lottery Ticket Hypothesis").

One step's update is :func:`make_optimizer`'s chain:

1. gradients of pruned weights set to zero (:func:`masked`);
2. per label group (``optax.multi_transform``): frozen leaves get
   ``optax.set_to_zero()`` (no decay); the others coupled decay
   (``g + wd * w``, torch's ``weight_decay``, what OpenLTH uses), the
   optimiser's direction (SGD, heavy-ball or Nesterov momentum in torch's
   convention ``v = mu v + g``, Adam, RMSProp), decoupled decay (``+ wd * w`` after the
   direction: AdamW / SGDW as torch and optax scale it, by the learning rate),
   then ``-lr``;
3. the updates of pruned weights set to zero again (a momentum buffer from
   dense training cannot revive them; they start at zero, so they stay there);
4. ``-lr``, one scale for every group.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from ltjax.engine import optim
    >>> recipe = optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9,
    ...                       weight_decay=1e-4, lr_drop_steps=(32000, 48000), batch_size=128)
    >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> tx = optim.make_optimizer(recipe, learning_rate=optim.learning_rate_at(recipe, 0))
    >>> opt_state = tx.init(params)
    >>> updates, opt_state = tx.update(grads, opt_state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> round(float(updates["Dense_0"]["kernel"][0, 0]), 6)   # -0.1 * (1 + 1e-4 * 1)
    -0.10001
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ltjax.core import tree

PyTree = Any

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
#: ``torch.optim.RMSprop``'s defaults: the squared-gradient average's decay
#: (torch's ``alpha``) and the ``eps`` added *outside* the square root.
RMSPROP_DECAY = 0.99
RMSPROP_EPS = 1e-8
SCHEDULES = ("step", "cosine")
DECAY_MODES = ("coupled", "decoupled")
#: The label of leaves that are never updated (``optax.set_to_zero()``, no decay).
FROZEN = "frozen"
#: The label of ordinary trainable leaves (the member's weight decay).
DEFAULT = "default"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """The optimiser and schedule of a program (shared by all members).

    ``learning_rate``, ``weight_decay`` and ``label_smoothing`` are the
    defaults of every member; :class:`Hyperparams` overrides them per member.

    Attributes:
      optimizer: ``'sgd'`` (with ``momentum`` > 0: heavy-ball, torch's
        convention ``v = mu v + g``), ``'adam'``, ``'adamw'`` (Adam with
        decoupled weight decay, Loshchilov & Hutter 2019) or ``'rmsprop'``
        (``torch.optim.RMSprop`` with its defaults: ``nu = 0.99 nu +
        0.01 g^2`` from ``nu = 0``, direction ``g / (sqrt(nu) + 1e-8)``, no
        bias correction, not centered; with ``momentum`` > 0 the direction
        goes through torch's buffer ``b = mu b + g / (sqrt(nu) + eps)``).
      learning_rate: the peak learning rate.
      momentum: SGD and RMSProp momentum (ignored by Adam).
      nesterov: Nesterov momentum for SGD.
      weight_decay: the decay coefficient (see ``weight_decay_mode``).
      weight_decay_mode: ``'coupled'`` (added to the gradient before the
        optimiser: torch's ``weight_decay``, as OpenLTH uses) or
        ``'decoupled'`` (added after the optimiser's direction and scaled by
        the learning rate: torch's AdamW, optax's ``adamw``). None: coupled,
        except decoupled for ``'adamw'``.
      schedule: ``'step'`` (warm-up, then multiplied by ``lr_drop_factor`` at
        each of ``lr_drop_steps``; constant when there are none) or
        ``'cosine'`` (warm-up, then cosine decay to 0 at ``total_steps``).
      warmup_steps: linear warm-up ``lr * min(1, step / warmup_steps)``
        (OpenLTH's warm-up; step 0 has learning rate 0).
      lr_drop_steps: steps at which the learning rate is multiplied by
        ``lr_drop_factor`` (e.g. ResNet-20: ``(32000, 48000)``).
      lr_drop_factor: the drop factor (0.1 in the LTH/LMC recipes).
      total_steps: the cosine schedule's length, warm-up included.
      batch_size: examples per step.
      label_smoothing: label smoothing of the cross-entropy (0 = none).
      augment: use the dataset's augmentation (CIFAR: crop + flip) if it has one.

    Example:
        >>> from ltjax.engine import optim
        >>> resnet = optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9,
        ...                       weight_decay=1e-4, lr_drop_steps=(32000, 48000),
        ...                       batch_size=128)
        >>> vit = optim.Recipe(optimizer="adamw", learning_rate=3e-4, weight_decay=0.05,
        ...                    schedule="cosine", warmup_steps=500, total_steps=10000)
        >>> vit.weight_decay_mode          # AdamW's decay is decoupled by default
        'decoupled'
        >>> supsup = optim.Recipe(optimizer="rmsprop", learning_rate=1e-4)  # PermutedMNIST
    """

    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    weight_decay_mode: str | None = None
    schedule: str = "step"
    warmup_steps: int = 0
    lr_drop_steps: tuple[int, ...] = ()
    lr_drop_factor: float = 0.1
    total_steps: int = 0
    batch_size: int = 128
    label_smoothing: float = 0.0
    augment: bool = True

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        mode = self.weight_decay_mode
        if mode is None:
            mode = "decoupled" if self.optimizer == "adamw" else "coupled"
        if mode not in DECAY_MODES:
            raise ValueError(f"weight_decay_mode must be one of {DECAY_MODES} or None, got "
                             f"{self.weight_decay_mode!r}")
        if self.optimizer == "adamw" and mode != "decoupled":
            raise ValueError("optimizer='adamw' is Adam with decoupled decay: use "
                             "weight_decay_mode='decoupled' (or optimizer='adam' for coupled)")
        object.__setattr__(self, "weight_decay_mode", mode)
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and not (self.optimizer == "sgd" and self.momentum > 0):
            raise ValueError("nesterov=True needs optimizer='sgd' with momentum > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be finite and >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        drops = tuple(int(s) for s in self.lr_drop_steps)
        if any(s <= 0 for s in drops) or len(set(drops)) != len(drops):
            raise ValueError(f"lr_drop_steps must be distinct positive steps, got {drops}")
        if not (math.isfinite(self.lr_drop_factor) and self.lr_drop_factor > 0):
            raise ValueError(f"lr_drop_factor must be finite and > 0, got {self.lr_drop_factor}")
        if self.schedule == "cosine":
            if drops:
                raise ValueError("lr_drop_steps apply to schedule='step' only")
            if not self.total_steps > self.warmup_steps:
                raise ValueError(f"schedule='cosine' needs total_steps > warmup_steps "
                                 f"({self.warmup_steps}), got {self.total_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        object.__setattr__(self, "lr_drop_steps", tuple(sorted(drops)))


# --------------------------------------------------------------------------- schedules


def schedule(recipe: Recipe) -> optax.Schedule:
    """The learning-rate multiplier of ``recipe`` (peak 1) as an optax schedule of the step.

    ``'step'``: ``optax.piecewise_constant_schedule`` times a linear warm-up
    from 0 (``optax.linear_schedule``); ``'cosine'``:
    ``optax.warmup_cosine_decay_schedule(0, 1, warmup_steps, total_steps)``.

    Example:
        >>> from ltjax.engine import optim
        >>> multiplier = optim.schedule(optim.Recipe(lr_drop_steps=(10,)))
        >>> round(float(multiplier(9)), 4), round(float(multiplier(10)), 4)
        (1.0, 0.1)
    """
    if recipe.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=1.0, warmup_steps=recipe.warmup_steps,
            decay_steps=recipe.total_steps, end_value=0.0)
    drops = optax.piecewise_constant_schedule(
        1.0, {s: recipe.lr_drop_factor for s in recipe.lr_drop_steps} or None)
    if not recipe.warmup_steps:
        return lambda step: jnp.asarray(drops(step), jnp.float32)
    warmup = optax.linear_schedule(0.0, 1.0, recipe.warmup_steps)
    return lambda step: jnp.asarray(drops(step) * warmup(step), jnp.float32)


def learning_rate_at(recipe: Recipe, step: jax.Array | int,
                     peak: jax.Array | float | None = None) -> jax.Array:
    """The learning rate at ``step``: ``peak * schedule(recipe)(step)``.

    Args:
      recipe: the recipe.
      step: the train state's step.
      peak: the member's peak learning rate (default ``recipe.learning_rate``).

    Example:
        >>> from ltjax.engine import optim
        >>> recipe = optim.Recipe(learning_rate=0.1, lr_drop_steps=(10,))
        >>> round(float(optim.learning_rate_at(recipe, 10)), 6)
        0.01
    """
    peak = recipe.learning_rate if peak is None else peak
    return jnp.asarray(peak, jnp.float32) * schedule(recipe)(jnp.asarray(step))


# --------------------------------------------------------------------------- members


@flax.struct.dataclass
class Hyperparams:
    """What may differ between the members of one program (arrays ``[S]``, traced).

    Attributes:
      learning_rate: peak learning rates ``[S]``.
      weight_decay: weight decays ``[S]`` (of the recipe's ``weight_decay_mode``).
      label_smoothing: label smoothings ``[S]``, or None: no smoothing for any
        member (a static zero: the integer-label loss, what the executor
        passes when every member's smoothing is 0).
    """

    learning_rate: jax.Array
    weight_decay: jax.Array
    label_smoothing: jax.Array | None


def member_hparams(
    recipe: Recipe, num_members: int, *, learning_rate: Any = None, weight_decay: Any = None,
    label_smoothing: Any = None,
) -> Hyperparams:
    """Per-member hyperparameters ``[S]``; unset fields repeat the recipe's value.

    Args:
      recipe: the program's recipe (the defaults).
      num_members: S.
      learning_rate: peak learning rates, a length-S sequence (or None).
      weight_decay: weight decays, length S (or None).
      label_smoothing: label smoothings, length S (or None).

    Raises:
      ValueError: a sequence of the wrong length, a non-positive learning
        rate, a negative decay, a smoothing outside [0, 1) (naming the field).

    Example:
        >>> from ltjax.engine import optim
        >>> recipe = optim.Recipe(learning_rate=0.1, weight_decay=5e-4)
        >>> hp = optim.member_hparams(recipe, 6,
        ...                           learning_rate=[0.1, 0.1, 0.03, 0.03, 0.01, 0.01],
        ...                           weight_decay=[0, 1e-4] * 3)       # a 3 x 2 grid
        >>> hp.learning_rate.shape, hp.weight_decay.shape, hp.label_smoothing.tolist()
        ((6,), (6,), [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    """
    def field(name: str, value: Any, default: float, ok, expected: str) -> np.ndarray:
        arr = np.full(num_members, default, np.float32) if value is None else np.asarray(
            value, np.float32)
        if arr.shape != (num_members,):
            raise ValueError(f"{name} must have one value per member, shape ({num_members},); "
                             f"got shape {arr.shape}")
        bad = [float(v) for v in arr if not ok(v)]
        if bad:
            raise ValueError(f"{name} must be {expected} for every member; got {bad}")
        return arr

    return Hyperparams(
        learning_rate=field("learning_rate", learning_rate, recipe.learning_rate,
                            lambda v: v > 0, "> 0"),
        weight_decay=field("weight_decay", weight_decay, recipe.weight_decay,
                           lambda v: v >= 0, ">= 0"),
        label_smoothing=field("label_smoothing", label_smoothing, recipe.label_smoothing,
                              lambda v: 0 <= v < 1, "in [0, 1)"),
    )


# --------------------------------------------------------------------------- transforms


def masked(inner: optax.GradientTransformation,
           masks: PyTree | None) -> optax.GradientTransformation:
    """``inner`` with pruned weights held at exactly zero (IMP's masked update).

    Gradients are masked before ``inner`` (so momentum and Adam's moments of
    a pruned weight see zeros) and ``inner``'s updates are masked after it,
    so neither weight decay nor a momentum buffer from dense training can
    revive a pruned weight (Frankle & Carbin 2019; OpenLTH re-masks after
    every step). Pruned weights must start at zero (:func:`ltjax.core.masking.apply`,
    as rewinding gives them); they then stay exactly zero, which is the
    re-masking after the update, done without a second pass over the params.

    Args:
      inner: the transform of the kept weights.
      masks: bool masks with the params' structure (None: ``inner`` as is).

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from ltjax.engine import optim
        >>> params, masks = {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([True, False])}
        >>> tx = optax.chain(optim.masked(optax.trace(0.9), masks), optax.scale(-0.5))
        >>> updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
        >>> updates["w"]                      # the pruned weight gets no update
        Array([-0.5, -0. ], dtype=float32)
    """
    if masks is None:
        return inner

    def zero(x, m):
        return jnp.where(m, x, jnp.zeros((), x.dtype))

    def update(updates, state, params=None):
        updates, state = inner.update(jax.tree.map(zero, updates, masks), state, params)
        return jax.tree.map(zero, updates, masks), state

    return optax.GradientTransformation(inner.init, update)


def direction(recipe: Recipe, weight_decay: jax.Array | float | None = None,
              ) -> optax.GradientTransformation:
    """The optimiser's update direction (no learning rate): decay + SGD/momentum/Adam/RMSProp.

    RMSProp is ``optax.scale_by_rms(decay=RMSPROP_DECAY, eps=RMSPROP_EPS,
    eps_in_sqrt=False)``: torch's ``g / (sqrt(nu) + eps)``; optax's own
    default (``eps_in_sqrt=True``, decay 0.9) is ``g / sqrt(nu + eps)``, which
    differs most on the first steps of small gradients.

    Args:
      recipe: the optimiser, momentum and decay mode.
      weight_decay: this member's decay (default ``recipe.weight_decay``); a
        traced scalar is fine. The transform is always in the chain, so the
        optimiser state's structure does not depend on the value.
    """
    wd = recipe.weight_decay if weight_decay is None else weight_decay
    decay = optax.add_decayed_weights(wd)
    if recipe.optimizer in ("adam", "adamw"):
        base = optax.scale_by_adam()
    elif recipe.optimizer == "rmsprop":
        base = optax.scale_by_rms(decay=RMSPROP_DECAY, eps=RMSPROP_EPS, eps_in_sqrt=False)
        if recipe.momentum:
            base = optax.chain(base, optax.trace(decay=recipe.momentum))
    elif recipe.momentum:
        base = optax.trace(decay=recipe.momentum, nesterov=recipe.nesterov)
    else:  # plain SGD: an explicit identity (optax.chain() of nothing cannot update)
        base = optax.identity()
    parts = [decay, base] if recipe.weight_decay_mode == "coupled" else [base, decay]
    return optax.chain(*parts)


def make_optimizer(
    recipe: Recipe, *, learning_rate: jax.Array | float | None = None,
    weight_decay: jax.Array | float | None = None, labels: PyTree | None = None,
    group_decay: Mapping[str, float] | None = None, masks: PyTree | None = None,
) -> optax.GradientTransformation:
    """One member's full update: masked, grouped, decayed, scaled by ``-learning_rate``.

    The optimiser state's structure depends only on ``recipe`` and
    ``labels``, so a state made with the defaults serves every member.

    Args:
      recipe: the recipe.
      learning_rate: this step's learning rate (default the recipe's peak);
        a traced scalar (:func:`learning_rate_at`).
      weight_decay: this member's decay (default the recipe's).
      labels: a tree of str with the trained tree's structure (None: all
        :data:`DEFAULT`). :data:`FROZEN` leaves are never updated and get no
        decay; :data:`DEFAULT` leaves get ``weight_decay``; any other label is
        a group whose decay is ``group_decay[label]``.
      group_decay: the decay of each extra group.
      masks: IMP masks of the trained tree (:func:`masked`), or None.

    Raises:
      ValueError: a label other than frozen/default without a ``group_decay`` entry.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.engine import optim
        >>> tx = optim.make_optimizer(optim.Recipe(optimizer="sgd"))   # plain SGD works
        >>> params = {"w": jnp.ones(2)}
        >>> tx.update({"w": jnp.ones(2)}, tx.init(params), params)[0]   # -0.1 * grad
        {'w': Array([-0.1, -0.1], dtype=float32)}
    """
    lr = recipe.learning_rate if learning_rate is None else learning_rate
    scale = optax.scale(-jnp.asarray(lr, jnp.float32))
    if labels is None:
        return optax.chain(masked(direction(recipe, weight_decay), masks), scale)
    group_decay = dict(group_decay or {})
    names = sorted(set(jax.tree.leaves(labels)) | {DEFAULT})
    unknown = [n for n in names if n not in (FROZEN, DEFAULT) and n not in group_decay]
    if unknown:
        raise ValueError(f"labels {unknown} have no entry in group_decay {group_decay}")
    transforms = {}
    for name in names:
        if name == FROZEN:
            transforms[name] = optax.set_to_zero()
        else:
            wd = weight_decay if name == DEFAULT else group_decay[name]
            transforms[name] = direction(recipe, wd)
    return optax.chain(masked(optax.multi_transform(transforms, labels), masks), scale)


def labels_by_path(params: PyTree, rules: Mapping[str, str], *,
                   default: str = DEFAULT) -> PyTree:
    """A label per leaf: the first rule whose regex matches the leaf's path, else ``default``.

    Args:
      params: the tree to label (paths like ``'Dense_0/kernel'``).
      rules: ``{label: regex}`` tried in order with ``re.search``.
      default: the label of leaves no rule matches.

    Raises:
      ValueError: a rule that matches no leaf (naming the rule and the paths).

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.engine import optim
        >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2))},
        ...           "BatchNorm_0": {"scale": jnp.ones(2)}}
        >>> optim.labels_by_path(params, {optim.FROZEN: r"^(?!.*BatchNorm).*"})  # BatchNorm-only
        {'BatchNorm_0': {'scale': 'default'}, 'Dense_0': {'kernel': 'frozen'}}
    """
    names = tree.names(params)
    for label, pattern in rules.items():
        if not any(re.search(pattern, n) for n in names):
            raise ValueError(f"label {label!r}: pattern {pattern!r} names no leaf; "
                             f"leaves are {names}")

    def label_of(name: str) -> str:
        for label, pattern in rules.items():
            if re.search(pattern, name):
                return label
        return default

    leaves = [label_of(n) for n in names]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)
