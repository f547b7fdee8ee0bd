"""Plumbing shared by the studies: config -> dataset, model, recipe, executor; workdirs."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from ltjax import checkpoint, data, models, results, train


def to_dict(config: ml_collections.ConfigDict | dict) -> dict:
    """A plain JSON-able dict of ``config`` (tuples become lists)."""
    plain = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(plain, default=list))


def prepare_workdir(workdir: str | pathlib.Path, config: Any) -> pathlib.Path:
    """Create ``workdir`` and write ``config.json``; refuse a workdir of another config.

    Raises:
      ValueError: the workdir holds a ``config.json`` that differs from ``config``
        (the message lists the differing keys).
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    current = to_dict(config)
    if path.exists():
        saved = results.read_json(path)
        if saved != current:
            keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise ValueError(
                f"workdir {str(workdir)!r} holds a run with a different config (keys {keys}); "
                "use a new --workdir or the same config to resume"
            )
    else:
        results.write_json(path, current)
    return workdir


def build_dataset(config: Any) -> data.Dataset:
    """The dataset named by ``config.dataset`` (validation carved as configured)."""
    return data.load(
        config.dataset, data_dir=config.get("data_dir") or None,
        validation_size=config.get("validation_size", 0),
        validation_seed=config.get("validation_seed", 0),
        test_size=config.get("test_size", 0),
    )


def build_model(config: Any, dataset: data.Dataset) -> Any:
    """The model named by ``config.model`` with ``config.model_kwargs``."""
    kwargs = dict(config.get("model_kwargs") or {})
    return models.create(config.model, num_classes=dataset.num_classes, **kwargs)


def steps(value: str | int, steps_per_epoch: int) -> int:
    """A step string of the config (``'500it'``, ``'2ep'``) in steps."""
    return train.parse_steps(value, steps_per_epoch=steps_per_epoch)


def build_recipe(config: Any, dataset: data.Dataset) -> train.Recipe:
    """The :class:`ltjax.train.Recipe` of ``config.recipe`` (step strings resolved)."""
    r = config.recipe
    if r.batch_size > len(dataset.train):
        raise ValueError(
            f"recipe.batch_size={r.batch_size} is larger than the train split of "
            f"{dataset.name!r} ({len(dataset.train)} examples)"
        )
    per_epoch = len(dataset.train) // r.batch_size
    return train.Recipe(
        optimizer=r.optimizer, learning_rate=r.learning_rate, momentum=r.get("momentum", 0.0),
        nesterov=r.get("nesterov", False), weight_decay=r.get("weight_decay", 0.0),
        warmup_steps=steps(r.get("warmup", 0), per_epoch),
        lr_drop_steps=tuple(steps(s, per_epoch) for s in r.get("lr_drops", ())),
        lr_drop_factor=r.get("lr_drop_factor", 0.1), batch_size=r.batch_size,
        label_smoothing=r.get("label_smoothing", 0.0), augment=r.get("augment", True),
    )


def build_executor(config: Any, model: Any, dataset: data.Dataset,
                   recipe: train.Recipe) -> train.Executor:
    """The :class:`ltjax.train.Executor` with ``config.strategy`` / ``steps_per_call``."""
    return train.Executor(
        model, dataset, recipe, strategy=config.get("strategy", "auto"),
        steps_per_call=config.get("steps_per_call") or None,
        eval_batch_size=config.get("eval_batch_size", 1000),
    )


def setup(config: Any, workdir: str | pathlib.Path) -> tuple[
        pathlib.Path, data.Dataset, train.Recipe, train.Executor]:
    """A study's start: the checked workdir, the dataset, the recipe and the executor."""
    workdir = prepare_workdir(workdir, config)
    dataset = build_dataset(config)
    recipe = build_recipe(config, dataset)
    executor = build_executor(config, build_model(config, dataset), dataset, recipe)
    return workdir, dataset, recipe, executor


def names_of(value: Any, *, field: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """A config list of names as a tuple, checked; comma-separated strings are split.

    ``--config.controls=reinit,oneshot`` reaches a tuple field as the 1-tuple
    ``('reinit,oneshot',)``; this gives ``('reinit', 'oneshot')``. Duplicates
    are dropped, the order kept.

    Raises:
      ValueError: a name not in ``allowed`` (the message names ``field``).

    Example:
        >>> names_of(("none,repair",), field="corrections", allowed=("none", "repair"))
        ('none', 'repair')
    """
    items = [value] if isinstance(value, str) else list(value or ())
    names = tuple(dict.fromkeys(
        v.strip() for item in items for v in str(item).split(",") if v.strip()))
    unknown = [v for v in names if v not in allowed]
    if unknown:
        raise ValueError(f"config.{field} must be among {allowed}; unknown: {unknown}")
    return names


def parse_layer_rates(spec: str | None) -> dict[str, float]:
    """``'Dense_2:0.1,Conv_.*:0.15'`` -> ``{'Dense_2': 0.1, 'Conv_.*': 0.15}``.

    Raises:
      ValueError: an entry is not ``regex:rate`` with a numeric rate.
    """
    rates: dict[str, float] = {}
    for entry in (spec or "").split(","):
        if not entry.strip():
            continue
        pattern, sep, rate = entry.rpartition(":")
        try:
            if not sep or not pattern:
                raise ValueError
            rates[pattern.strip()] = float(rate)
        except ValueError:
            raise ValueError(
                f"layer_rates must look like 'Dense_2:0.1,Conv_.*:0.15', got entry {entry!r}"
            ) from None
    return rates


def train_segment(
    executor: train.Executor, *, state: train.TrainState, masks: Any, noise_keys: Any,
    end: int, eval_every: int, checkpoint_every: int, ckpt_dir: str | pathlib.Path,
    log: results.MetricsLog, tags: dict, splits: list[str], densities: Any,
    progress: bool = True, desc: str = "train", max_checkpoints: int = 2,
) -> train.TrainState:
    """Train from ``state`` (at its step) to ``end``, evaluating and checkpointing; resumable.

    The segment owns ``ckpt_dir`` and the records of ``log`` whose fields
    equal ``tags``. Run again after a kill, it restores its newest good
    checkpoint, drops its records written after that step, and continues;
    run after it finished, it only restores the final state. Each eval step
    (multiples of ``eval_every``, the start and ``end``) appends one record
    per replicate and split: ``{**tags, replicate, step, split, loss,
    accuracy, density}``, plus a ``train_running`` record with the mean
    training loss since the previous eval.

    Args:
      executor: the executor.
      state: stacked start state ``[S]`` (its step is the segment's start).
      masks: stacked masks ``[S]`` or None (dense).
      noise_keys: ``noise`` keys ``[S]``.
      end: the step to train to.
      eval_every: eval interval in steps.
      checkpoint_every: checkpoint interval in steps (the end is always saved).
      ckpt_dir: this segment's checkpoint folder.
      log: the workdir's metrics log.
      tags: fields that identify this segment's records (e.g. level, branch).
      splits: splits to evaluate.
      densities: per-replicate density ``[S]`` written into the records.
      progress: show a progress bar.
      desc: the progress bar's label.
      max_checkpoints: checkpoints kept in ``ckpt_dir``.

    Returns:
      The state at ``end``.
    """
    num = int(np.shape(noise_keys)[0])
    start = int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])
    if end < start:
        raise ValueError(f"end={end} is before the segment's start step {start}")

    def mine(record: dict) -> bool:
        return all(record.get(k) == v for k, v in tags.items())

    def evaluate(step: int, train_loss: np.ndarray | None) -> None:
        rows = []
        for split in splits:
            metrics = executor.evaluate(state, split)
            rows += [{**tags, "replicate": r, "step": step, "split": split,
                      "loss": metrics["loss"][r], "accuracy": metrics["accuracy"][r],
                      "density": float(densities[r])} for r in range(num)]
        if train_loss is not None:
            rows += [{**tags, "replicate": r, "step": step, "split": "train_running",
                      "loss": train_loss[r], "accuracy": None, "density": float(densities[r])}
                     for r in range(num)]
        log.append(rows)

    with checkpoint.Checkpointer(ckpt_dir, max_to_keep=max_checkpoints) as ckpt:
        found = ckpt.restore_latest(like_state=state, like_masks=masks)
        step = start
        if found is not None:
            step, state, _, _ = found
        log.keep_only(lambda r, s=step, f=found: not mine(r) or (f is not None and r["step"] <= s))
        if found is None:
            evaluate(start, None)
        bar = tqdm.tqdm(total=end - start, initial=step - start, disable=not progress,
                        unit="step", desc=desc, leave=False)
        while step < end:
            target = min(end, (step // eval_every + 1) * eval_every)
            state, train_loss = executor.train(state, masks, noise_keys, num_steps=target - step)
            bar.update(target - step)
            step = target
            evaluate(step, train_loss)
            if step % checkpoint_every == 0 or step == end:
                ckpt.save(step, state=state, masks=masks, meta={**tags, "step": step})
        bar.close()
        if start == end and found is None:
            ckpt.save(step, state=state, masks=masks, meta={**tags, "step": step})
    return state


def final_records(log: results.MetricsLog, tags: dict, step: int) -> list[dict]:
    """The segment's records (fields equal to ``tags``) at ``step``."""
    return [r for r in log.read()
            if r["step"] == step and all(r.get(k) == v for k, v in tags.items())]
