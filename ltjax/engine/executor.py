"""Many members trained and evaluated as one jitted program.

A run is S **members** (seeds, IMP branches, grid points). Each member has
its own init key, noise key and masks, and its own peak learning rate, weight
decay and label smoothing (:class:`ltjax.engine.optim.Hyperparams`, traced arrays
``[S]``); the optimiser kind, schedule shape, batch size, model and
reparameterisation (:mod:`ltjax.engine.reparam`) are shared by the program. Member
r gives the same numbers whatever trains beside it.

The member axis is the leading axis of every state, mask, key and
hyperparameter argument. It is sharded over the devices with
``NamedSharding(Mesh(devices, ('seed',)), P('seed'))`` through
``shard_map``; inside a device the local members are either ``vmap``-ed or
run one after another. In a multi-process run (:mod:`ltjax.io.distributed`) the
mesh spans the devices of every process (``jax.devices()``), states are
global arrays, and what the executor returns to the host (losses, metrics)
is gathered, the same in every process.

**Adding members changes no member's numbers.** A ``vmap`` over S members
gives XLA a batch of S to pick kernels for, and member 0 differs in the last
float bits between S = 2 and S = 4 (~2e-5 relative after 200 steps on CPU).
So under ``'scan_vmap'`` the local members run in **blocks** of
``member_block`` (vmapped inside a block, a rolled loop over blocks, the last
block padded with copies): every member goes through the same block program
whatever S is, and its numbers are bit for bit those of its solo run on the
same machine (tested for S = 1, 2, 3, 4, 5, 8). The default block is 1 on CPU,
where it is also faster than one vmap (LeNet-300-100 at S = 4 and 8 on 2
devices: 78k vs 58k and 72k vs 51k examples/s, ``benchmarks/train_throughput.py``),
and None on GPU/TPU: one vmap over all local members, fastest there, with
numbers that may move in the last bits when S changes. Pass ``member_block=8`` (say) on an
accelerator to get exactness for the price of padding S up to a multiple of 8
per device (and use XLA's deterministic-ops flag: GPU autotuning may pick
other kernels per compilation). ``'unrolled_loop'`` runs each member as its
own sub-program and is exact already.

Strategies (measured on a 2-core CPU, FACTS.md, and
``benchmarks/train_throughput.py``):

=================  ===========================  ==================================
strategy            per-member step loop         members on one device
=================  ===========================  ==================================
``'scan_vmap'``     rolled ``lax.scan``          ``vmap``
``'unrolled_loop'`` unrolled (few steps per      Python-unrolled loop, one program
                    call)
=================  ===========================  ==================================

``'auto'`` picks ``'unrolled_loop'`` for conv nets on CPU, where a conv in a
rolled scan is ~28x slower and vmapping conv seeds gives 0.25x, and
``'scan_vmap'`` otherwise (dense nets everywhere; convs on GPU/TPU). Every
strategy computes the same numbers (tests compare them).

Compiled programs are shared by equal executors: every program is a function of
the executor's configuration (model, recipe, reparameterisation, strategy, member
block, devices, the dataset's shapes) and takes the data as arguments, so a process
keeps the last :data:`SHARED_PROGRAMS` programs by that configuration and a new
executor of an equal one (a study's next level, a test's next run) reuses them rather
than tracing, lowering and compiling them again. A deleted executor frees its
device-resident data (the programs hold no data and no executor). Dense and masked training
share one program (dense = all-True masks), and training losses stay on the
device until :meth:`Executor.train` returns (one host transfer per call).
:meth:`Executor.train_and_evaluate` trains and evaluates many evaluation
intervals in one program under ``'scan_vmap'`` (one host transfer for all of
them: how the studies' segments train dense nets).

Example:
    >>> from ltjax import models
    >>> from ltjax.core import rng
    >>> from ltjax.engine import optim
    >>> from ltjax.io import data
    >>> from ltjax.engine.executor import Executor
    >>> dataset = data.load("digits")              # scikit-learn's digits: no download
    >>> model = models.create("mlp", widths=(32,))
    >>> recipe = optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9, batch_size=60)
    >>> executor = Executor(model, dataset, recipe)
    >>> init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(0, 6))
    >>> hparams = optim.member_hparams(recipe, 6,
    ...                                learning_rate=[0.1, 0.1, 0.03, 0.03, 0.01, 0.01],
    ...                                weight_decay=[0.0, 5e-4] * 3)
    >>> state = executor.init(init_keys)           # 6 members, stacked
    >>> state.params["Dense_0"]["kernel"].shape
    (6, 64, 32)
    >>> executor.evaluate(state, "test")["accuracy"].shape   # [6]
    (6,)

    Training compiles the members' training program (not run here):

    ```python
    state, losses = executor.train(state, None, noise_keys, num_steps=100, hparams=hparams)
    ```
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ltjax import models
from ltjax.core import masking, rng, tree
from ltjax.engine import optim, train
from ltjax.engine import reparam as reparam_lib
from ltjax.io import data, distributed

PyTree = Any

STRATEGIES = ("auto", "scan_vmap", "unrolled_loop")

#: How many compiled programs a process keeps for reuse by equal executors (module doc).
SHARED_PROGRAMS = 128
_shared_programs: collections.OrderedDict[tuple, Callable] = collections.OrderedDict()


def clear_shared_programs() -> None:
    """Forget the programs kept for equal executors (each executor's own stay)."""
    _shared_programs.clear()


def choose_strategy(params: PyTree, backend: str | None = None) -> str:
    """``'unrolled_loop'`` for conv nets on CPU, else ``'scan_vmap'`` (see module doc)."""
    backend = backend or jax.default_backend()
    return "unrolled_loop" if (models.is_conv(params) and backend == "cpu") else "scan_vmap"


def default_member_block(backend: str | None = None) -> int | None:
    """1 on CPU (exact whatever S, and faster there), None on GPU/TPU (module doc)."""
    return 1 if (backend or jax.default_backend()) == "cpu" else None


def _map_local_members(fn: Callable, strategy: str, in_axes: tuple,
                       block: int | None = None) -> Callable:
    """Map ``fn`` over the local members: vmap (in blocks of ``block``), or an unrolled loop.

    With ``block``, the mapped arguments' leading axis (a multiple of
    ``block``) is split into ``[num_blocks, block]``; ``lax.map`` runs the
    vmapped ``fn`` over the blocks, so one block program serves every member.
    """
    if strategy == "scan_vmap":
        vmapped = jax.vmap(fn, in_axes=in_axes)
        if block is None:
            return vmapped

        def blocked(*args):
            mapped = [a for a, ax in zip(args, in_axes, strict=True) if ax == 0]
            num_local = jax.tree.leaves(mapped)[0].shape[0]
            split = [jax.tree.map(lambda x: x.reshape(num_local // block, block, *x.shape[1:]),
                                  a) for a in mapped]
            shared = [a for a, ax in zip(args, in_axes, strict=True) if ax != 0]

            def one_block(block_args):
                it_mapped, it_shared = iter(block_args), iter(shared)
                return vmapped(*[next(it_mapped) if ax == 0 else next(it_shared)
                                 for ax in in_axes])

            out = jax.lax.map(one_block, split)
            return jax.tree.map(lambda x: x.reshape(num_local, *x.shape[2:]), out)

        return blocked

    def looped(*args):
        mapped = [a for a, ax in zip(args, in_axes, strict=True) if ax == 0]
        num_local = jax.tree.leaves(mapped)[0].shape[0]
        outs = []
        for i in range(num_local):
            outs.append(fn(*[tree.index(a, i) if ax == 0 else a
                             for a, ax in zip(args, in_axes, strict=True)]))
        return tree.stack(outs)

    return looped


class _Placed(NamedTuple):
    """A training call's arguments, checked and placed (:meth:`Executor._prepared`)."""

    num: int  # S, the members given
    mesh: Mesh
    padded: int  # the members the programs run (copies of the last fill the gap)
    smoothing: bool  # a member smooths its labels
    with_subsets: bool
    first_step: int
    learning_rates: np.ndarray  # [S], for the error message of a non-finite loss
    state: train.TrainState
    masks: PyTree
    noise_keys: jax.Array
    hparams: optim.Hyperparams
    subsets: jax.Array | None
    perms: Callable[[int, int], tuple[jax.Array, ...]]  # (offset, steps) -> the window's


class Executor:
    """Trains and evaluates S members of one model on one dataset as one program.

    Args:
      model: a flax module from :mod:`ltjax.models`.
      dataset: a :class:`ltjax.io.data.Dataset`; its splits are put on the devices once.
      recipe: the program's recipe (:class:`ltjax.engine.optim.Recipe`).
      reparam: what is trained (:mod:`ltjax.engine.reparam`; default the identity).
      strategy: ``'auto'``, ``'scan_vmap'`` or ``'unrolled_loop'`` (module doc).
      steps_per_call: steps per jitted call; default 500 for ``'scan_vmap'``
        and 1 for ``'unrolled_loop'`` (several unrolled steps per call add
        nothing on CPU, FACTS.md).
      eval_batch_size: at most this many rows per evaluation batch (a split is read in
        as few batches as that allows, padded by less than a row per batch).
      devices: the devices of the member mesh (default: ``jax.devices()``, all
        devices of all processes; in one process, the local devices).
      materialize_inputs: force each conv input into memory in the training
        and evaluation programs (:func:`ltjax.models.common.materialize`:
        identical numbers, faster conv steps on XLA:CPU). None (default):
        on for ``'unrolled_loop'`` when the model has the option unset.
        ``executor.model`` stays the model given.
      member_block: under ``'scan_vmap'``, members vmapped together on a
        device (a block); None vmaps all local members at once. ``'auto'``
        (default): :func:`default_member_block`. See the module doc: with a
        block, adding members changes no member's numbers.

    Raises:
      ValueError: an unknown strategy, a batch larger than the train split,
        a reparameterisation that does not fit the model, a bad member_block.
    """

    def __init__(
        self, model: Any, dataset: data.Dataset, recipe: optim.Recipe, *,
        reparam: reparam_lib.Reparam | None = None, strategy: str = "auto",
        steps_per_call: int | None = None, eval_batch_size: int = 1000,
        devices: list[jax.Device] | None = None, materialize_inputs: bool | None = None,
        member_block: int | str | None = "auto",
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if member_block == "auto":
            member_block = default_member_block()
        if member_block is not None and (isinstance(member_block, bool) or not isinstance(
                member_block, int | np.integer) or member_block < 1):
            raise ValueError(f"member_block must be an int >= 1, None or 'auto', "
                             f"got {member_block!r}")
        if recipe.batch_size > len(dataset.train):
            raise ValueError(
                f"batch_size={recipe.batch_size} is larger than the train split "
                f"({len(dataset.train)} examples) of {dataset.name!r}"
            )
        self.model = model
        self.dataset = dataset
        self.recipe = recipe
        self.reparam = reparam or reparam_lib.identity()
        self.devices = list(devices or jax.devices())
        abstract_params = jax.eval_shape(
            lambda k: models.init(model, k, dataset.input_shape)[0], jax.random.key(0))
        reparam_lib.check(self.reparam, abstract_params)
        #: Shapes and dtypes of the model's params of one member.
        self.abstract_params = abstract_params
        self.strategy = choose_strategy(abstract_params) if strategy == "auto" else strategy
        has_option = hasattr(model, "materialize_inputs")
        if materialize_inputs is not None and not has_option:
            raise ValueError(f"materialize_inputs={materialize_inputs}: the model "
                             f"{type(model).__name__} has no such option")
        if materialize_inputs is None and has_option and model.materialize_inputs is None:
            materialize_inputs = self.strategy == "unrolled_loop"
        #: Whether the programs force conv inputs into memory (None: the model has no option).
        self.materialize_inputs = materialize_inputs
        self._program_model = model if materialize_inputs is None else model.clone(
            materialize_inputs=materialize_inputs)
        self.steps_per_call = steps_per_call or (500 if self.strategy == "scan_vmap" else 1)
        #: Members vmapped together per device (None: all); 1 under ``'unrolled_loop'``.
        self.member_block = (None if member_block is None else int(member_block)) if (
            self.strategy == "scan_vmap") else 1
        self.eval_batch_size = eval_batch_size
        self.steps_per_epoch = len(dataset.train) // recipe.batch_size
        #: Shapes and dtypes of one member's state (no member axis).
        self.abstract_state = jax.eval_shape(self._init_member(), jax.random.key(0))
        self._host_splits = {"train": dataset.train, "validation": dataset.validation,
                             "test": dataset.test}
        self._programs: dict[tuple, Callable] = {}
        self._configuration = self._program_configuration()
        self._device_splits: dict[tuple, data.DeviceSplit] = {}
        # The epochs' permutations of the last training window (see _window_perms).
        self._epoch_perms: dict[tuple, jax.Array] = {}

    def like(self, *, model: Any = None, recipe: optim.Recipe | None = None,
             reparam: reparam_lib.Reparam | None = None,
             dataset: data.Dataset | None = None) -> Executor:
        """An executor on the same devices, with this one's placement.

        The strategy, steps per call, evaluation batch and member block are
        kept; ``model``, ``recipe``, ``dataset`` replace this one's when given,
        and ``reparam`` too (the reparameterisation is not inherited: None is
        the identity).

        Example:
            >>> from ltjax import models
            >>> from ltjax.engine import optim
            >>> from ltjax.io import data
            >>> from ltjax.engine.executor import Executor
            >>> model, dataset = models.create("mlp", widths=(8,)), data.synthetic((8, 8, 1), 64)
            >>> executor = Executor(model, dataset, optim.Recipe(batch_size=16))
            >>> from ltjax.core import masking
            >>> from ltjax.methods import soft_threshold
            >>> selection = masking.prunable(executor.abstract_params)
            >>> str_reparam = soft_threshold.str_reparam(selection, s_init=-5.0)
            >>> str_executor = executor.like(reparam=str_reparam)
            >>> str_executor.model is executor.model, str_executor.recipe == executor.recipe
            (True, True)
            >>> rotations = data.altered_dataset(executor.dataset, kind="rotation")
            >>> pretext = executor.like(dataset=rotations)
            >>> pretext.dataset.num_classes                 # which of 4 rotations
            4
        """
        return Executor(model if model is not None else self.model,
                        dataset if dataset is not None else self.dataset,
                        recipe or self.recipe, reparam=reparam, strategy=self.strategy,
                        steps_per_call=self.steps_per_call, eval_batch_size=self.eval_batch_size,
                        devices=self.devices, member_block=self.member_block)

    def abstract_members(self, num_members: int) -> tuple[train.TrainState, PyTree]:
        """Shape/dtype/sharding structs of stacked states and masks ``[S]``.

        The target to restore a checkpoint onto without computing a state
        (no program runs or compiles).

        Example:
            >>> from ltjax import models
            >>> from ltjax.engine import optim
            >>> from ltjax.io import data
            >>> from ltjax.engine.executor import Executor
            >>> model, dataset = models.create("mlp", widths=(8,)), data.synthetic((8, 8, 1), 64)
            >>> executor = Executor(model, dataset, optim.Recipe(batch_size=16))
            >>> like_state, like_masks = executor.abstract_members(4)
            >>> like_state.params["Dense_0"]["kernel"].shape   # [S, ...], nothing computed
            (4, 64, 8)
            >>> like_masks["Dense_0"]["kernel"].dtype
            dtype('bool')
        """
        sharding = self.seed_sharding(num_members)

        def stacked(x, dtype=None):
            return jax.ShapeDtypeStruct((num_members, *x.shape), dtype or x.dtype,
                                        sharding=sharding)

        return (jax.tree.map(stacked, self.abstract_state),
                jax.tree.map(lambda x: stacked(x, jnp.bool_), self.abstract_params))

    def _init_member(self) -> Callable:
        """``(key, reparam_args=None) -> one member's fresh state`` (holding no executor)."""
        return functools.partial(_init_one, self.model, self.recipe, self.dataset.input_shape,
                                 self.reparam)

    def _program_configuration(self) -> tuple:
        """What every program of this executor is a function of (the data aside, which the
        programs take as arguments)."""
        return (
            self.model, self._program_model, self.recipe, self.reparam, self.strategy,
            self.steps_per_call, self.member_block, self.eval_batch_size, tuple(self.devices),
            tuple(self.dataset.input_shape),
            tuple(None if split is None else len(split) for split in self._host_splits.values()))

    def _program(self, key: tuple, build: Callable[[], Callable]) -> Callable:
        """The program named ``key``: this executor's, an equal executor's (module doc), or
        ``build()``. A built program must hold no executor and no data."""
        if key not in self._programs:
            shared = (self._configuration, key)  # hashable: the model is a static jit argument
            program = _shared_programs.get(shared)
            if program is None:
                program = build()
                _shared_programs[shared] = program
                while len(_shared_programs) > SHARED_PROGRAMS:
                    _shared_programs.popitem(last=False)
            else:
                _shared_programs.move_to_end(shared)
            self._programs[key] = program
        return self._programs[key]

    # -- placement

    def mesh(self, num_members: int) -> Mesh:
        """The member mesh for S members: ``gcd(S, len(devices))`` devices."""
        self._check_spread(num_members)
        num_devices = math.gcd(num_members, len(self.devices))
        return Mesh(np.array(self.devices[:num_devices]), ("seed",))

    def padded_size(self, num_members: int) -> int:
        """S rounded up so every device of the mesh gets as many members, in whole blocks.

        ``train`` and ``evaluate`` run ``padded_size(S)`` members (copies of
        the last one fill the gap) so that, e.g., 3 seeds use 2 devices rather
        than the ``gcd(3, 2) = 1`` the state is stored on; the copies are dropped.
        """
        return self._placement(num_members)[1]

    def _placement(self, num_members: int) -> tuple[Mesh, int]:
        """The programs' mesh for S members (min(S, devices) devices) and padded S."""
        self._check_spread(num_members)
        used = min(num_members, len(self.devices))
        per_device = -(-num_members // used)
        block = self.member_block or 1
        padded = -(-per_device // block) * block * used
        return Mesh(np.array(self.devices[:used]), ("seed",)), padded

    def _check_spread(self, num_members: int) -> None:
        """Refuse, in a multi-process run, S members that do not fill every device alike.

        Else the storage mesh (``gcd(S, devices)``) would leave some processes
        without a shard, which the host reads and reshards across processes
        do not support.
        """
        if num_members % len(self.devices) and distributed.is_multiprocess():
            raise ValueError(
                f"{num_members} members on {len(self.devices)} devices of "
                f"{jax.process_count()} processes: in a multi-process run every program's "
                "member count must be a multiple of the number of devices (set "
                "num_replicates accordingly)")

    def seed_sharding(self, num_members: int) -> NamedSharding:
        """``NamedSharding(mesh, P('seed'))`` for arrays with a leading member axis."""
        return NamedSharding(self.mesh(num_members), P("seed"))

    def shard(self, stacked: PyTree) -> PyTree:
        """Put a stacked tree (leading axis S) onto the member mesh."""
        num = _num_members(stacked)
        return distributed.put(stacked, self.seed_sharding(num))

    def _placed(self, stacked: PyTree, num: int, padded: int,
                 sharding: NamedSharding) -> PyTree:
        """``stacked`` ``[num]`` padded to ``[padded]`` (:func:`_pad`) and put on ``sharding``.

        The padding program needs its inputs on one set of devices: leaves
        placed by different programs (e.g. BatchNorm statistics recomputed for
        11 interpolated members on 1 device beside params on 2) first go onto
        the member mesh of ``num`` (:meth:`shard`). In a multi-process run
        the arguments always do, becoming global arrays (keys and host arrays
        included, :func:`ltjax.io.distributed.put`).
        """
        if distributed.is_multiprocess() or len(_device_sets(stacked)) > 1:
            stacked = self.shard(stacked)
        return distributed.put(_pad(stacked, num, padded), sharding)

    def split_eval_batch_size(self, split: str) -> int:
        """Rows per evaluation batch of ``split``: at most ``eval_batch_size``, padding minimal
        (:func:`ltjax.io.data.eval_batch_size`)."""
        return data.eval_batch_size(len(self._host_splits[split]), self.eval_batch_size)

    def _host_split(self, split: str) -> data.Split:
        """The dataset's split named ``split``, refused unless it exists and holds data."""
        host = self._host_splits.get(split)
        if host is None:
            raise ValueError(
                f"split must be one of 'train', 'validation', 'test' with data in "
                f"{self.dataset.name!r}; got {split!r}"
            )
        return host

    def device_split(self, split: str, num_devices: int, for_eval: bool) -> data.DeviceSplit:
        """A split's arrays replicated on the first ``num_devices`` devices (kept by the executor).

        For evaluation the rows are padded to a multiple of :meth:`split_eval_batch_size`.
        """
        host = self._host_split(split)
        key = (split, num_devices, for_eval)
        if key not in self._device_splits:
            pad_to = self.split_eval_batch_size(split) if for_eval else 1
            mesh = Mesh(np.array(self.devices[:num_devices]), ("seed",))
            self._device_splits[key] = distributed.put(
                data.device_split(host, self.dataset, pad_to=pad_to), NamedSharding(mesh, P()))
        return self._device_splits[key]

    # -- init

    def init(self, init_keys: jax.Array, masks: PyTree | None = None, *,
             reparam_args: PyTree | None = None) -> train.TrainState:
        """Fresh states ``[S]`` from ``init`` keys ``[S]`` (masked if masks ``[S]`` given).

        ``reparam_args``: the reparameterisation's per-member arguments, stacked
        ``[S, ...]`` (:mod:`ltjax.engine.reparam`; e.g.
        :func:`ltjax.methods.supermasks.edge_popup_args` per member, stacked): traced
        inputs of one init program, so members of one program differ in them.
        """
        if reparam_args is None:
            fn = self._program(("init",), self._build_init)
            state = fn(init_keys)
        else:
            num = int(np.shape(init_keys)[0])
            leading = {int(np.shape(x)[0]) if np.ndim(x) else None
                       for x in jax.tree.leaves(reparam_args)}
            if leading != {num}:
                raise ValueError(f"reparam_args must be stacked over the {num} members (a "
                                 f"leading axis of {num} on every leaf), got leading sizes "
                                 f"{sorted(leading, key=str)}")
            fn = self._program(("init", jax.tree.structure(reparam_args)), self._build_init)
            state = fn(init_keys, reparam_args)
        if masks is not None:
            masking.check(masks, self.abstract_params, leading_axes=1)
            if self.reparam.is_identity:
                state = state.replace(params=masking.apply(state.params, masks))
        return self.shard(state)

    def _build_init(self) -> Callable:
        return jax.jit(jax.vmap(self._init_member()))

    def fresh_opt_state(self, trainable: PyTree) -> PyTree:
        """A fresh optimiser state ``[S]`` for stacked trainable trees ``[S, ...]``.

        Example:
            >>> from ltjax import models
            >>> from ltjax.engine import optim
            >>> from ltjax.io import data
            >>> from ltjax.engine.executor import Executor
            >>> model, dataset = models.create("mlp", widths=(8,)), data.synthetic((8, 8, 1), 64)
            >>> executor = Executor(model, dataset, optim.Recipe(batch_size=16))
            >>> from ltjax.core import rng
            >>> state = executor.init(rng.replicate_keys(0, 2))
            >>> state = state.replace(opt_state=executor.fresh_opt_state(state.params))
        """
        recipe, reparam = self.recipe, self.reparam
        fn = self._program(("fresh_opt",), lambda: jax.jit(jax.vmap(
            lambda t: train.fresh_opt_state(recipe, t, reparam=reparam))))
        return fn(trainable)

    # -- train

    def train(
        self, state: train.TrainState, masks: PyTree | None, noise_keys: jax.Array, *,
        num_steps: int, hparams: optim.Hyperparams | None = None,
        subsets: Any = None,
    ) -> tuple[train.TrainState, np.ndarray]:
        """Advance every member by ``num_steps`` steps.

        Args:
          state: stacked states ``[S]`` (all at the same step).
          masks: stacked bool masks ``[S]`` of the model's params, or None (dense).
          noise_keys: ``noise`` keys ``[S]``.
          num_steps: steps to take.
          hparams: per-member hyperparameters ``[S]``
            (:func:`ltjax.engine.optim.member_hparams`); None: the recipe's for all.
          subsets: int indices ``[S, n]`` into the training split: member r
            trains on ``subsets[r]`` only (:func:`ltjax.engine.train.train_steps`'s
            ``subset``; e.g. the data diet's pruned sets, one per member); None:
            every member on the whole split.

        Returns:
          The new state and the mean training loss of each member, ``[S]``.

        Raises:
          FloatingPointError: a member's training loss became NaN or inf
            (checked once per call; the message names the members and the
            steps of the first chunk where it happened).
        """
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        run = self._prepared(state, masks, noise_keys, hparams, subsets)
        state, chunks, done = run.state, [], 0
        arrays = self.device_split("train", run.mesh.size, for_eval=False)
        while done < num_steps:
            chunk = min(self.steps_per_call, num_steps - done)
            fn = self._program(("train", run.padded, run.mesh.size, chunk, run.smoothing,
                                run.with_subsets),
                               lambda c=chunk: self._build_train(run.mesh, c, run.with_subsets))
            state, chunk_sum, chunk_finite = fn(state, run.masks, run.noise_keys, run.hparams,
                                                run.subsets, run.perms(done, chunk), arrays)
            chunks.append(((done, chunk), chunk_sum, chunk_finite))
            done += chunk
        if not chunks:
            return self._unplaced(run, state), np.zeros(run.num, np.float64)
        sums, finite = distributed.host(([c[1] for c in chunks], [c[2] for c in chunks]))
        sums = self._checked_loss_sums(run, [c[0] for c in chunks], sums, finite)
        return self._unplaced(run, state), sums.sum(axis=0) / num_steps

    def train_and_evaluate(
        self, state: train.TrainState, masks: PyTree | None, noise_keys: jax.Array, *,
        num_intervals: int, interval: int, splits: list[str] | tuple[str, ...],
        hparams: optim.Hyperparams | None = None, subsets: Any = None,
    ) -> tuple[train.TrainState, np.ndarray, dict[str, dict[str, np.ndarray]]]:
        """``num_intervals`` times: train ``interval`` steps, then evaluate on ``splits``.

        Under ``'scan_vmap'`` this is one program (a ``lax.scan`` over the
        intervals, each the training steps of :meth:`train` followed by the
        evaluation of :meth:`evaluate`) and one host transfer, however many
        intervals; under ``'unrolled_loop'`` (conv nets on a CPU, where XLA
        runs convs in loops slowly) the same calls from the host. The
        training is :meth:`train`'s (the same batches, keys and steps); the
        evaluations are :meth:`evaluate`'s computed inside the training
        program, equal to within float rounding (and bit for bit from one
        call to another of the same shape). The epochs' permutations of all
        ``E * interval`` steps are held at once (:func:`ltjax.io.data.window_epochs`
        epochs of the training split per member): keep a call to some epochs
        (the studies' segments: :data:`ltjax.studies.common.IN_PROGRAM_STEPS`).

        Args:
          state: stacked states ``[S]`` (as :meth:`train`).
          masks: stacked masks ``[S]`` or None (as :meth:`train`).
          noise_keys: ``noise`` keys ``[S]``.
          hparams: per-member hyperparameters ``[S]`` or None (as :meth:`train`).
          subsets: per-member training subsets ``[S, n]`` or None (as :meth:`train`).
          num_intervals: E, the number of evaluations (>= 1).
          interval: the steps trained before each evaluation (>= 1).
          splits: the splits evaluated after every interval.

        Returns:
          The state after ``E * interval`` steps, the mean training loss of each
          interval ``[E, S]`` (float64), and ``{split: {'loss': [E, S],
          'accuracy': [E, S]}}`` (float32, as :meth:`evaluate` gives them).

        Raises:
          FloatingPointError: as :meth:`train` (the interval where it happened).

        Example:
            >>> from ltjax import models
            >>> from ltjax.core import rng
            >>> from ltjax.engine import optim
            >>> from ltjax.io import data
            >>> from ltjax.engine.executor import Executor
            >>> model, dataset = models.create("mlp", widths=(8,)), data.synthetic((8, 8, 1), 64)
            >>> executor = Executor(model, dataset, optim.Recipe(batch_size=16))
            >>> init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(0, 2))
            >>> state = executor.init(init_keys)
            >>> state, losses, metrics = executor.train_and_evaluate(
            ...     state, None, noise_keys, num_intervals=3, interval=4, splits=["test"])
            >>> losses.shape, metrics["test"]["accuracy"].shape      # [E, S]
            ((3, 2), (3, 2))
            >>> [int(s) for s in state.step]
            [12, 12]
        """
        for name, value in (("num_intervals", num_intervals), ("interval", interval)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        splits = tuple(splits)
        for split in splits:  # before any work
            self._host_split(split)
        if self.strategy != "scan_vmap":  # no loop around convs on XLA:CPU: host calls
            losses, metrics = [], {split: {"loss": [], "accuracy": []} for split in splits}
            for _ in range(num_intervals):
                state, loss = self.train(state, masks, noise_keys, num_steps=interval,
                                         hparams=hparams, subsets=subsets)
                losses.append(loss)
                for split in splits:
                    for k, v in self.evaluate(state, split, masks).items():
                        metrics[split][k].append(v)
            return state, np.stack(losses), {s: {k: np.stack(v) for k, v in m.items()}
                                             for s, m in metrics.items()}
        run = self._prepared(state, masks, noise_keys, hparams, subsets)
        key = ("train_evaluate", run.padded, run.mesh.size, num_intervals, interval, splits,
               run.smoothing, run.with_subsets)
        fn = self._program(key, lambda: self._build_train_evaluate(
            run.mesh, num_intervals, interval, splits, run.with_subsets))
        state, sums, finite, metrics = fn(
            run.state, run.masks, run.noise_keys, run.hparams, run.subsets,
            run.perms(0, num_intervals * interval),
            self.device_split("train", run.mesh.size, for_eval=False),
            {s: self.device_split(s, run.mesh.size, for_eval=True) for s in splits})
        sums, finite, metrics = distributed.host((sums, finite, metrics))  # the one transfer
        spans = [(e * interval, interval) for e in range(num_intervals)]
        mean_losses = self._checked_loss_sums(run, spans, np.asarray(sums).T,
                                              np.asarray(finite).T) / interval
        metrics = {split: {k: np.asarray(v)[:run.num].T for k, v in values.items()}
                   for split, values in metrics.items()}
        return self._unplaced(run, state), mean_losses, metrics

    def _prepared(self, state: train.TrainState, masks: PyTree | None, noise_keys: jax.Array,
                  hparams: optim.Hyperparams | None, subsets: Any) -> _Placed:
        """Checked, completed (hparams, all-True masks) and placed training arguments."""
        num = _num_members(state)
        if noise_keys.shape != (num,):
            raise ValueError(f"noise_keys must have shape ({num},), got {noise_keys.shape}")
        if masks is not None:
            masking.check(masks, self.abstract_params, leading_axes=1)
        if subsets is not None:
            subsets = self._checked_subsets(subsets, num)
        host = distributed.host(hparams) if hparams is not None else None
        hparams = optim.member_hparams(  # validated on the host, once
            self.recipe, num, **({} if host is None else {
                "learning_rate": host.learning_rate, "weight_decay": host.weight_decay,
                "label_smoothing": (np.zeros(num) if host.label_smoothing is None
                                    else host.label_smoothing)}))
        smoothing = bool(np.any(hparams.label_smoothing > 0))
        if not smoothing:  # the integer-label loss, a static zero
            hparams = hparams.replace(label_smoothing=None)
        if masks is None:
            masks = self._all_true(num)
        mesh, padded = self._placement(num)
        # One transfer at the start: the step and the keys pick the epochs' permutations.
        steps, key_data = distributed.host((state.step, jax.random.key_data(noise_keys)))
        first_step = int(np.asarray(steps).reshape(-1)[0])
        keys_id = np.asarray(key_data).tobytes()
        num_examples = len(self.dataset.train) if subsets is None else subsets.shape[1]
        placed = self._placed((state, masks, noise_keys, hparams, subsets), num, padded,
                              NamedSharding(mesh, P("seed")))

        def perms(offset: int, num_steps: int) -> tuple[jax.Array, ...]:
            return self._window_perms(placed[2], (keys_id, padded, mesh.size), num_examples,
                                      first_step + offset, num_steps)

        return _Placed(num, mesh, padded, smoothing, subsets is not None, first_step,
                       np.asarray(hparams.learning_rate), *placed, perms)

    def _checked_loss_sums(self, run: _Placed, spans: list[tuple[int, int]], sums: Any,
                           finite: Any) -> np.ndarray:
        """The calls' loss sums ``[C, S]`` (float64), refused if one is not finite.

        ``spans``: ``(first step from the call's start, steps)`` of each of the C chunks or
        intervals; ``sums`` and ``finite``: their host values ``[C, padded S]``.
        """
        finite = np.stack(finite)[:, :run.num]
        if not finite.all():
            index = int(np.nonzero(~finite.all(axis=1))[0][0])
            bad = np.nonzero(~finite[index])[0].tolist()
            lo = run.first_step + spans[index][0]
            hi = lo + spans[index][1]
            raise FloatingPointError(
                f"training loss is NaN/inf for member(s) {bad} between steps {lo} and {hi} "
                f"(learning_rate={[float(run.learning_rates[b]) for b in bad]}); "
                "lower the learning rate")
        return np.stack(sums).astype(np.float64)[:, :run.num]

    def _unplaced(self, run: _Placed, state: train.TrainState) -> train.TrainState:
        """A trained state back on the member mesh of its S members (the padding dropped)."""
        if run.padded != run.num or run.mesh.size != self.mesh(run.num).size:
            return self.shard(_first(state, run.num))
        return state

    def _window_perms(self, noise_keys: jax.Array, cache_key: tuple, num_examples: int,
                      start_step: int, num_steps: int) -> tuple[jax.Array, ...]:
        """The epochs' permutations (E arrays ``[S, n]``) of a window of training steps.

        The window is ``num_steps`` steps from ``start_step``; E is
        :func:`ltjax.io.data.window_epochs`; ``cache_key`` names the members (their noise
        keys' bytes) and their placement (padded count, devices).

        Each epoch's permutation (:func:`ltjax.io.data.epoch_permutation` of the
        member's ``'order'`` stream) is computed once and kept while the next
        window may need it: a segment cut into many calls (evaluations,
        checkpoints, telemetry) no longer recomputes the permutations of its
        epochs at every call (tens of milliseconds each for MNIST's 55,000
        examples). The integers are the same as :func:`ltjax.io.data.batch_indices`'s.
        """
        per_epoch = num_examples // self.recipe.batch_size
        first = start_step // per_epoch
        window = range(first, first + data.window_epochs(num_steps, per_epoch))
        cache = {k: v for k, v in self._epoch_perms.items()
                 if k[:2] == (cache_key, num_examples) and k[2] >= first}
        fn = self._program(("epoch_perm", cache_key[1:], num_examples), lambda: jax.jit(jax.vmap(
            lambda key, epoch: data.epoch_permutation(rng.stream(key, "order"), epoch,
                                                      num_examples), in_axes=(0, None))))
        for epoch in window:
            if (cache_key, num_examples, epoch) not in cache:
                cache[cache_key, num_examples, epoch] = fn(noise_keys, np.int32(epoch))
        self._epoch_perms = cache  # this window's epochs and later ones: the next call's
        return tuple(cache[cache_key, num_examples, e] for e in window)

    def _all_true(self, num: int) -> PyTree:
        abstract = self.abstract_params
        fn = self._program(("all_true", num), lambda: jax.jit(lambda: jax.tree.map(
            lambda p: jnp.ones((num, *p.shape), bool), abstract)))
        return fn()

    def _checked_subsets(self, subsets: Any, num: int) -> np.ndarray:
        """``subsets`` as int32 ``[S, n]``, refused unless they index the training split."""
        host = np.asarray(distributed.host(subsets))
        size = len(self.dataset.train)
        if host.ndim != 2 or host.shape[0] != num:
            raise ValueError(f"subsets must have shape ({num}, n) (one subset per member), "
                             f"got {host.shape}")
        if not np.issubdtype(host.dtype, np.integer):
            raise ValueError(f"subsets must be integer indices, got dtype {host.dtype}")
        if host.size and (host.min() < 0 or host.max() >= size):
            raise ValueError(f"subsets must index the training split [0, {size}), got values "
                             f"in [{host.min()}, {host.max()}]")
        if host.shape[1] < self.recipe.batch_size:
            raise ValueError(f"subsets of {host.shape[1]} examples are smaller than a batch "
                             f"({self.recipe.batch_size})")
        return host.astype(np.int32)

    def _build_train(self, mesh: Mesh, num_steps: int, with_subsets: bool = False) -> Callable:
        """``(state, masks, keys, hparams, subsets, perms, train arrays) -> (state, loss sums,
        finite)``: ``num_steps`` steps of every member."""
        unroll = self.strategy == "unrolled_loop"
        model, recipe, reparam = self._program_model, self.recipe, self.reparam

        def one(state, masks, key, hparams, subset, perms, arrays):
            return train.train_steps(model, recipe, arrays, state, masks, key,
                                     num_steps=num_steps, unroll=unroll, hparams=hparams,
                                     reparam=reparam, subset=subset, perms=jnp.stack(perms))

        subset_axis = 0 if with_subsets else None
        local = _map_local_members(one, self.strategy,
                                   in_axes=(0, 0, 0, 0, subset_axis, 0, None),
                                   block=self.member_block)
        subset_spec = P("seed") if with_subsets else P()
        sharded = jax.shard_map(
            local, mesh=mesh,
            in_specs=(P("seed"), P("seed"), P("seed"), P("seed"), subset_spec, P("seed"), P()),
            out_specs=(P("seed"), P("seed")), check_vma=False,
        )

        @jax.jit
        def jitted(state, masks, keys, hparams, subsets, perms, arrays):
            state, losses = sharded(state, masks, keys, hparams, subsets, perms, arrays)
            return state, losses.sum(axis=1), jnp.all(jnp.isfinite(losses), axis=1)

        return jitted

    def _build_train_evaluate(self, mesh: Mesh, num_intervals: int, interval: int,
                              splits: tuple[str, ...], with_subsets: bool) -> Callable:
        """One program: ``num_intervals`` x (``interval`` training steps, then the evaluation
        of every split), per member as :meth:`_build_train` and :meth:`_build_eval`; the
        arguments of the training program, then the splits' arrays."""
        batch_sizes = {s: self.split_eval_batch_size(s) for s in splits}
        model, recipe, reparam = self._program_model, self.recipe, self.reparam

        def one(state, masks, key, hparams, subset, perms, train_arrays, eval_arrays):
            perms = jnp.stack(perms)
            first_epoch = state.step // (perms.shape[-1] // recipe.batch_size)

            def train_then_evaluate(state, _):
                state, losses = train.train_steps(
                    model, recipe, train_arrays, state, masks, key, num_steps=interval,
                    hparams=hparams, reparam=reparam, subset=subset, perms=perms,
                    perms_epoch=first_epoch)
                params = state.params if reparam.is_identity else train.model_params(
                    state, masks, reparam=reparam)
                metrics = {s: train.evaluate(model, params, state.batch_stats, eval_arrays[s],
                                             batch_size=batch_sizes[s]) for s in splits}
                return state, (losses.sum(), jnp.all(jnp.isfinite(losses)), metrics)

            return jax.lax.scan(train_then_evaluate, state, None, length=num_intervals)

        subset_axis = 0 if with_subsets else None
        local = _map_local_members(one, self.strategy,
                                   in_axes=(0, 0, 0, 0, subset_axis, 0, None, None),
                                   block=self.member_block)
        sharded = jax.shard_map(
            local, mesh=mesh,
            in_specs=(P("seed"), P("seed"), P("seed"), P("seed"),
                      P("seed") if with_subsets else P(), P("seed"), P(), P()),
            out_specs=(P("seed"), (P("seed"), P("seed"), P("seed"))), check_vma=False)

        @jax.jit
        def jitted(state, masks, keys, hparams, subsets, perms, train_arrays, eval_arrays):
            state, (sums, finite, metrics) = sharded(state, masks, keys, hparams, subsets,
                                                     perms, train_arrays, eval_arrays)
            return state, sums, finite, metrics

        return jitted

    # -- evaluate

    def model_params(self, state: train.TrainState, masks: PyTree | None = None) -> PyTree:
        """The model's params ``[S, ...]`` of stacked states (reparameterisation applied, masked).

        Under the identity this is ``state.params`` itself (already masked).
        """
        if self.reparam.is_identity:  # kept masked by the masked update
            return state.params
        reparam = self.reparam
        fn = self._program(("model_params", masks is None), lambda: jax.jit(jax.vmap(
            lambda s, m: train.model_params(s, m, reparam=reparam))))
        return fn(state, masks)

    def evaluate(self, state: train.TrainState, split: str,
                 masks: PyTree | None = None) -> dict[str, np.ndarray]:
        """Loss and accuracy ``[S]`` of every member on ``split``.

        ``masks`` matter only for non-identity reparameterisations (the
        identity's params are kept masked).
        """
        return self.evaluate_params(self.model_params(state, masks), state.batch_stats, split)

    def evaluate_params(self, params: PyTree, batch_stats: PyTree,
                        split: str) -> dict[str, np.ndarray]:
        """Loss and accuracy ``[S]`` of stacked ``params`` / ``batch_stats`` ``[S, ...]``.

        Any stack works: members, or the points of an interpolation path.
        """
        out = self._evaluate_stacked(params, batch_stats, split, "metrics")
        return {k: np.asarray(v) for k, v in distributed.host(out).items()}

    def predict_params(self, params: PyTree, batch_stats: PyTree, split: str) -> np.ndarray:
        """Logits ``[S, N, C]`` of stacked ``params`` / ``batch_stats`` ``[S, ...]`` on ``split``.

        Example:
            >>> from ltjax import models
            >>> from ltjax.engine import optim
            >>> from ltjax.io import data
            >>> from ltjax.engine.executor import Executor
            >>> model, dataset = models.create("mlp", widths=(8,)), data.synthetic((8, 8, 1), 64)
            >>> executor = Executor(model, dataset, optim.Recipe(batch_size=16))
            >>> import jax
            >>> from ltjax.core import rng
            >>> state = executor.init(rng.replicate_keys(0, 2))
            >>> logits = executor.predict_params(state.params, state.batch_stats, "test")
            >>> logits.shape                               # [S, N, C]
            (2, 64, 10)
            >>> probs = jax.nn.softmax(logits).mean(0)     # the ensemble's predictions
        """
        out = self._evaluate_stacked(params, batch_stats, split, "logits")
        return np.asarray(distributed.host(out))[:, :self._host_splits[split].y.shape[0]]

    def _evaluate_stacked(self, params: PyTree, batch_stats: PyTree, split: str,
                          output: str) -> Any:
        """The eval program on stacked trees padded over the devices, unpadded after."""
        num = _num_members(params)
        mesh, padded = self._placement(num)
        params, batch_stats = self._placed((params, batch_stats), num, padded,
                                           NamedSharding(mesh, P("seed")))
        fn = self._program(("eval", padded, mesh.size, split, output),
                           lambda: self._build_eval(mesh, split, output))
        out = fn(params, batch_stats, self.device_split(split, mesh.size, for_eval=True))
        return _first(out, num)

    def _build_eval(self, mesh: Mesh, split: str, output: str) -> Callable:
        """Per-member :func:`ltjax.engine.train.evaluate` (``'metrics'``) or ``predict``
        (``'logits'``): ``(params, batch_stats, the split's arrays) -> output``."""
        unroll = self.strategy == "unrolled_loop"
        per_member = {"metrics": train.evaluate, "logits": train.predict}[output]
        model, batch_size = self._program_model, self.split_eval_batch_size(split)

        def one(params, batch_stats, arrays):
            return per_member(model, params, batch_stats, arrays, batch_size=batch_size,
                              unroll=unroll)

        local = _map_local_members(one, self.strategy, in_axes=(0, 0, None),
                                   block=self.member_block)
        sharded = jax.shard_map(local, mesh=mesh, in_specs=(P("seed"), P("seed"), P()),
                                out_specs=P("seed"), check_vma=False)
        return jax.jit(sharded)

    def recompute_batch_stats(self, state: train.TrainState, *, num_batches: int | None = 20,
                              batch_size: int | None = None, key: jax.Array | None = None,
                              augment: bool = False) -> train.TrainState:
        """``state`` with BatchNorm statistics recomputed on training batches.

        The same batches (order and augmentation from ``key``) serve every
        member. See :meth:`recomputed_batch_stats`.
        """
        stats = self.recomputed_batch_stats(self.model_params(state), state.batch_stats,
                                            num_batches=num_batches, batch_size=batch_size,
                                            key=key, augment=augment)
        return self.shard(state.replace(batch_stats=stats))

    def recomputed_batch_stats(self, params: PyTree, batch_stats: PyTree, *,
                               num_batches: int | None = 20, batch_size: int | None = None,
                               key: jax.Array | None = None, augment: bool = False) -> PyTree:
        """BatchNorm statistics ``[S, ...]`` of stacked ``params`` recomputed on training data.

        The cumulative average of the statistics of ``num_batches`` training
        batches (:func:`ltjax.engine.train.recompute_batch_stats`), the same batches
        for every member.

        Args:
          params: stacked model params ``[S, ...]``.
          batch_stats: their BatchNorm statistics ``[S, ...]`` (the structure).
          num_batches: batches to average over; None: one full epoch (every
            training example once, ``len(train) // batch_size`` batches).
          batch_size: examples per batch (default: the recipe's).
          key: a JAX key (default ``jax.random.key(0)``) of the batches' order
            (``data.batch_indices(key, ...)``) and, with ``augment``, their
            augmentation (``fold_in(stream(key, 'augment'), i)`` for batch i).
          augment: apply the dataset's training augmentation (CIFAR's crop and
            flip; nothing for datasets without one). ``num_batches=None,
            augment=True`` is the REPAIR notebooks' reset (Jordan et al. 2023):
            a cumulative average over one augmented pass of the training set.
            The default, 20 unaugmented batches, is cheaper.

        Example:
            >>> from ltjax import models
            >>> from ltjax.core import rng
            >>> from ltjax.engine import optim
            >>> from ltjax.io import data
            >>> from ltjax.engine.executor import Executor
            >>> executor = Executor(models.create("mlp_bn", widths=(8,)),
            ...                     data.synthetic((8, 8, 1), 64), optim.Recipe(batch_size=16))
            >>> state = executor.init(rng.replicate_keys(0, 2))
            >>> stats = executor.recomputed_batch_stats(state.params, state.batch_stats,
            ...                                         num_batches=None, augment=True)
            >>> stats["BatchNorm_0"]["mean"].shape    # [S, ...], from 4 batches of 16
            (2, 8)
        """
        if not jax.tree.leaves(batch_stats):
            return batch_stats
        batch_size = batch_size or self.recipe.batch_size
        num_examples = len(self.dataset.train)
        if not isinstance(batch_size, int) or not 1 <= batch_size <= num_examples:
            raise ValueError(f"batch_size must be an int in [1, {num_examples}], "
                             f"got {batch_size!r}")
        if num_batches is None:
            num_batches = num_examples // batch_size
        if not isinstance(num_batches, int) or num_batches < 1:
            raise ValueError(f"num_batches must be an int >= 1 or None (one epoch), "
                             f"got {num_batches!r}")
        num = _num_members(params)
        block = self.member_block  # 1 under 'unrolled_loop'
        padded = num if block is None else -(-num // block) * block
        sharding = self.seed_sharding(padded)
        params, batch_stats = self._placed((params, batch_stats), num, padded, sharding)
        arrays = self.device_split("train", sharding.num_devices, for_eval=False)
        key = jax.random.key(0) if key is None else key
        index = data.batch_indices(key, 0, num_steps=num_batches,
                                   num_examples=arrays.y.shape[0], batch_size=batch_size)
        model = self._program_model
        augmented = bool(augment) and arrays.augment == "cifar"

        def build():
            def recompute(params, batch_stats, arrays, index, augment_key):
                def batch(i):
                    x = arrays.x[index[i]]
                    if augmented:  # on raw pixels, as training does
                        x = data.augment_cifar(jax.random.fold_in(augment_key, i),
                                               x.astype(jnp.float32))
                    return data.normalize(x, arrays.mean, arrays.std)

                return _map_local_members(lambda p, b: train.recompute_batch_stats(
                    model, p, b, batch_fn=batch, num_batches=index.shape[0]),
                    "scan_vmap", in_axes=(0, 0), block=block)(params, batch_stats)
            return jax.jit(recompute)

        stats = self._program(("recompute", augmented), build)(
            params, batch_stats, arrays, index, rng.stream(key, "augment"))
        return stats if padded == num else _first(stats, num)


def _init_one(model: Any, recipe: optim.Recipe, input_shape: tuple, reparam: reparam_lib.Reparam,
              key: jax.Array, reparam_args: PyTree | None = None) -> train.TrainState:
    return train.init_state(model, recipe, key, input_shape, reparam=reparam,
                            reparam_args=reparam_args)


def _device_sets(stacked: PyTree) -> set[frozenset]:
    """The sets of devices the tree's committed JAX arrays live on (host arrays: none)."""
    return {frozenset(x.devices()) for x in jax.tree.leaves(stacked)
            if isinstance(x, jax.Array) and x.committed}


def _pad(stacked: PyTree, num: int, padded: int) -> PyTree:
    """Leaves ``[num, ...]`` -> ``[padded, ...]`` by repeating the last member.

    One jitted program per tree (eager, each leaf shape compiled its own gather).
    """
    if padded == num:
        return stacked
    index = np.concatenate([np.arange(num), np.full(padded - num, num - 1)])
    return _gather(stacked, index)


@jax.jit
def _gather(stacked: PyTree, index: jax.Array) -> PyTree:
    return jax.tree.map(lambda x: x[index], stacked)


@functools.partial(jax.jit, static_argnums=1)
def _first(stacked: PyTree, num: int) -> PyTree:
    """The first ``num`` members of every leaf (one program per tree, not per leaf)."""
    return jax.tree.map(lambda x: x[:num], stacked)


def _num_members(stacked: PyTree) -> int:
    leaves = jax.tree.leaves(stacked)
    if not leaves or jnp.ndim(leaves[0]) == 0:
        raise ValueError("expected a stacked tree with a leading member axis [S, ...]")
    return int(leaves[0].shape[0])

