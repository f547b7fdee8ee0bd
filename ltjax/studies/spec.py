"""A study's run, parsed once: what every study shares, checked before its workdir exists.

A study is a declaration: its entry turns the ml_collections config into a
frozen :class:`RunSpec` (the dataset, the model's executor, the recipe, the
seeds, the step counts resolved to iterations, the evaluation and checkpoint
cadence) plus the study's own fields, validated against the dataset before
anything is written; then :meth:`RunSpec.open` takes the workdir and returns
the :class:`ltjax.studies.runner.Run` that trains the study's segments. After
the spec exists, the study reads no config field the spec holds.

Example (Colab):
    The spec of a config, before any workdir exists (digits: no download):

    >>> from experiments.configs import lenet_digits
    >>> from ltjax.studies.spec import RunSpec
    >>> spec = RunSpec.from_config(lenet_digits.get_config("quick"), progress=False)
    >>> spec.training_steps, spec.eval_every, spec.num_replicates
    (46, 23, 2)
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ltjax import models
from ltjax.core import rng
from ltjax.engine import executor as executor_lib
from ltjax.engine import optim
from ltjax.io import data
from ltjax.studies import common


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What every study shares, resolved from its config and checked against the dataset.

    Attributes:
      config: the config as plain JSON-able data (what ``config.json`` holds).
      model_name: ``config.model``.
      dataset: the loaded dataset (validation carved, ``transform`` applied).
      recipe: the optimiser recipe with step strings resolved.
      executor: the executor of the model on the dataset.
      seed: ``config.seed``.
      num_replicates: ``config.num_replicates`` (S).
      steps_per_epoch: ``len(train) // batch_size``.
      training_steps: ``config.training_steps`` in steps.
      eval_every: ``config.eval_every`` in steps (at least 1).
      checkpoint_every: ``config.checkpoint_every`` in steps (at least 1).
      max_checkpoints: checkpoints a segment keeps
        (:data:`ltjax.studies.common.MAX_CHECKPOINTS` unless set).
      progress: whether the run says what it does and shows progress bars.
    """

    config: dict
    model_name: str
    dataset: data.Dataset
    recipe: optim.Recipe
    executor: executor_lib.Executor
    seed: int
    num_replicates: int
    steps_per_epoch: int
    training_steps: int
    eval_every: int
    checkpoint_every: int
    max_checkpoints: int
    progress: bool

    @classmethod
    def from_config(cls, config: Any, *, check: Callable[[data.Dataset], None] | None = None,
                    transform: Callable[[data.Dataset], data.Dataset] | None = None,
                    progress: bool = True) -> RunSpec:
        """Parse and check ``config``'s shared fields; nothing is written.

        Args:
          config: the study's ml_collections config.
          check: the study's own checks against the dataset (raise ``ValueError``).
          transform: alters the loaded dataset before anything is built from it
            (e.g. label noise).
          progress: say what is loaded and show progress bars.

        Raises:
          ValueError: a bad shared field (naming it) or what ``check`` refuses.
        """
        common.check_basics(config)
        common.say(f"loading {config.dataset}", progress)
        dataset = common.build_dataset(config)
        if transform is not None:
            dataset = transform(dataset)
        recipe = common.build_recipe(config, dataset)
        per_epoch = len(dataset.train) // recipe.batch_size
        resolved = {}
        for field in ("training_steps", "eval_every", "checkpoint_every"):
            value = config.get(field)
            resolved[field] = (common.steps(value, per_epoch, field=field)
                               if value not in (None, "") else None)
            if resolved[field] is not None and resolved[field] < 1:
                raise ValueError(f"config.{field}={value!r} is less than one step "
                                 f"({per_epoch} steps per epoch); it must be at least 1 step")
        if check is not None:
            check(dataset)
        executor = common.build_executor(config, common.build_model(config, dataset), dataset,
                                         recipe)
        check_memory(executor, config.get("num_replicates") or 1)
        return cls(
            config=common.to_dict(config), model_name=config.model, dataset=dataset,
            recipe=recipe, executor=executor, seed=config.seed,
            num_replicates=config.get("num_replicates") or 1, steps_per_epoch=per_epoch,
            training_steps=resolved["training_steps"] or 0,
            eval_every=resolved["eval_every"] or 1,
            checkpoint_every=resolved["checkpoint_every"] or 1,
            max_checkpoints=config.get("max_checkpoints", common.MAX_CHECKPOINTS),
            progress=progress)

    def require_batch_norm(self) -> None:
        """Refuse a model without BatchNorm (studies of its scales: BatchNorm-only, Early-Bird).

        Raises:
          ValueError: naming ``config.model``.
        """
        if not models.has_batch_norm(self.executor.model):
            raise ValueError(f"config.model={self.model_name!r} has no BatchNorm; "
                             f"use e.g. 'mlp_bn'")

    def replicate_keys(self, num: int | None = None) -> jax.Array:
        """The replicates' keys ``[num]`` (default S): :func:`ltjax.core.rng.replicate_keys`."""
        return rng.replicate_keys(self.seed, num or self.num_replicates)

    def keys(self, num: int | None = None, stream: str | None = None,
             ) -> tuple[jax.Array, jax.Array]:
        """``(init_keys, noise_keys)`` ``[num]`` of the replicates (default S), or of a
        named stream of them (e.g. the data diet's ``'score'`` runs)."""
        keys = self.replicate_keys(num)
        return rng.init_and_noise(keys if stream is None else rng.stream(keys, stream))

    def open(self, workdir: str | pathlib.Path):
        """Take ``workdir`` (:func:`ltjax.studies.common.prepare_workdir`) and return its
        :class:`ltjax.studies.runner.Run`."""
        from ltjax.studies import runner

        workdir = common.prepare_workdir(workdir, self.config)
        devices = self.executor.devices
        held_out = (f", {len(self.dataset.validation)} held out for validation"
                    if self.dataset.validation is not None else "")
        common.say(f"{self.model_name} on {self.dataset.name} ({len(self.dataset.train)} "
                   f"training examples{held_out}), {self.num_replicates} replicate(s) on "
                   f"{min(self.num_replicates, len(devices))} {devices[0].platform.upper()} "
                   f"device(s), strategy {self.executor.strategy}; workdir {workdir}"
                   + ("" if (workdir / "results.csv").exists()  # finished: nothing to compile
                      else " (the first steps compile the programs)"), self.progress)
        return runner.Run(spec=self, workdir=workdir)


def check_memory(executor: executor_lib.Executor, num_members: int) -> None:
    """Refuse ``num_members`` members that cannot fit in memory, before anything is written.

    A lower bound of what training needs: each member's params, their
    gradients and one optimiser moment in float32 (3x the params' bytes), against
    the host's physical memory on CPU or the devices' memory limit elsewhere.
    A run this refuses would fail (or swap) after compiling; one it accepts may
    still need more (activations, the evaluation batch, other moments).

    Raises:
      ValueError: the bound exceeds the memory (naming ``num_replicates``).
    """
    per_member = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                     for x in jax.tree.leaves(executor.abstract_params))
    need = 3 * per_member * num_members
    devices = executor.devices
    if devices[0].platform == "cpu":
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        where = "this machine's memory"
    else:
        limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
        if not all(limits):
            return
        have, where = sum(limits), f"the memory of {len(devices)} {devices[0].platform} device(s)"
    if need > have:
        raise ValueError(
            f"config.num_replicates={num_members}: {num_members} members of "
            f"{per_member / 2**20:.3g} MiB of params need at least {need / 2**30:.3g} GiB to "
            f"train, more than {where} ({have / 2**30:.3g} GiB); lower num_replicates")
