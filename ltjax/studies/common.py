"""Plumbing shared by the studies: config -> dataset, model, recipe, executor; workdirs."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import ml_collections

from ltjax import data, models, results, train


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
