"""The data diet (Paul, Ganguli & Dziugaite 2021): score examples early, train on a subset.

Score every training example by EL2N (``||softmax(f(x)) - onehot(y)||``)
after ``config.score_step`` steps of ``config.score_seeds`` dense runs (GraNd
with ``config.score='grand'``), averaged over those runs; keep a share
``kept`` of the examples by ``mode`` (``'hardest'``: the highest scores after
skipping ``config.offset``; ``'easiest'``; ``'random'``); train each subset
for the full-data step count (the paper's protocol), beside the full-data
baseline. With ``config.label_noise`` > 0, a seeded share of the training
labels is made wrong first (:func:`ltjax.io.data.random_labels` with
``exclude_true``; the test set keeps its labels), and ``noise.csv`` says how
well the top-scored examples find them (the paper's Section 5). With GraNd at
step 0, ``score_stats.csv`` holds the Spearman correlation of the scores with
the input norm (Kirsch 2023: GraNd at initialisation tracks ``||x||``).
Every mode x replicate of a kept share is a member of one program
(:meth:`ltjax.engine.executor.Executor.train`'s ``subsets``).

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import data_diet_lenet_digits
    summary = run_data_diet(data_diet_lenet_digits.get_config("quick"), "/tmp/diet")
    summary["num_replicates"]        # 2
    summary["rows"][0]["test_accuracy"]   # results.csv's means, one row per (kept, mode)
    ```

    The same run from a shell: ``python -m experiments.data_diet
    --config=experiments/configs/data_diet_lenet_digits.py:quick --workdir=/tmp/diet``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np

from ltjax.core import rng
from ltjax.engine import train
from ltjax.io import data, results
from ltjax.methods import data_diet
from ltjax.studies import common, plots
from ltjax.studies.spec import RunSpec

MODES = ("hardest", "random", "easiest")
SCORES = ("el2n", "grand")


def with_label_noise(dataset: data.Dataset, *, share: float, seed: int) -> tuple[
        data.Dataset, np.ndarray]:
    """The dataset with ``ceil(share * N)`` training labels made wrong, and their indices.

    Paul et al. 2021, Section 5 (noisy labels score highest): the positions are
    :func:`ltjax.io.data.random_labels`' draw with ``exclude_true`` (NumPy ``seed``,
    a host-side ordering), so every corrupted label differs from the true one;
    validation and test keep their labels.

    Returns:
      the dataset and the corrupted indices, int ``[ceil(share * N)]``, sorted.

    Example:
        >>> from ltjax.io import data
        >>> from ltjax.studies import data_diet
        >>> ds = data.synthetic((8, 8, 1), 20, num_classes=3)     # 20 random 8 x 8 images
        >>> noisy, corrupted = data_diet.with_label_noise(ds, share=0.1, seed=0)
        >>> len(corrupted), bool((noisy.train.y[corrupted] != ds.train.y[corrupted]).all())
        (2, True)
    """
    train_split = data.random_labels(dataset.train, share=share,
                                     num_classes=dataset.num_classes, seed=seed,
                                     exclude_true=True)
    corrupted = np.flatnonzero(train_split.y != dataset.train.y)
    return dataclasses.replace(dataset, train=train_split), corrupted


@dataclasses.dataclass(frozen=True)
class DataDietSpec:
    """A data-diet study, parsed and checked once at its entry (Paul et al. 2021).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`; the dataset
        with its corrupted labels when ``label_noise`` > 0).
      modes: the subsets' selection rules (:data:`MODES`).
      kept: the kept shares of the training examples, each in (0, 1).
      score: ``'el2n'`` or ``'grand'``.
      score_seeds: the dense runs whose scores are averaged.
      score_step: the step the examples are scored at, in iterations.
      offset: the hardest examples skipped before ``'hardest'`` keeps its share.
      label_noise: the share of training labels made wrong (0: none).
      corrupted: the indices of the corrupted training labels, int ``[M]`` (sorted).

    Example:
        The spec of the digits quick config, before any workdir exists:

        >>> from experiments.configs import data_diet_lenet_digits
        >>> from ltjax.studies.data_diet import DataDietSpec
        >>> spec = DataDietSpec.from_config(data_diet_lenet_digits.get_config("quick"),
        ...                                 progress=False)
        >>> spec.modes, spec.kept, spec.score, spec.score_step
        (('hardest', 'random', 'easiest'), (0.5,), 'el2n', 23)
    """

    run: RunSpec
    modes: tuple[str, ...]
    kept: tuple[float, ...]
    score: str
    score_seeds: int
    score_step: int
    offset: int
    label_noise: float
    corrupted: np.ndarray

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> DataDietSpec:
        """Parse and check ``config``; nothing is written.

        Raises:
          ValueError: unknown modes or score, kept shares outside (0, 1), an offset
            that leaves fewer than ``kept`` examples, bad seeds or label noise.
        """
        modes = common.names_of(config.modes, field="modes", allowed=MODES)
        kept = tuple(float(k) for k in config.kept)
        if not modes or not kept:
            raise ValueError("config.modes and config.kept must each name at least one value")
        if any(not 0.0 < k < 1.0 for k in kept):
            raise ValueError(f"config.kept must be shares in (0, 1), got {config.kept}")
        if config.score not in SCORES:
            raise ValueError(f"config.score must be one of {SCORES}, got {config.score!r}")
        if not isinstance(config.score_seeds, int) or config.score_seeds < 1:
            raise ValueError(f"config.score_seeds must be an int >= 1, got "
                             f"{config.score_seeds!r}")
        offset = config.offset
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"config.offset must be an int >= 0, got {offset!r}")
        noise = config.get("label_noise", 0.0)
        if isinstance(noise, bool) or not isinstance(noise, int | float) or not 0.0 <= noise <= 1.0:
            raise ValueError(f"config.label_noise must be a share in [0, 1], got {noise!r}")
        noise_seed = config.get("label_noise_seed", 0)
        if isinstance(noise_seed, bool) or not isinstance(noise_seed, int) or noise_seed < 0:
            raise ValueError(f"config.label_noise_seed must be an int >= 0, got {noise_seed!r}")
        batch_size = config.recipe.batch_size

        def check(dataset: data.Dataset) -> None:
            n = len(dataset.train)
            for share in kept:
                size = int(round(share * n))
                if size < batch_size:
                    raise ValueError(f"config.kept={share} keeps {size} examples, fewer than a "
                                     f"batch ({batch_size})")
                if "hardest" in modes and offset + size > n:
                    raise ValueError(f"config.offset={offset} + {size} kept examples is "
                                     f"more than the {n} training examples")

        corrupted = np.zeros(0, np.int64)

        def transform(dataset: data.Dataset) -> data.Dataset:
            nonlocal corrupted
            if noise == 0.0:
                return dataset
            dataset, corrupted = with_label_noise(dataset, share=noise, seed=noise_seed)
            return dataset

        run = RunSpec.from_config(config, check=check, progress=progress, transform=transform)
        return cls(run=run, modes=modes, kept=kept, score=config.score,
                   score_seeds=config.score_seeds,
                   score_step=common.steps(config.score_step, run.steps_per_epoch,
                                           field="score_step"),
                   offset=offset, label_noise=float(noise), corrupted=corrupted)


@common.study_entry
def run_data_diet(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Score, prune and retrain for ``config.num_replicates`` replicates; resumable.

    Writes into ``workdir``: ``config.json``, ``metrics.jsonl``, ``scores.npy``
    (the averaged score of every training example), ``scores.npz`` (``scores``,
    ``labels`` the training labels used, ``corrupted`` the indices of the
    corrupted ones, ``input_norm`` of the normalised inputs), ``noise.csv``
    with label noise (``score, noise_share, num_corrupted, top_share,
    precision, recall_at_top``: the top ``num_corrupted`` averaged scores
    against the corrupted examples), ``score_stats.csv`` for GraNd at step 0
    (``score, score_step, spearman_input_norm``), ``results.csv`` (``kept,
    mode, replicate, num_examples, test_accuracy, test_loss``; ``kept = 1`` is
    the full data; mean and std rows), ``plots/data_diet.png`` and
    ``checkpoints/``.

    Raises:
      ValueError: unknown modes or score, kept shares outside (0, 1), an offset
        that leaves fewer than ``kept`` examples, bad seeds (before any work).
    """
    diet = DataDietSpec.from_config(config, progress=progress)
    spec, modes, noise = diet.run, diet.modes, diet.label_noise
    dataset, executor, num = spec.dataset, spec.executor, spec.num_replicates
    run = spec.open(workdir)
    n = len(dataset.train)
    keys = spec.replicate_keys()
    init_keys, noise_keys = spec.keys()

    # 1. Scores: score_seeds dense runs to score_step, averaged; their diagnostics.
    scores, norms = _scored(diet, run)
    diagnostics = _diagnostics(diet, run, scores, norms)

    # 2. The full data, then each kept share's modes x replicates as one program.
    full = run.segment("full", state=executor.init(init_keys), noise_keys=noise_keys,
                       tags={"kept": 1.0, "mode": "full"}, desc=f"full data x{num}")
    rows = _rows(full.curves, 1.0, [{"mode": "full", "replicate": r} for r in range(num)], n)
    for share in diet.kept:
        size = int(round(share * n))
        member_tags = [{"mode": m, "replicate": r} for m in modes for r in range(num)]
        subsets = np.stack([
            data_diet.select(scores, size, mode=t["mode"], offset=diet.offset,
                             key=jax.random.fold_in(rng.stream(keys[t["replicate"]], "subset"),
                                                    int(round(share * 1e6))))
            for t in member_tags])
        replicate_of = np.array([t["replicate"] for t in member_tags])
        final = run.segment(
            f"kept_{share:g}", state=executor.init(init_keys[replicate_of]),
            noise_keys=noise_keys[replicate_of], tags={"kept": share},
            member_tags=member_tags, densities=np.full(len(member_tags), share),
            subsets=subsets, desc=f"{100 * share:g} % kept: {', '.join(modes)} x{num}")
        rows += _rows(final.curves, share, member_tags, size)
    table = results.write_table(run.workdir / "results.csv", rows, by=("kept", "mode"),
                                fields=("num_examples", "test_accuracy", "test_loss"))
    plots.plot_data_diet(rows, run.workdir / "plots" / "data_diet.png",
                         title=f"data diet: {spec.model_name} on "
                               f"{plots.dataset_label(dataset.name)}, {diet.score} at "
                               f"step {diet.score_step}, {num} replicates"
                               + (f", {100 * noise:g} % label noise" if noise else ""))
    return {**table, "num_replicates": num, **diagnostics}


def _scored(diet: DataDietSpec, run: Any) -> tuple[np.ndarray, np.ndarray]:
    """The examples' scores ``[N]``: ``score_seeds`` dense runs to ``score_step``, averaged
    (checkpointed once computed), and their input norms ``[N]``; written to ``scores.npy``
    and, with the labels and the corrupted examples, ``scores.npz``."""
    spec, score_step = diet.run, diet.score_step
    executor, dataset = spec.executor, spec.dataset

    def compute_scores() -> np.ndarray:
        s_init, s_noise = spec.keys(diet.score_seeds, "score")
        state = executor.init(s_init)
        if score_step > 0:
            state = run.segment("score", state=state, noise_keys=s_noise, end=score_step,
                                tags={"branch": "score"},
                                desc=f"score runs to step {score_step}").state
        return _scores(diet.score, executor, state, dataset)

    scores = common.computed_once(run.workdir, "scores", compute_scores,
                                  like=jax.ShapeDtypeStruct((len(dataset.train),), np.float32))
    results.save_npy(run.workdir / "scores.npy", scores)
    norms = data_diet.input_norms(dataset.train.x, dataset.mean, dataset.std)
    np.savez(run.workdir / "scores.npz", scores=scores, labels=np.asarray(dataset.train.y),
             corrupted=diet.corrupted, input_norm=norms)
    return scores, norms


def _diagnostics(diet: DataDietSpec, run: Any, scores: np.ndarray, norms: np.ndarray) -> dict:
    """With label noise, how precisely the top scores find the corrupted examples
    (``noise.csv``); for GraNd at init, the scores' Spearman correlation with the input
    norm (``score_stats.csv``)."""
    noise, corrupted, score, score_step = (diet.label_noise, diet.corrupted, diet.score,
                                           diet.score_step)
    diagnostics = {}
    if noise > 0.0:
        found = data_diet.noise_precision(scores, corrupted)
        diagnostics["noise"] = {"score": score, "noise_share": noise,
                                "num_corrupted": corrupted.size,
                                "top_share": found["top_share"],
                                "precision": found["precision"],
                                "recall_at_top": found["recall"]}
        results.write_csv(run.workdir / "noise.csv", [diagnostics["noise"]])
    if score == "grand" and score_step == 0:
        diagnostics["score_stats"] = {"score": score, "score_step": score_step,
                                      "spearman_input_norm": data_diet.spearman(scores, norms)}
        results.write_csv(run.workdir / "score_stats.csv", [diagnostics["score_stats"]])
    return diagnostics


def _rows(curves, share: float, member_tags: list[dict], size: int) -> list[dict]:
    test = {k: v.tolist() for k, v in curves.final_metrics("test").items()}
    return [{"kept": share, "mode": t["mode"], "replicate": t["replicate"], "num_examples": size,
             "test_accuracy": test["accuracy"][i], "test_loss": test["loss"][i]}
            for i, t in enumerate(member_tags)]


def _scores(kind: str, executor, state, dataset) -> np.ndarray:
    """The averaged EL2N or GraNd score of every training example."""
    model = executor.model
    x = np.asarray(dataset.train.x)
    y = np.asarray(dataset.train.y)

    def logits_fn(params, batch_stats, xb):
        return train.logits(model, params, batch_stats, data.normalize(
            xb, dataset.mean, dataset.std))

    # On the host, then one device: the score runs' states are sharded over the member
    # mesh, and averaging them there would be a cross-device collective per chunk.
    params, batch_stats = jax.device_get((executor.model_params(state), state.batch_stats))
    fn = data_diet.el2n_scores if kind == "el2n" else data_diet.grand_scores
    return np.asarray(fn(logits_fn, params, batch_stats, x, y,
                         num_classes=dataset.num_classes))
