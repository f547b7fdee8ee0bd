"""The data diet (Paul, Ganguli & Dziugaite 2021): score examples early, train on a subset.

Score every training example by EL2N (``||softmax(f(x)) - onehot(y)||``)
after ``config.score_step`` steps of ``config.score_seeds`` dense runs (GraNd
with ``config.score='grand'``), averaged over those runs; keep a share
``kept`` of the examples by ``mode`` (``'hardest'``: the highest scores after
skipping ``config.offset``; ``'easiest'``; ``'random'``); train each subset
for the full-data step count (the paper's protocol), beside the full-data
baseline. Every mode x replicate of a kept share is a member of one program
(:meth:`ltjax.executor.Executor.train`'s ``subsets``).

Example (Colab):
    >>> from experiments.configs import data_diet_lenet_digits
    >>> summary = run_data_diet(data_diet_lenet_digits.get_config("quick"), "/tmp/diet")
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np

from ltjax import data, data_diet, plots, results, rng, train
from ltjax.studies import common

MODES = ("hardest", "random", "easiest")
SCORES = ("el2n", "grand")


def check_config(config: Any) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The modes and kept shares, checked before any work."""
    modes = common.names_of(config.modes, field="modes", allowed=MODES)
    kept = tuple(float(k) for k in config.kept)
    if not modes or not kept:
        raise ValueError("config.modes and config.kept must each name at least one value")
    if any(not 0.0 < k < 1.0 for k in kept):
        raise ValueError(f"config.kept must be shares in (0, 1), got {config.kept}")
    if config.score not in SCORES:
        raise ValueError(f"config.score must be one of {SCORES}, got {config.score!r}")
    if not isinstance(config.score_seeds, int) or config.score_seeds < 1:
        raise ValueError(f"config.score_seeds must be an int >= 1, got {config.score_seeds!r}")
    if not isinstance(config.offset, int) or config.offset < 0:
        raise ValueError(f"config.offset must be an int >= 0, got {config.offset!r}")
    return modes, kept


def run_data_diet(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Score, prune and retrain for ``config.num_replicates`` replicates; resumable.

    Writes into ``workdir``: ``config.json``, ``metrics.jsonl``, ``scores.npy``
    (the averaged score of every training example), ``results.csv`` (``kept,
    mode, replicate, num_examples, test_accuracy, test_loss``; ``kept = 1`` is
    the full data; mean and std rows), ``plots/data_diet.png`` and
    ``checkpoints/``.

    Raises:
      ValueError: unknown modes or score, kept shares outside (0, 1), an offset
        that leaves fewer than ``kept`` examples, bad seeds (before any work).
    """
    modes, kept_shares = check_config(config)

    def check(dataset) -> None:
        n = len(dataset.train)
        for share in kept_shares:
            size = int(round(share * n))
            if size < config.recipe.batch_size:
                raise ValueError(f"config.kept={share} keeps {size} examples, fewer than a "
                                 f"batch ({config.recipe.batch_size})")
            if "hardest" in modes and config.offset + size > n:
                raise ValueError(f"config.offset={config.offset} + {size} kept examples is "
                                 f"more than the {n} training examples")

    workdir, dataset, recipe, executor = common.setup(config, workdir, check=check,
                                                      progress=progress)
    per_epoch = executor.steps_per_epoch
    end = common.steps(config.training_steps, per_epoch)
    score_step = common.steps(config.score_step, per_epoch)
    num = config.num_replicates
    n = len(dataset.train)
    keys = rng.replicate_keys(config.seed, num)
    init_keys, noise_keys = rng.init_and_noise(keys)
    log = results.MetricsLog(workdir / "metrics.jsonl")
    segment = common.segment_runner(config, executor, end=end, log=log, splits=["test"],
                                    progress=progress)

    # 1. Scores: score_seeds dense runs to score_step, averaged.
    scores_path = workdir / "scores.npy"
    if scores_path.exists():
        scores = np.load(scores_path)
    else:
        score_keys = rng.stream(rng.replicate_keys(config.seed, config.score_seeds), "score")
        s_init, s_noise = rng.init_and_noise(score_keys)
        state = executor.init(s_init)
        if score_step > 0:
            state = segment(executor, state=state, masks=None, noise_keys=s_noise,
                            end=score_step, ckpt_dir=workdir / "checkpoints" / "score",
                            tags={"branch": "score"}, densities=np.ones(config.score_seeds),
                            desc=f"score runs to step {score_step}")
        scores = _scores(config.score, executor, state, dataset)
        tmp = scores_path.with_suffix(".tmp.npy")
        np.save(tmp, scores)
        tmp.replace(scores_path)

    # 2. The full data, then each kept share's modes x replicates as one program.
    rows = []
    full = segment(executor, state=executor.init(init_keys), masks=None,
                   noise_keys=noise_keys, ckpt_dir=workdir / "checkpoints" / "full",
                   tags={"kept": 1.0, "mode": "full"}, densities=np.ones(num),
                   desc=f"full data x{num}")
    rows += _rows(executor, full, 1.0, ["full"] * num, list(range(num)), n)
    for share in kept_shares:
        size = int(round(share * n))
        member_tags = [{"mode": m, "replicate": r} for m in modes for r in range(num)]
        subsets = np.stack([
            data_diet.select(scores, size, mode=t["mode"], offset=config.offset,
                             key=jax.random.fold_in(rng.stream(keys[t["replicate"]], "subset"),
                                                    int(round(share * 1e6))))
            for t in member_tags])
        members = len(member_tags)
        replicate_of = np.array([t["replicate"] for t in member_tags])
        final = segment(
            executor, state=executor.init(init_keys[replicate_of]),
            masks=None, noise_keys=noise_keys[replicate_of],
            ckpt_dir=workdir / "checkpoints" / f"kept_{share:g}", tags={"kept": share},
            member_tags=member_tags, densities=np.full(members, share), subsets=subsets,
            desc=f"{100 * share:g} % kept: {', '.join(modes)} x{num}")
        rows += _rows(executor, final, share, [t["mode"] for t in member_tags],
                      [t["replicate"] for t in member_tags], size)
    table = common.with_mean_rows(rows, by=("kept", "mode"),
                                  fields=("num_examples", "test_accuracy", "test_loss"))
    results.write_csv(workdir / "results.csv", table)
    plots.plot_data_diet([r for r in table if r["replicate"] not in ("mean", "std")],
                         workdir / "plots" / "data_diet.png",
                         title=f"data diet: {config.model} on "
                               f"{plots.dataset_label(config.dataset)}, {config.score} at "
                               f"step {score_step}, {num} replicates")
    return {"rows": [r for r in table if r["replicate"] == "mean"],
            "std": [r for r in table if r["replicate"] == "std"], "num_replicates": num}


def _rows(executor, state, share, modes, replicates, size) -> list[dict]:
    metrics = executor.evaluate(state, "test")
    return [{"kept": share, "mode": m, "replicate": r, "num_examples": size,
             "test_accuracy": float(metrics["accuracy"][i]), "test_loss": float(metrics["loss"][i])}
            for i, (m, r) in enumerate(zip(modes, replicates, strict=True))]


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
