"""Model soups and WiSE-FT over a fine-tuning sweep (Wortsman et al. 2022, ICML and CVPR).

1. **Pretrain** one model with ``config.recipe`` for ``config.pretrain.steps``
   on the training images, each rotated by its own angle drawn from
   ``+-config.pretrain.rotation`` degrees (0: the clean images): a broader
   pre-training distribution than the fine-tuning one, as CLIP's is for
   ImageNet. Or load it from a dense-training workdir
   (``config.pretrain.workdir``, replicate ``config.pretrain.replicate``).
2. **Fine-tune** K variants from it on the clean training images over the
   grid ``config.finetune``: learning rate x weight decay x label smoothing x
   augmentation x epochs x data order. Learning rate, weight decay and label
   smoothing are per-member hyperparameters of the executor
   (:class:`ltjax.engine.optim.Hyperparams`), so every (learning rate, weight
   decay, label smoothing, data order) of one augmentation setting trains
   as one program (members vmapped / sharded over devices), one program per
   augmentation setting and length. The optimiser is the paper's (AdamW,
   cosine decay after a linear warm-up: ``config.finetune.optimizer``,
   ``schedule``, ``warmup``), and each length is its own run from theta_0,
   its schedule decaying over that run (the reference's ``finetune.py``),
   not a snapshot of a longer run.
3. **Evaluate** on validation (the held-out split that greedy and learned
   soups select on), test, and a shifted test set (``config.shift``: the
   test images rotated by a fixed angle, or Gaussian-noised; deterministic):
   the pretrained model, every ingredient, the uniform, greedy and learned
   soups (:mod:`ltjax.core.soups`; the learned soup fits a weight per parameter
   tensor and a logit temperature with AdamW, as the reference's
   ``learned_bylayer.py``) and the output-space ensemble (mean of the
   ingredients' softmax outputs).
4. **WiSE-FT**: the path ``(1 - alpha) theta_0 + alpha theta_k`` from the
   pretrained model to each fine-tune, at ``config.wise_ft.num_alphas``
   alphas, interpolating everything (``'interpolate'``) and/or keeping the
   fine-tuned head (``'fine_tuned'``, head = ``config.wise_ft.head``).

Nets with BatchNorm get their statistics recomputed on training data for
every averaged model (``config.recompute_batch_stats``, default on).
Resumable: training segments restore from their checkpoints, and each
evaluation phase is written to ``metrics.jsonl`` in one append and skipped
when found there, so a killed run resumes to the same files.

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import soups_lenet_digits
    summary = run_soups(soups_lenet_digits.get_config("quick"), "/tmp/soups")
    sorted(summary)                  # ['rows', 'wise_ft']
    summary["rows"]                  # summary.csv: the ingredients and each soup
    ```

    The same run from a shell: ``python -m experiments.soups
    --config=experiments/configs/soups_lenet_digits.py:quick --workdir=/tmp/soups``.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from ltjax import models
from ltjax.core import rng, tree
from ltjax.core import soups as soups_lib
from ltjax.engine import executor as executor_lib
from ltjax.engine import optim, train
from ltjax.io import checkpoint, data, results
from ltjax.studies import common, imp_runs, plots
from ltjax.studies.spec import RunSpec

SPLITS = ("validation", "test", "shifted")
HEAD_MODES = ("interpolate", "fine_tuned")
SHIFTS = ("rotate", "noise")
SOUPS = ("uniform", "greedy", "learned", "ensemble")


# --------------------------------------------------------------------------- config pieces


@dataclasses.dataclass(frozen=True)
class ShiftSpec:
    """``config.shift``: the distribution shift of the test set (:func:`shifted_split`).

    Attributes:
      kind: ``'rotate'`` or ``'noise'`` (:data:`SHIFTS`).
      amount: the rotation in degrees, or the noise's std in pixel units.
      seed: the noise's seed.
    """

    kind: str
    amount: float
    seed: int = 0


def shifted_split(split: data.Split, shift: ShiftSpec) -> data.Split:
    """The distribution-shifted copy of ``split`` that ``shift`` names.

    ``kind='rotate'``: every image rotated by ``amount`` degrees
    (:func:`ltjax.io.data.rotate`); ``kind='noise'``: Gaussian noise of std
    ``amount`` in pixel units, seeded by ``seed`` (:func:`ltjax.io.data.add_noise`).

    Example:
        >>> import numpy as np
        >>> from ltjax.io import data
        >>> from ltjax.studies import soups
        >>> image = np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1)    # [[0, 1], [2, 3]]
        >>> split = data.Split(image, np.zeros(1, np.int32))
        >>> soups.shifted_split(split, soups.ShiftSpec("rotate", 90.0)).x[0, :, :, 0]
        array([[1, 3],
               [0, 2]], dtype=uint8)
    """
    if shift.kind == "rotate":
        return data.rotate(split, degrees=shift.amount)
    if shift.kind == "noise":
        return data.add_noise(split, std=shift.amount, seed=shift.seed)
    raise ValueError(f"shift.kind must be one of {SHIFTS}, got {shift.kind!r}")


def _shift_spec(shift: Any) -> ShiftSpec:
    """``config.shift``, checked."""
    if shift.kind not in SHIFTS:
        raise ValueError(f"shift.kind must be one of {SHIFTS}, got {shift.kind!r}")
    return ShiftSpec(kind=shift.kind, amount=float(shift.amount),
                     seed=int(shift.get("seed", ShiftSpec.seed)))


@dataclasses.dataclass(frozen=True)
class Group:
    """Fine-tunes that share a recipe: one program, data orders on the seed axis."""

    index: int
    recipe: optim.Recipe
    ends: tuple[int, ...]  # the epochs' step counts, increasing
    epochs: tuple[str, ...]  # the same, as written in the config


def finetune_grid(config: Any, base: optim.Recipe, steps_per_epoch: int,
                  dataset: data.Dataset) -> tuple[tuple[Group, ...], tuple[dict, ...]]:
    """The fine-tuning groups and the ingredients (one dict of hyperparameters each).

    Ingredient ``i`` enumerates groups (learning rate, weight decay, label
    smoothing, augmentation, in ``itertools.product`` order), then epochs,
    then data orders. The groups' recipe is ``base`` with the fine-tuning
    optimiser, schedule and warm-up of ``config.finetune`` (the paper's:
    AdamW, cosine decay after a linear warm-up, Wortsman et al. 2022 and the
    model-soups ``finetune.py``); a cosine schedule decays over each run's
    own length (:func:`run_recipe`).

    Raises:
      ValueError: an empty grid axis, repeated or non-positive epochs, fewer
        than one data order, augmentation on a dataset without one.

    Example:
        >>> from experiments.configs import soups_lenet_digits
        >>> from ltjax.engine import optim
        >>> from ltjax.io import data
        >>> from ltjax.studies import soups
        >>> config = soups_lenet_digits.get_config("quick")
        >>> base = optim.Recipe(optimizer="adam", learning_rate=1e-3, batch_size=60)
        >>> groups, ingredients = soups.finetune_grid(config, base, 18, data.load("digits"))
        >>> len(groups), len(ingredients), groups[0].ends, groups[0].recipe.warmup_steps
        (2, 8, (18, 36), 5)
    """
    ft = config.finetune
    axes = {name: tuple(ft[name]) for name in
            ("learning_rate", "weight_decay", "label_smoothing", "augment", "epochs")}
    for name, values in axes.items():
        if not values:
            raise ValueError(f"finetune.{name} must list at least one value")
    if ft.data_orders < 1:
        raise ValueError(f"finetune.data_orders must be >= 1, got {ft.data_orders}")
    if any(axes["augment"]) and dataset.augment is None:
        raise ValueError(f"finetune.augment=True has no effect on {dataset.name!r}: ltjax has "
                         "no augmentation for it (only CIFAR's crop + flip); use (False,)")
    ends = [common.steps(e, steps_per_epoch, field="finetune.epochs") for e in axes["epochs"]]
    if min(ends) < 1 or len(set(ends)) != len(ends):
        raise ValueError(f"finetune.epochs must be distinct positive lengths, got "
                         f"{list(axes['epochs'])} = {ends} steps")
    order = np.argsort(ends)
    ends_sorted = tuple(int(ends[i]) for i in order)
    epochs_sorted = tuple(axes["epochs"][i] for i in order)
    schedule = ft.get("schedule", base.schedule)
    base = dataclasses.replace(
        base, optimizer=ft.get("optimizer", base.optimizer), schedule=schedule,
        warmup_steps=common.steps(ft.get("warmup", 0) or 0, steps_per_epoch,
                                  field="finetune.warmup"),
        weight_decay_mode=ft.get("weight_decay_mode") or None,
        total_steps=max(ends) if schedule == "cosine" else 0,
        lr_drop_steps=())  # checks the recipe at the longest run, before any training
    for epochs, end in zip(epochs_sorted, ends_sorted, strict=True):  # each run's schedule
        try:
            run_recipe(base, end)
        except ValueError:
            raise ValueError(f"finetune.warmup ({base.warmup_steps} steps) must be shorter than "
                             f"every run of finetune.epochs ({epochs!r} = {end} steps)") from None
    groups, ingredients = [], []
    for g, (lr, wd, ls, aug) in enumerate(itertools.product(
            axes["learning_rate"], axes["weight_decay"], axes["label_smoothing"],
            axes["augment"])):
        recipe = dataclasses.replace(base, learning_rate=float(lr), weight_decay=float(wd),
                                     label_smoothing=float(ls), augment=bool(aug))
        groups.append(Group(index=g, recipe=recipe, ends=ends_sorted, epochs=epochs_sorted))
        for epochs, end in zip(epochs_sorted, ends_sorted, strict=True):
            for o in range(ft.data_orders):
                ingredients.append({
                    "ingredient": len(ingredients), "group": g, "learning_rate": float(lr),
                    "weight_decay": float(wd), "label_smoothing": float(ls),
                    "augment": bool(aug), "epochs": epochs, "steps": end, "data_order": o})
    return tuple(groups), tuple(ingredients)


def run_recipe(recipe: optim.Recipe, end: int) -> optim.Recipe:
    """The recipe of a fine-tuning run of ``end`` steps: a cosine schedule decays over it.

    Example:
        >>> from ltjax.engine import optim
        >>> from ltjax.studies import soups
        >>> recipe = optim.Recipe(optimizer="adam", learning_rate=1e-3, schedule="cosine",
        ...                       total_steps=10000)
        >>> soups.run_recipe(recipe, 916).total_steps   # a 1-epoch MNIST run
        916
    """
    if recipe.schedule != "cosine":
        return recipe
    if end <= recipe.warmup_steps:
        raise ValueError(f"a fine-tuning run of {end} steps must be longer than its warm-up "
                         f"({recipe.warmup_steps} steps)")
    return dataclasses.replace(recipe, total_steps=end)


_MUST_MATCH = ("dataset", "validation_size", "validation_seed", "test_size", "model",
               "model_kwargs")


def pretrained_run_config(config: Any, workdir: str | pathlib.Path, replicate: int) -> dict:
    """The config of the dense run ``workdir`` (``pretrain.workdir``), checked compatible
    with ``config`` (its dataset, validation carve and model), with ``replicate`` in range.

    Raises:
      ValueError: no run there, a different dataset or model, a replicate out of range.

    Example:
        A workdir without ``config.json`` holds no run:

        >>> from experiments.configs import soups_lenet_digits
        >>> from ltjax.studies import soups
        >>> soups.pretrained_run_config(soups_lenet_digits.get_config(), "runs/no_such_run", 0)
        Traceback (most recent call last):
        ...
        ValueError: pretrain.workdir='runs/no_such_run' holds no run (no config.json)
    """
    theirs = imp_runs.check_compatible(config, pathlib.Path(workdir), field="pretrain.workdir",
                                       must_match=_MUST_MATCH)
    num = int(theirs["num_replicates"])
    if not 0 <= replicate < num:
        raise ValueError(f"pretrain.replicate must be in [0, {num}) for that run, got {replicate}")
    return theirs


def load_pretrained(source_config: dict, dataset: data.Dataset, workdir: str | pathlib.Path,
                    replicate: int) -> tuple[Any, Any]:
    """``(params, batch_stats)`` of one replicate of a dense-training workdir's newest checkpoint.

    The workdir is one of :func:`ltjax.studies.dense.run_dense`
    (``python -m experiments.train``); ``source_config`` is its config as
    :func:`pretrained_run_config` gives it (checked: the same dataset,
    validation carve and model as the study's, ``replicate`` in range).

    Raises:
      ValueError: no finished checkpoint.

    Example:
        Not run here (it needs a dense run's workdir):

        ```python
        source = soups.pretrained_run_config(config, "runs/dense", 1)
        params, batch_stats = soups.load_pretrained(source, dataset, "runs/dense", 1)
        ```
    """
    workdir = pathlib.Path(workdir)
    num = int(source_config["num_replicates"])
    their_config = ml_collections.ConfigDict(source_config)
    their_recipe = common.build_recipe(their_config, dataset)
    executor = common.build_executor(their_config, common.build_model(their_config, dataset),
                                     dataset, their_recipe)
    like = executor.shard(_start_state(jax.device_get(models.init(
        executor.model, jax.random.key(0), dataset.input_shape)), executor, num))
    with checkpoint.Checkpointer(workdir / "checkpoints") as ckpt:
        found = ckpt.restore_latest(like_state=like)
    if found is None:
        raise ValueError(f"pretrain.workdir={str(workdir)!r} has no finished checkpoint")
    state = found[1]
    return jax.device_get((tree.index(state.params, replicate),
                           tree.index(state.batch_stats, replicate)))


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    """``config.pretrain``: where theta_0 comes from (another run's checkpoint, or trained here).

    Attributes:
      workdir: the dense-training workdir theta_0 is loaded from (``pretrain.workdir``), or
        None: the study pretrains theta_0 itself.
      replicate: the loaded replicate (``pretrain.replicate``; 0 when trained here).
      source_config: that workdir's config (:func:`pretrained_run_config`), or None.
      rotation: the pretraining images' rotations, each drawn in ``+-rotation`` degrees
        (0: the clean images).
      rotation_seed: the rotations' seed.
      steps: the pretraining's steps (0 when loaded).
      dataset: the rotated training images to pretrain on, or None (no rotation, or loaded).
    """

    workdir: pathlib.Path | None
    replicate: int
    source_config: dict | None
    rotation: float
    rotation_seed: int
    steps: int
    dataset: data.Dataset | None = None


def _pretrain_spec(config: Any, steps_per_epoch: int) -> PretrainSpec:
    """``config.pretrain``, checked: another run's workdir (compatible, the replicate in
    range), or this study's own pretraining (rotation >= 0, at least one step); the rotated
    data are not built here (:meth:`SoupsSpec.from_config` builds them once all is checked)."""
    pre = config.pretrain
    if pre.get("workdir"):
        replicate = int(pre.get("replicate", 0))
        return PretrainSpec(workdir=pathlib.Path(pre.workdir), replicate=replicate,
                            source_config=pretrained_run_config(config, pre.workdir, replicate),
                            rotation=0.0, rotation_seed=0, steps=0)
    rotation = float(pre.get("rotation", 0.0))
    if rotation < 0:
        raise ValueError(f"pretrain.rotation must be >= 0 degrees, got {rotation}")
    steps = common.steps(pre.steps, steps_per_epoch, field="pretrain.steps")
    if steps < 1:
        raise ValueError(f"pretrain.steps must be > 0, got {pre.steps!r}")
    return PretrainSpec(workdir=None, replicate=0, source_config=None, rotation=rotation,
                        rotation_seed=int(pre.get("rotation_seed", 0)), steps=steps)


@dataclasses.dataclass(frozen=True)
class WiseFtSpec:
    """``config.wise_ft``: the WiSE-FT curves from theta_0 to each fine-tune.

    Attributes:
      alphas: the curves' points, evenly spaced from 0 (theta_0) to 1 (the fine-tune).
      head_modes: which curves (:data:`HEAD_MODES`): everything interpolated, and/or the
        fine-tuned head kept.
      head: the head's leaves for ``'fine_tuned'`` (``keep_head`` of
        :func:`ltjax.core.soups.wise_ft`).
    """

    alphas: tuple[float, ...]
    head_modes: tuple[str, ...]
    head: str


def _wise_ft_spec(wise: Any, abstract_params: Any) -> WiseFtSpec:
    """``config.wise_ft``, checked (the head against the model's params)."""
    if wise.num_alphas < 2:
        raise ValueError(f"wise_ft.num_alphas must be >= 2, got {wise.num_alphas}")
    head_modes = common.names_of(wise.head_modes, field="wise_ft.head_modes", allowed=HEAD_MODES)
    if not head_modes:
        raise ValueError(f"wise_ft.head_modes must list at least one of {HEAD_MODES}")
    if "fine_tuned" in head_modes:
        try:
            jax.eval_shape(lambda p: soups_lib.wise_ft(0.5, p, p, keep_head=wise.head),
                           abstract_params)
        except ValueError as err:
            raise ValueError(f"wise_ft.head: {err}") from None
    return WiseFtSpec(alphas=tuple(float(a) for a in np.linspace(0.0, 1.0, wise.num_alphas)),
                      head_modes=head_modes, head=wise.head)


@dataclasses.dataclass(frozen=True)
class LearnedSoupSpec:
    """``config.learned_soup``: :func:`ltjax.core.soups.learned_soup`'s settings.

    Attributes:
      granularity: a weight per tensor, layer or model (:data:`ltjax.core.soups.GRANULARITIES`).
      temperature: fit a logit temperature too.
      num_steps: AdamW steps on the validation split.
      learning_rate: their learning rate.
      batch_size: validation examples per step, or None (all).
      seed: the batches' seed.
    """

    granularity: str
    temperature: bool
    num_steps: int
    learning_rate: float
    batch_size: int | None
    seed: int


def _learned_soup_spec(learned: Any) -> LearnedSoupSpec:
    """``config.learned_soup``, checked."""
    granularity = learned.get("granularity", "tensor")
    if granularity not in soups_lib.GRANULARITIES:
        raise ValueError(f"learned_soup.granularity must be one of {soups_lib.GRANULARITIES}, "
                         f"got {granularity!r}")
    return LearnedSoupSpec(
        granularity=granularity, temperature=bool(learned.get("temperature", True)),
        num_steps=int(learned.num_steps), learning_rate=float(learned.learning_rate),
        batch_size=int(learned.get("batch_size", 0)) or None, seed=int(learned.get("seed", 0)))


@dataclasses.dataclass(frozen=True)
class SoupsSpec:
    """A soups / WiSE-FT study, parsed and checked once at its entry (Wortsman et al. 2022).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`; the dataset has
        the validation split the greedy and learned soups select on).
      groups: the fine-tuning groups (:func:`finetune_grid`).
      ingredients: one dict of hyperparameters per fine-tune (:func:`finetune_grid`).
      data_orders: the data orders of each group and length (``finetune.data_orders``).
      pretrain: where theta_0 comes from (:class:`PretrainSpec`).
      shift: the test set's distribution shift (:class:`ShiftSpec`).
      shifted_test: the shifted test set (:func:`shifted_split`).
      wise_ft: the WiSE-FT curves (:class:`WiseFtSpec`).
      learned_soup: the learned soup's settings (:class:`LearnedSoupSpec`).
      greedy_strict: the greedy soup keeps an ingredient only if validation accuracy rises
        (else: does not fall, the paper's).
      recompute_batch_stats: recompute the BatchNorm statistics of averaged models.
      reset: how they are recomputed (:func:`ltjax.studies.common.batch_stats_reset`).

    Example:
        The spec of the digits quick config, before any workdir exists:

        >>> from experiments.configs import soups_lenet_digits
        >>> from ltjax.studies.soups import SoupsSpec
        >>> spec = SoupsSpec.from_config(soups_lenet_digits.get_config("quick"), progress=False)
        >>> len(spec.groups), len(spec.ingredients), spec.pretrain.steps, spec.pretrain.rotation
        (2, 8, 36, 30.0)
        >>> spec.shift
        ShiftSpec(kind='rotate', amount=20.0, seed=0)
        >>> spec.wise_ft.alphas, spec.wise_ft.head_modes
        ((0.0, 0.5, 1.0), ('interpolate', 'fine_tuned'))
    """

    run: RunSpec
    groups: tuple[Group, ...]
    ingredients: tuple[dict, ...]
    data_orders: int
    pretrain: PretrainSpec
    shift: ShiftSpec
    shifted_test: data.Split
    wise_ft: WiseFtSpec
    learned_soup: LearnedSoupSpec
    greedy_strict: bool
    recompute_batch_stats: bool
    reset: dict

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> SoupsSpec:
        """Parse and check ``config``; nothing is written.

        The shared fields, the fine-tuning grid, the pretraining, the shift,
        WiSE-FT and the learned soup are checked before the data the study
        alters (the shifted test set, the rotated pretraining images) are built.

        Raises:
          ValueError: no validation split, a bad grid, pretraining, shift,
            WiSE-FT or learned-soup setting (naming the field).
        """
        reset = common.batch_stats_reset(config)  # checked before anything is loaded
        run = RunSpec.from_config(config, progress=progress)
        dataset = run.dataset
        groups, ingredients = finetune_grid(config, run.recipe, run.steps_per_epoch, dataset)
        pretrain = _pretrain_spec(config, run.steps_per_epoch)
        if dataset.validation is None or len(dataset.validation) == 0:
            raise ValueError("validation_size must be > 0: the held-out split that greedy and "
                             "learned soups select on is empty")
        shift = _shift_spec(config.shift)
        wise_ft = _wise_ft_spec(config.wise_ft, run.executor.abstract_state.params)
        learned_soup = _learned_soup_spec(config.learned_soup)
        if pretrain.rotation:
            pretrain = dataclasses.replace(pretrain, dataset=dataclasses.replace(
                dataset, train=data.rotate(dataset.train, degrees=(-pretrain.rotation,
                                                                   pretrain.rotation),
                                           seed=pretrain.rotation_seed)))
        return cls(run=run, groups=groups, ingredients=ingredients,
                   data_orders=int(config.finetune.data_orders), pretrain=pretrain, shift=shift,
                   shifted_test=shifted_split(dataset.test, shift), wise_ft=wise_ft,
                   learned_soup=learned_soup,
                   greedy_strict=bool(config.get("greedy_strict", False)),
                   recompute_batch_stats=bool(config.get("recompute_batch_stats", True)),
                   reset=reset)

# --------------------------------------------------------------------------- the study


@common.study_entry
def run_soups(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Run the soups / WiSE-FT study; resumable. See the module docstring.

    Writes into ``workdir``: ``config.json``; ``metrics.jsonl`` (training
    records tagged ``branch`` = ``pretrain`` / ``finetune``; ``eval`` records
    per model and split; ``greedy_step``, ``learned_weights`` and
    ``wise_ft`` records); ``results.csv`` (one row per model: pretrained,
    each ingredient with its hyperparameters, the soups, the ensemble);
    ``summary.csv`` (the paper's table: pretrained, ``ingredients_best`` (by
    validation), ``ingredients_worst``, ``ingredients_mean``, the soups and the
    ensemble); ``wise_ft.csv`` (per fine-tune and head mode: the curve's
    endpoints, its best alpha on the shifted set and the alpha that validation
    picks; the means per head mode in ``wise_ft_summary.csv``);
    ``plots/soups.png``, ``plots/wise_ft.png``; ``checkpoints/``.

    Returns:
      ``{'rows': [...], 'wise_ft': [...]}``: the rows of ``summary.csv`` and
      of ``wise_ft_summary.csv``.

    Raises:
      ValueError: no validation split, a bad grid, pretraining, shift, WiSE-FT or
        learned-soup setting (before any work: a bad one leaves no workdir).
    """
    study = SoupsSpec.from_config(config, progress=progress)
    spec, ingredients = study.run, study.ingredients
    run = spec.open(workdir)
    workdir, log = run.workdir, run.log
    dataset, recipe, executor = spec.dataset, spec.recipe, spec.executor
    model, shifted = executor.model, study.shifted_test
    shifted_executor = executor.like(dataset=dataclasses.replace(dataset, test=shifted))

    executors = {recipe: executor}  # one per recipe on the clean data: compiled programs shared

    def executor_for(r: optim.Recipe) -> executor_lib.Executor:
        if r not in executors:
            executors[r] = executor.like(recipe=r)
        return executors[r]

    # 1. pretrain (or load)
    theta_0 = _pretrain(study.pretrain, spec, executor_for, run)

    # 2. fine-tune every group from theta_0: the ingredients' (params, batch_stats).
    trees = _finetune(study, run, theta_0, executor_for)
    stacked = tree.stack(trees)

    # 3. evaluate ingredients, soups, ensemble
    # Each evaluation once: a rerun restores its records (common.records_once), never the log.
    evaluator = _Evaluator(executor, shifted_executor,
                           recompute_stats=study.recompute_batch_stats, reset=study.reset)

    def once(name: str, compute: Callable[[], list[dict]], models: tuple[str, ...] = (),
             branches: tuple[str, ...] = ()) -> list[dict]:
        def mine(r: dict) -> bool:  # the evaluation's records (of models, or branches)
            return (r.get("branch") == "eval" and r["model"] in (name, *models)
                    or r.get("branch") in branches)

        return common.records_once(workdir, log, f"evals/{name}", compute, mine=mine)

    records = once("ingredient", models=("pretrained",), compute=lambda: (
        _eval_records("pretrained", evaluator.all_splits(tree.stack([theta_0])), 0)
        + _eval_records("ingredient", evaluator.all_splits(stacked), len(trees))))
    val_acc = _ingredient_metric(records, len(trees), "validation")
    records += once("ensemble", lambda: _eval_records(
        "ensemble", evaluator.ensemble(stacked, dataset, shifted), 0))
    records += once("uniform", lambda: _eval_records(
        "uniform", evaluator.all_splits(evaluator.recompute(
            tree.stack([soups_lib.uniform_soup(stacked, stacked=True)]))), 0))
    records += once("greedy", lambda: _greedy(evaluator, trees, val_acc,
                                              strict=study.greedy_strict),
                    branches=("greedy_step",))
    records += once("learned", lambda: _learned(study.learned_soup, evaluator, model, dataset,
                                                stacked), branches=("learned_weights",))

    # 4. WiSE-FT curves
    head_modes = study.wise_ft.head_modes
    records += _wise_ft_records(study, run, evaluator, theta_0, trees)

    # Tables and figures, from the evaluations' records (the same on a resumed run).
    rows, summary = _model_rows(records, ingredients)
    results.write_csv(workdir / "results.csv", rows)
    results.write_csv(results.summary_path(workdir / "results.csv"), summary)
    wise_rows = _wise_rows(records, ingredients, head_modes)
    wise_means = results.write_table(
        workdir / "wise_ft.csv", wise_rows, by=("head",), stats=("mean",),
        fields=[k for k in wise_rows[0] if k not in ("ingredient", "head", "learning_rate",
                                                     "epochs")])["rows"]
    title = (f"{spec.model_name} on {plots.dataset_label(dataset.name)}, "
             f"shifted: {_shift_name(study.shift)}")
    plots.plot_soups(rows, workdir / "plots" / "soups.png",
                     title=f"{len(trees)} fine-tunes and their soups ({title})")
    plots.plot_wise_ft([r for r in records if r.get("branch") == "wise_ft"],
                       workdir / "plots" / "wise_ft.png", title=f"WiSE-FT ({title})",
                       ingredients=ingredients)
    return {"rows": summary, "wise_ft": wise_means}


def _finetune(study: SoupsSpec, run: Any, theta_0: tuple[Any, Any],
              executor_for: Callable[[optim.Recipe], executor_lib.Executor]) -> list[tuple]:
    """Every ingredient's ``(params, batch_stats)``, fine-tuned from ``theta_0``, in
    ingredient order: one program per augmentation setting and run length, whose members
    are every (learning rate, weight decay, label smoothing) x data order."""
    groups, ingredients, orders = study.groups, study.ingredients, study.data_orders
    order_keys = rng.stream(study.run.replicate_keys(orders), "finetune")
    found: dict[int, Any] = {}
    for augment in dict.fromkeys(g.recipe.augment for g in groups):
        members = [(g, o) for g in groups if g.recipe.augment == augment for o in range(orders)]
        noise_keys = order_keys[np.array([o for _, o in members])]
        for epochs, end in zip(groups[0].epochs, groups[0].ends, strict=True):
            # Each length is its own run from theta_0 (its schedule spans the run).
            program_executor = executor_for(run_recipe(members[0][0].recipe, end))
            hparams = optim.member_hparams(
                program_executor.recipe, len(members),
                learning_rate=[g.recipe.learning_rate for g, _ in members],
                weight_decay=[g.recipe.weight_decay for g, _ in members],
                label_smoothing=[g.recipe.label_smoothing for g, _ in members])
            state = program_executor.shard(_start_state(theta_0, program_executor, len(members)))
            state = run.segment(
                f"finetune_augment_{int(augment)}/run_{end}", state=state,
                noise_keys=noise_keys, end=end, hparams=hparams,
                tags={"branch": "finetune", "augment": bool(augment), "end": end},
                splits=[],  # evaluated once trained (step 3)
                executor=program_executor,
                desc=f"fine-tune {len(members)} members for {epochs}").state
            for m, (group, order) in enumerate(members):
                for ing in ingredients:
                    if (ing["group"], ing["steps"], ing["data_order"]) == (group.index, end, order):
                        found[ing["ingredient"]] = jax.device_get(
                            (tree.index(state.params, m), tree.index(state.batch_stats, m)))
    return [found[i] for i in range(len(ingredients))]


def _wise_ft_records(study: SoupsSpec, run: Any, evaluator: Any, theta_0: tuple[Any, Any],
                     trees: list[tuple]) -> list[dict]:
    """The WiSE-FT curves' records of every ingredient and head mode, each evaluated once
    (:func:`ltjax.studies.common.records_once`; a rerun restores them)."""
    alphas, head_modes = np.asarray(study.wise_ft.alphas), study.wise_ft.head_modes
    records = []
    todo = [(i, mode) for i in range(len(trees)) for mode in head_modes]
    for i, mode in tqdm.tqdm(todo, disable=not study.run.progress, desc="WiSE-FT curves",
                             leave=False):
        def sweep(i=i, mode=mode) -> list[dict]:
            curve = soups_lib.wise_ft_sweep(
                evaluator.flat_all_splits, theta_0, trees[i], alphas,
                keep_head=study.wise_ft.head if mode == "fine_tuned" else None,
                recompute_fn=evaluator.recompute)
            return [{"branch": "wise_ft", "ingredient": i, "head": mode, "split": split,
                     "alpha": float(a), "step": None,
                     "accuracy": curve[f"{split}/accuracy"][n],
                     "loss": curve[f"{split}/loss"][n]}
                    for split in SPLITS for n, a in enumerate(alphas)]

        records += common.records_once(
            run.workdir, run.log, f"wise_ft/ingredient_{i}_{mode}", sweep,
            mine=lambda r, i=i, mode=mode: r.get("branch") == "wise_ft"
            and (r["ingredient"], r["head"]) == (i, mode))
    return records


def _shift_name(shift: ShiftSpec) -> str:
    if shift.kind == "rotate":
        return f"test rotated {shift.amount:g} deg"
    return f"test + N(0, {shift.amount:g}^2) noise"


def _pretrain(pretrain: PretrainSpec, spec: RunSpec,
              executor_for: Callable[[optim.Recipe], executor_lib.Executor],
              run: Any) -> tuple[Any, Any]:
    """theta_0 = ``(params, batch_stats)`` of the pretrained model (trained or loaded)."""
    if pretrain.workdir is not None:
        return load_pretrained(pretrain.source_config, spec.dataset, pretrain.workdir,
                               pretrain.replicate)
    executor = executor_for(spec.recipe)
    if pretrain.dataset is not None:  # the rotated images
        executor = executor.like(dataset=pretrain.dataset)
    init_keys, noise_keys = spec.keys(1)
    # executor.init(init_keys) without its vmapped init program (the same numbers; models.init
    # is compiled once per model and process, which saves seconds on every resume).
    start = _start_state(models.init(executor.model, init_keys[0], spec.dataset.input_shape),
                         executor, 1)
    state = run.segment("pretrain", state=executor.shard(start), noise_keys=noise_keys,
                        end=pretrain.steps,
                        tags={"branch": "pretrain"}, splits=["validation", "test"],
                        executor=executor, desc="pretrain").state
    return jax.device_get((tree.index(state.params, 0), tree.index(state.batch_stats, 0)))


def _start_state(theta_0, executor: executor_lib.Executor, num: int) -> train.TrainState:
    """``num`` copies of theta_0 at step 0 with a fresh optimiser state of the executor's."""
    params, batch_stats = jax.tree.map(lambda x: jnp.repeat(x[None], num, axis=0), theta_0)
    return train.TrainState(step=jnp.zeros((num,), jnp.int32), params=params,
                            batch_stats=batch_stats, opt_state=executor.fresh_opt_state(params))


def _eval_records(name: str, metrics: dict, num: int, **extra) -> list[dict]:
    """``eval`` records of ``metrics`` ``{split: {'accuracy': [N], 'loss': [N]}}``."""
    count = num or 1
    return [{"branch": "eval", "model": name, "ingredient": i if num else None, "split": split,
             "step": None, "accuracy": metrics[split]["accuracy"][i],
             "loss": metrics[split]["loss"][i], **extra}
            for split in SPLITS for i in range(count)]


def _ingredient_metric(records, num, split, key="accuracy") -> np.ndarray:
    values = np.full(num, np.nan)
    for r in records:
        if r.get("branch") == "eval" and r["model"] == "ingredient" and r["split"] == split:
            values[r["ingredient"]] = r[key]
    return values


class _Evaluator:
    """Evaluation of stacked ``(params, batch_stats)`` on validation, test and shifted test."""

    def __init__(self, executor: executor_lib.Executor,
                 shifted_executor: executor_lib.Executor, *, recompute_stats: bool,
                 reset: dict):
        self.executor = executor
        self.shifted_executor = shifted_executor
        self.bn = bool(jax.tree.leaves(executor.abstract_state.batch_stats))
        self.recompute_stats = self.bn and recompute_stats
        self.reset = reset

    def all_splits(self, stacked) -> dict[str, dict[str, np.ndarray]]:
        params, batch_stats = stacked
        return {"validation": self.executor.evaluate_params(params, batch_stats, "validation"),
                "test": self.executor.evaluate_params(params, batch_stats, "test"),
                "shifted": self.shifted_executor.evaluate_params(params, batch_stats, "test")}

    def flat_all_splits(self, stacked) -> dict[str, np.ndarray]:
        """:meth:`all_splits` as ``{'split/metric': [C]}`` (for ``evaluate_path``)."""
        return {f"{split}/{k}": v for split, metrics in self.all_splits(stacked).items()
                for k, v in metrics.items()}

    def validation_accuracy(self, one) -> float:
        params, batch_stats = tree.stack([one])
        return float(self.executor.evaluate_params(params, batch_stats,
                                                   "validation")["accuracy"][0])

    def recompute(self, stacked):
        """BatchNorm statistics of averaged models recomputed on training data (if any)."""
        if not self.recompute_stats:
            return stacked
        return stacked[0], self.executor.recomputed_batch_stats(*stacked, **self.reset)

    def recompute_one(self, one):
        return tree.index(self.recompute(tree.stack([one])), 0) if self.recompute_stats else one

    def ensemble(self, stacked, dataset, shifted) -> dict[str, dict[str, np.ndarray]]:
        """The output-space ensemble: mean of the ingredients' softmax outputs."""
        out = {}
        for split, executor, name, labels in (
                ("validation", self.executor, "validation", dataset.validation.y),
                ("test", self.executor, "test", dataset.test.y),
                ("shifted", self.shifted_executor, "test", shifted.y)):
            logits = executor.predict_params(*stacked, name).astype(np.float64)
            logp = logits - logits.max(-1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
            m = logp.max(0)  # log of the mean probability over ingredients
            mean_logp = m + np.log(np.exp(logp - m).mean(0))
            out[split] = {
                "accuracy": np.array([np.mean(mean_logp.argmax(-1) == labels)]),
                "loss": np.array([-np.mean(mean_logp[np.arange(len(labels)), labels])])}
        return out


def _greedy(evaluator: _Evaluator, trees, val_acc, *, strict: bool) -> list[dict]:
    result = soups_lib.greedy_soup(
        trees, evaluator.validation_accuracy, accuracies=val_acc, strict=strict,
        recompute_fn=evaluator.recompute_one)
    members = list(result.members)
    records = _eval_records("greedy", evaluator.all_splits(tree.stack([result.soup])), 0,
                            members=members)
    records += [{"branch": "greedy_step", "rank": n, "step": None, **h}
                for n, h in enumerate(result.history)]
    return records


def _learned(settings: LearnedSoupSpec, evaluator: _Evaluator, model, dataset,
             stacked) -> list[dict]:
    """The learned soup: a weight per parameter tensor and a temperature, fitted on validation."""
    params, batch_stats = stacked
    mean, std = jnp.asarray(dataset.mean), jnp.asarray(dataset.std)
    stats_0 = tree.index(batch_stats, 0)

    def loss_fn(soup_params, batch, scale):
        x, y = batch
        logits = train.logits(model, soup_params, stats_0, data.normalize(x, mean, std),
                              train=evaluator.bn)  # BatchNorm: the batch's statistics
        return train.cross_entropy(scale * logits, y).mean()

    heldout = (jnp.asarray(dataset.validation.x), jnp.asarray(dataset.validation.y))
    result = soups_lib.learned_soup(
        params, loss_fn, heldout, stacked=True, granularity=settings.granularity,
        temperature=settings.temperature, num_steps=settings.num_steps,
        learning_rate=settings.learning_rate, batch_size=settings.batch_size, seed=settings.seed)
    soup_stats = soups_lib.uniform_soup(batch_stats, stacked=True) if evaluator.bn else {}
    soup = evaluator.recompute_one((result.soup, soup_stats))
    records = _eval_records("learned", evaluator.all_splits(tree.stack([soup])), 0,
                            final_heldout_loss=float(result.losses[-1]),
                            first_heldout_loss=float(result.losses[0]),
                            temperature=result.temperature)
    records += [{"branch": "learned_weights", "layer": group, "step": None,
                 "weights": [float(w) for w in weights]}
                for group, weights in result.weights.items()]
    return records


# --------------------------------------------------------------------------- tables


def _metrics_of(records, model, ingredient=None) -> dict:
    out = {}
    for r in records:
        if r.get("branch") == "eval" and r["model"] == model and r.get("ingredient") == ingredient:
            out[f"{r['split']}_accuracy"] = r["accuracy"]
            out[f"{r['split']}_loss"] = r["loss"]
            if "members" in r:
                out["members"] = " ".join(str(m) for m in r["members"])
                out["num_members"] = len(r["members"])
    return out


def _model_rows(records, ingredients) -> tuple[list[dict], list[dict]]:
    """Per-model rows, and the summary rows (pretrained, best/worst/mean ingredient, soups)."""
    hyper = ("learning_rate", "weight_decay", "label_smoothing", "augment", "epochs",
             "data_order")
    rows = [{"model": "pretrained", **_metrics_of(records, "pretrained")}]
    rows += [{"model": "ingredient", "ingredient": ing["ingredient"],
              **{k: ing[k] for k in hyper}, **_metrics_of(records, "ingredient",
                                                          ing["ingredient"])}
             for ing in ingredients]
    rows += [{"model": name, **_metrics_of(records, name)} for name in SOUPS]
    cells = [f"{s}_{m}" for s in SPLITS for m in ("accuracy", "loss")]
    per = rows[1:1 + len(ingredients)]
    val = np.array([r["validation_accuracy"] for r in per])
    best = per[int(np.argmax(val))]  # first of the best on validation
    worst = per[int(np.argmin(val))]
    summary = [rows[0],
               {**{k: best[k] for k in ["ingredient", *hyper, *cells]},
                "model": "ingredients_best"},
               {**{k: worst[k] for k in ["ingredient", *hyper, *cells]},
                "model": "ingredients_worst"},
               {"model": "ingredients_mean", **{k: float(np.mean([r[k] for r in per]))
                                                for k in cells}}]
    summary += rows[1 + len(ingredients):]
    return rows, summary


def _wise_rows(records, ingredients, head_modes) -> list[dict]:
    """Per fine-tune and head mode: endpoints, best alpha on shifted, alpha picked on validation."""
    curves: dict = {}
    for r in records:
        if r.get("branch") == "wise_ft":
            curves.setdefault((r["ingredient"], r["head"]), {}).setdefault(
                r["split"], {})[round(r["alpha"], 9)] = r["accuracy"]
    rows = []
    for ing in ingredients:
        for mode in head_modes:
            curve = curves[(ing["ingredient"], mode)]
            alphas = sorted(curve["shifted"])
            acc = {s: np.array([curve[s][a] for a in alphas]) for s in SPLITS}
            best = int(np.argmax(acc["shifted"]))  # first of the best
            picked = int(np.argmax(acc["validation"]))
            row = {"ingredient": ing["ingredient"], "head": mode,
                   "learning_rate": ing["learning_rate"], "epochs": ing["epochs"]}
            for s in SPLITS:
                row[f"{s}_alpha0"] = acc[s][0]
                row[f"{s}_alpha1"] = acc[s][-1]
            row.update(best_shifted_alpha=alphas[best], best_shifted_accuracy=acc["shifted"][best],
                       test_at_best_shifted=acc["test"][best],
                       validation_alpha=alphas[picked],
                       test_at_validation_alpha=acc["test"][picked],
                       shifted_at_validation_alpha=acc["shifted"][picked],
                       shifted_gain=acc["shifted"][best] - acc["shifted"][-1],
                       interior_best=bool(0 < best < len(alphas) - 1))
            rows.append(row)
    return rows
