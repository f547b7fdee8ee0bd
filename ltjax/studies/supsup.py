"""SupSup on permuted-pixel tasks: one fixed random network, one supermask per task.

Wortsman et al. 2020, "Supermasks in Superposition" (:mod:`ltjax.methods.supsup`).
Every task x replicate is a member of *one* executor program: the model is
:class:`ltjax.methods.supsup.PermutedInput` around ``config.model``, and each member's
frozen tree holds its replicate's signed-constant weights (shared by all the
tasks of the replicate) and its task's pixel permutation, so member (r, t)
trains task t's scores on task t's permuted data. The tasks' permutations
come from ``config.seed`` (the same tasks for every replicate); a replicate's
weights, each task's scores and its data order come from the replicate's keys
(``fold_in(init or noise key, task)``). Training each task alone, as the
reference does one task after another, gives the same masks: the weights
never change, so tasks do not interact.

After training, each task's test set is read in batches of
``config.inference_batch_size`` (128; in order, the last batch may be
smaller), and for each batch the task is inferred with the tasks' masks in
superposition: one-shot over the whole batch, one-shot over its first
example (the reference's ``data_to_repeat = 1``), and the binary variant
(``config.binary``, whole batch).

The network has ``config.output_size`` outputs (default: the dataset's
classes). The reference's PermutedMNIST GNu configs use ``output_size =
100`` with labels 0..9: the 90 superfluous outputs are never a label, but,
as in the reference, every output counts everywhere. The training loss is
the cross-entropy over all of them (``nn.CrossEntropyLoss``), a prediction
is the argmax over all of them (``output.argmax(dim=1)`` in
``trainers/default.py:test`` and ``adaptors.py``: an argmax on a superfluous
output is wrong), and the entropy ``H`` that task inference differentiates
is the softmax entropy over all of them
(``adaptors.py:se_oneshot_entropy_minimization``).

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import supsup_lenet_digits
    summary = run_supsup(supsup_lenet_digits.get_config("quick"), "/tmp/supsup")
    summary["num_replicates"], summary["num_tasks"], summary["output_size"]
    summary["overall"]               # the means over tasks of the per-task accuracies
    ```

    The same run from a shell: ``python -m experiments.supsup
    --config=experiments/configs/supsup_lenet_digits.py:quick --workdir=/tmp/supsup``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax import models
from ltjax.core import masking, rng, tree
from ltjax.engine import executor as executor_lib
from ltjax.io import data, results
from ltjax.methods import supsup
from ltjax.studies import common, plots
from ltjax.studies.spec import RunSpec

PyTree = Any

#: The per-task fields of ``results.csv`` besides ``task`` and ``replicate``.
FIELDS = ("test_accuracy", "inferred_task_accuracy", "inferred_task_accuracy_first",
          "inferred_task_accuracy_binary", "inferred_test_accuracy")


def _check_config(config: Any) -> tuple[str, int, float, int]:
    kind = config.get("mask", "threshold")
    if kind not in supsup.MASK_KINDS:
        raise ValueError(f"config.mask must be one of {supsup.MASK_KINDS}, got {kind!r}")
    num_tasks = config.get("num_tasks")
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"config.num_tasks must be an int >= 1, got {num_tasks!r}")
    density = config.get("density", 0.5)
    if isinstance(density, bool) or not isinstance(density, int | float) or not (
            0.0 < density <= 1.0):
        raise ValueError(f"config.density must be a kept share in (0, 1], got {density!r}")
    batch = config.get("inference_batch_size", 128)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"config.inference_batch_size must be an int >= 1, got {batch!r}")
    return kind, num_tasks, float(density), batch


def output_size(config: Any, dataset: data.Dataset) -> int:
    """The network's outputs: ``config.output_size``, or the dataset's classes when unset.

    Raises:
      ValueError: ``config.output_size`` not an int, or fewer than the
        dataset's classes (every label must be an output).

    Example:
        >>> import ml_collections
        >>> from ltjax.io import data
        >>> from ltjax.studies import supsup
        >>> ds = data.synthetic((8, 8, 1), 4, num_classes=10)      # labels 0..9
        >>> config = ml_collections.ConfigDict({"model": "lenet_300_100", "output_size": 100})
        >>> supsup.output_size(config, ds), supsup.output_size(ml_collections.ConfigDict(), ds)
        (100, 10)
    """
    size = config.get("output_size")
    if size is None:
        return dataset.num_classes
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or (
            size < dataset.num_classes):
        raise ValueError(f"config.output_size must be an int >= the {dataset.num_classes} "
                         f"classes of {dataset.name!r} (or None for exactly those), "
                         f"got {size!r}")
    return int(size)


def build_model(config: Any, dataset: data.Dataset) -> Any:
    """``config.model`` (with ``config.model_kwargs``) with :func:`output_size` outputs.

    Example:
        >>> import ml_collections
        >>> from ltjax.io import data
        >>> from ltjax.studies import supsup
        >>> ds = data.synthetic((8, 8, 1), 4, num_classes=10)      # labels 0..9
        >>> config = ml_collections.ConfigDict({"model": "lenet_300_100", "output_size": 100})
        >>> supsup.build_model(config, ds).num_classes              # logits [B, 100]
        100
    """
    kwargs = dict(config.get("model_kwargs") or {})
    return models.create(config.model, num_classes=output_size(config, dataset), **kwargs)


def task_permutations(config: Any, input_shape: tuple[int, ...]) -> np.ndarray:
    """The tasks' pixel permutations ``[T, D]`` of ``config`` (from ``config.seed``)."""
    key = jax.random.fold_in(jax.random.key(config.seed), rng.stable_hash("tasks"))
    return np.asarray(supsup.pixel_permutations(
        key, config.num_tasks, supsup.num_positions(input_shape),
        identity_first=config.get("identity_first", False)))


def _inference_program(model: Any, prunable: PyTree, batch_stats: Any, *,
                       binary: bool) -> Any:
    """A jitted ``(weights, masks, x [B, ...], y [B], task) -> (hits [3], correct)``.

    One batch per call: the study loops over batches on the host, since the
    gradient of a conv net inside a rolled loop (``lax.map``) is ~28x slower
    on XLA:CPU (FACTS.md).
    """
    variables = {} if not batch_stats else {"batch_stats": batch_stats}

    def apply_fn(params, x):
        return model.apply({"params": params, **variables}, x, train=False)

    def one_batch(weights, masks, x, y, task):
        kw = dict(prunable=prunable)
        full = supsup.infer_task(apply_fn, weights, masks, x, **kw)
        first = supsup.infer_task(apply_fn, weights, masks, x, first_only=True, **kw)
        both = supsup.infer_task_binary(apply_fn, weights, masks, x, **kw) if binary else (
            jnp.int32(-1))
        params = supsup.superpose(weights, masks, jax.nn.one_hot(full, masks_count(masks)), **kw)
        correct = jnp.sum(jnp.argmax(apply_fn(params, x), axis=-1) == y)
        return jnp.stack([full == task, first == task, both == task]).astype(jnp.int32), correct

    return jax.jit(one_batch)


def masks_count(masks: PyTree) -> int:
    """The task axis of stacked masks."""
    return jax.tree.leaves(masks)[0].shape[0]


def infer_tasks(model: Any, weights: PyTree, masks: PyTree, x: np.ndarray, y: np.ndarray,
                permutations: np.ndarray, *, prunable: PyTree, batch_size: int,
                batch_stats: Any = None, binary: bool = True) -> list[dict]:
    """Task inference on every task's test batches; one dict per task.

    Args:
      model: the (unwrapped) model. All its outputs count, superfluous ones
        too (the reference's rule): the entropy is over every output, and a
        prediction is the argmax over every output.
      weights: its fixed weights.
      masks: the tasks' masks ``[T, ...]``.
      x: the normalized test inputs ``[N, ...]`` (unpermuted); y: labels ``[N]``.
      permutations: ``[T, D]``; task t's test set is ``permute_pixels(x, permutations[t])``.
      prunable: static bools of the masked leaves.
      batch_size: examples per inference batch (the last may be smaller).
      batch_stats: the model's BatchNorm statistics, if any.
      binary: also run the binary variant (else its accuracy is None).

    Returns:
      Per task: ``inferred_task_accuracy`` (share of batches whose one-shot
      whole-batch inference is right), ``..._first`` (first example only),
      ``..._binary``, and ``inferred_test_accuracy`` (accuracy with each
      batch's one-shot whole-batch inferred task).
    """
    program = _inference_program(model, prunable, batch_stats, binary=binary)
    num = x.shape[0]
    out = []
    for task, perm in enumerate(permutations):
        xt = supsup.permute_pixels(jnp.asarray(x), jnp.asarray(perm))
        # Every batch dispatched first, then one transfer: no host sync inside the loop.
        outs = [program(weights, masks, xt[start:start + batch_size], y[start:start + batch_size],
                        task) for start in range(0, num, batch_size)]
        host = jax.device_get(outs)
        hits = np.stack([np.asarray(h) for h, _ in host])
        correct = sum(int(c) for _, c in host)
        out.append({"inferred_task_accuracy": float(hits[:, 0].mean()),
                    "inferred_task_accuracy_first": float(hits[:, 1].mean()),
                    "inferred_task_accuracy_binary": float(hits[:, 2].mean()) if binary else None,
                    "inferred_test_accuracy": correct / num})
    return out


@dataclasses.dataclass(frozen=True)
class SupSupSpec:
    """A SupSup study, parsed and checked once at its entry (Wortsman et al. 2020).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`).
      mask: how scores become a task's mask (:data:`ltjax.methods.supsup.MASK_KINDS`).
      num_tasks: the permuted-pixel tasks (T).
      density: each layer's kept share under ``'top_k'`` masks (unused by ``'threshold'``).
      inference_batch_size: test examples per task-inference batch.
      binary: also infer tasks by the binary variant.
      output_size: the network's outputs (:func:`output_size`).
      model: ``config.model`` with ``output_size`` outputs (:func:`build_model`), unwrapped.
      permutations: the tasks' pixel permutations ``[T, D]`` (:func:`task_permutations`).
      prunable: the masked leaves of the wrapped model's params.
      executor: the members' executor: :class:`ltjax.methods.supsup.PermutedInput`
        around ``model``, with the task supermask reparameterisation.

    Example:
        The spec of the digits quick config, before any workdir exists:

        >>> from experiments.configs import supsup_lenet_digits
        >>> from ltjax.studies.supsup import SupSupSpec
        >>> spec = SupSupSpec.from_config(supsup_lenet_digits.get_config("quick"),
        ...                               progress=False)
        >>> spec.mask, spec.num_tasks, spec.density, spec.output_size, spec.permutations.shape
        ('threshold', 3, 0.5, 100, (3, 64))
    """

    run: RunSpec
    mask: str
    num_tasks: int
    density: float
    inference_batch_size: int
    binary: bool
    output_size: int
    model: Any
    permutations: np.ndarray
    prunable: PyTree
    executor: executor_lib.Executor

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> SupSupSpec:
        """Parse and check ``config``; nothing is written.

        Raises:
          ValueError: a bad ``mask``, ``num_tasks``, ``density``, ``inference_batch_size``
            or ``output_size`` (naming the field).
        """
        kind, num_tasks, density, batch_size = _check_config(config)
        fields: dict = {}
        run = RunSpec.from_config(config, check=lambda dataset: fields.update(
            output_size=output_size(config, dataset)), progress=progress)
        model = build_model(config, run.dataset)
        wrapped = run.executor.like(model=supsup.PermutedInput(model=model))
        selection = masking.prunable(wrapped.abstract_params)
        return cls(run=run, mask=kind, num_tasks=num_tasks, density=density,
                   inference_batch_size=batch_size, binary=bool(config.get("binary", True)),
                   model=model,
                   permutations=task_permutations(config, run.dataset.input_shape),
                   prunable=selection, executor=wrapped.like(
                       reparam=supsup.task_supermask(selection, kind=kind, density=density)),
                   **fields)


@common.study_entry
def run_supsup(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Train every task's supermask, infer tasks on the test sets; ``results.csv``, a plot.

    ``results.csv``: ``task, replicate`` and :data:`FIELDS` (``test_accuracy``:
    the task given), with mean and std rows per task;
    ``plots/supsup.png``: per-task accuracy with the task given and the share
    of batches whose task is inferred right. Resumable (the training segment
    checkpoints; the inference is recomputed, deterministically).

    Raises:
      ValueError: a bad ``mask``, ``num_tasks``, ``density``,
        ``inference_batch_size`` or ``output_size`` (:meth:`SupSupSpec.from_config`;
        before any work).
    """
    study = SupSupSpec.from_config(config, progress=progress)
    spec, executor, selection = study.run, study.executor, study.prunable
    kind, num_tasks, density = study.mask, study.num_tasks, study.density
    run = spec.open(workdir)
    dataset, num, perms = spec.dataset, spec.num_replicates, study.permutations
    init_keys, noise_keys = spec.keys()
    grid = [(r, t) for r in range(num) for t in range(num_tasks)]
    fold = jax.vmap(jax.random.fold_in)
    tasks = jnp.array([t for _, t in grid], jnp.uint32)
    member_init = fold(init_keys[np.array([r for r, _ in grid])], tasks)
    member_noise = fold(noise_keys[np.array([r for r, _ in grid])], tasks)
    state = jax.device_get(executor.init(member_init))
    weights = tree.index(state.frozen["weights"], np.array([r * num_tasks for r, _ in grid]))
    weights = {**weights, "permutation": perms[[t for _, t in grid]].astype(np.float32)}
    state = executor.shard(state.replace(frozen={**state.frozen, "weights": weights}))

    def masks_of(scores):
        return jax.vmap(lambda s: supsup.task_masks(s, selection, kind=kind, density=density))(
            scores)

    start_density = np.asarray(jax.vmap(lambda m: masking.density(m, selection))(
        masks_of(state.params)))
    tags = [{"task": t, "replicate": r} for r, t in grid]
    final = run.segment("supsup", state=state, noise_keys=member_noise,
                        tags={"method": "supsup"}, member_tags=tags, densities=start_density,
                        executor=executor,
                        desc=f"supsup ({kind}): {num_tasks} tasks x {num} replicate(s)")
    metrics, final = final.curves.final_metrics("test"), final.state
    host = jax.device_get(final)
    masks = masks_of(host.params)
    end_density = np.asarray(jax.vmap(lambda m: masking.density(m, selection))(masks))
    common.say(f"inferring tasks on {num_tasks} test sets, batches of "
               f"{study.inference_batch_size}", spec.progress)
    x = np.asarray(data.normalize(dataset.test.x, dataset.mean, dataset.std))
    y = np.asarray(dataset.test.y)
    inferred = []
    for r in range(num):
        members = np.arange(r * num_tasks, (r + 1) * num_tasks)
        stats = tree.index(host.batch_stats, r * num_tasks)
        inferred += infer_tasks(
            study.model, tree.index(host.frozen["weights"], r * num_tasks)["model"],
            tree.index(masks, members)["model"], x, y, perms, prunable=selection["model"],
            batch_size=study.inference_batch_size,
            batch_stats=stats.get("model") if stats else None, binary=study.binary)
    rows = [{"method": "supsup", "mask": kind, "task": t, "replicate": r,
             "density": float(end_density[m]), "test_accuracy": float(metrics["accuracy"][m]),
             **inferred[m]} for m, (r, t) in enumerate(grid)]
    table = results.write_table(run.workdir / "results.csv", rows, by=("method", "mask", "task"),
                                fields=("density",) + FIELDS)
    plots.plot_supsup(rows, run.workdir / "plots" / "supsup.png",
                      title=f"SupSup ({kind}), {spec.model_name} on permuted "
                            f"{plots.dataset_label(dataset.name)}: {num_tasks} tasks, "
                            f"{num} replicate(s)")
    overall = {f: (None if any(r[f] is None for r in rows)
                   else float(np.mean([r[f] for r in rows]))) for f in FIELDS}
    return {**table, "overall": overall,
            "num_replicates": num, "num_tasks": num_tasks, "mask": kind,
            "output_size": study.output_size}

