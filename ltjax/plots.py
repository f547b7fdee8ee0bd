"""Figures of a workdir, drawn from ``metrics.jsonl`` records (matplotlib, Agg).

Example:
    >>> plot_learning_curves(records, workdir / "plots" / "learning_curve.png")
"""

from __future__ import annotations

import os
import pathlib
from collections import defaultdict
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def mean_and_spread(records: Sequence[dict], *, x: str, y: str) -> tuple[np.ndarray, ...]:
    """Group ``records`` by ``x``; return ``xs, mean, std, min, max`` of ``y`` over replicates."""
    groups: dict[float, list[float]] = defaultdict(list)
    for r in records:
        if r.get(y) is not None:
            groups[r[x]].append(float(r[y]))
    xs = np.array(sorted(groups))
    values = [np.array(groups[k]) for k in xs]
    stats = [np.array([f(v) for v in values]) for f in (np.mean, np.std, np.min, np.max)]
    return (xs, *stats)


def plot_learning_curves(
    records: Sequence[dict], path: str | os.PathLike, *, splits: Sequence[str] = ("test",),
    title: str = "",
) -> None:
    """Loss and accuracy vs step: mean over replicates, a band of +-1 std and min-max.

    Args:
      records: metric records with ``step``, ``split``, ``loss``, ``accuracy``.
      path: the PNG to write.
      splits: the splits to draw, one line each.
      title: the figure title.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for split in splits:
        rows = [r for r in records if r["split"] == split]
        if not rows:
            continue
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            xs, mean, std, lo, hi = mean_and_spread(rows, x="step", y=metric)
            if not len(xs):
                continue
            (line,) = ax.plot(xs, mean, label=f"{split} (mean)")
            ax.fill_between(xs, mean - std, mean + std, alpha=0.3, color=line.get_color())
            ax.fill_between(xs, lo, hi, alpha=0.1, color=line.get_color())
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    num = len({r["replicate"] for r in records}) if records else 0
    fig.suptitle(title or f"learning curves ({num} replicates; band: ±1 std, light: min-max)")
    fig.tight_layout()
    _save(fig, path)


def plot_accuracy_vs_density(rows: Sequence[dict], path: str | os.PathLike, *,
                             title: str = "") -> None:
    """Test accuracy vs density, one line per branch (IMP and each control).

    ``rows`` are the rows of an IMP ``results.csv`` (``level``, ``branch``,
    ``replicate``, ``density``, ``test_accuracy``, optional
    ``early_stop_test_accuracy``); mean over replicates with a +-1 std band.
    The density axis is logarithmic and runs from dense (left) to sparse
    (right), as in the LTH paper's figures.
    """
    per_replicate = [r for r in rows if isinstance(r["replicate"], int)]
    metrics = [("test_accuracy", "final test accuracy")]
    if any("early_stop_test_accuracy" in r for r in per_replicate):
        metrics.append(("early_stop_test_accuracy", "test accuracy at early stop"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    branches = list(dict.fromkeys(r["branch"] for r in per_replicate))
    for ax, (metric, label) in zip(axes[0], metrics, strict=True):
        for branch in branches:
            mine = [r for r in per_replicate if r["branch"] == branch and metric in r]
            if branch != "imp":  # controls start at level 1; draw them from the dense point
                mine += [r for r in per_replicate if r["branch"] == "imp" and r["level"] == 0]
            xs, mean, std, _, _ = mean_and_spread(mine, x="density", y=metric)
            (line,) = ax.plot(100 * xs, 100 * mean, marker="o", ms=3, label=branch)
            ax.fill_between(100 * xs, 100 * (mean - std), 100 * (mean + std), alpha=0.2,
                            color=line.get_color())
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("percent of prunable weights remaining")
        ax.set_ylabel(f"{label} (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_level_curves(records: Sequence[dict], path: str | os.PathLike, *, split: str = "test",
                      title: str = "") -> None:
    """Accuracy vs step for each pruning level (mean over replicates), one line per level."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    levels = sorted({r["level"] for r in records})
    cmap = plt.get_cmap("viridis", max(len(levels), 2))
    trained = []  # values after the first eval: the y-range that shows the differences
    for i, level in enumerate(levels):
        mine = [r for r in records if r["level"] == level and r["split"] == split]
        if not mine:
            continue
        xs, mean, _, _, _ = mean_and_spread(mine, x="step", y="accuracy")
        ax.plot(xs, 100 * mean, color=cmap(i),
                label=f"level {level} ({100 * mine[0]['density']:.1f}%)")
        trained += list(100 * mean[1:])
    if trained:
        ax.set_ylim(max(0.0, min(trained) - 0.5), min(100.0, max(trained) + 0.3))
    ax.set_xlabel("step")
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str | os.PathLike) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_error_vs_alpha(records: Sequence[dict], path: str | os.PathLike, *,
                        title: str = "") -> None:
    """Error along the interpolation path, one line per rewind step k, one panel per split.

    ``records`` are ``path`` records (``k``, ``split``, ``alpha``, ``accuracy``);
    mean over replicates and pairs with a +-1 std band.
    """
    splits = list(dict.fromkeys(r["split"] for r in records))
    fig, axes = plt.subplots(1, max(len(splits), 1), figsize=(6 * max(len(splits), 1), 4.5),
                             squeeze=False)
    ks = sorted({r["k"] for r in records})
    cmap = plt.get_cmap("viridis", max(len(ks), 2))
    for ax, split in zip(axes[0], splits, strict=False):
        for i, k in enumerate(ks):
            mine = [{**r, "error": 100 * (1 - r["accuracy"])} for r in records
                    if r["k"] == k and r["split"] == split]
            xs, mean, std, _, _ = mean_and_spread(mine, x="alpha", y="error")
            (line,) = ax.plot(xs, mean, color=cmap(i), label=f"k = {k}")
            ax.fill_between(xs, mean - std, mean + std, alpha=0.2, color=line.get_color())
        ax.set_xlabel("interpolation alpha")
        ax.set_ylabel(f"{split} error (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_instability_vs_k(rows: Sequence[dict], path: str | os.PathLike, *,
                          title: str = "", threshold: float = 0.02) -> None:
    """Instability (error barrier) vs rewind step k per split: mean and spread over pairs."""
    rows = [r for r in rows if isinstance(r.get("replicate"), int)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for split in dict.fromkeys(r["split"] for r in rows):
        mine = [{**r, "pct": 100 * r["instability"]} for r in rows if r["split"] == split]
        xs, mean, std, lo, hi = mean_and_spread(mine, x="k", y="pct")
        positions = np.arange(len(xs))
        (line,) = ax.plot(positions, mean, marker="o", label=split)
        ax.fill_between(positions, mean - std, mean + std, alpha=0.2, color=line.get_color())
        ax.fill_between(positions, lo, hi, alpha=0.08, color=line.get_color())
        ax.set_xticks(positions, [str(int(x)) for x in xs])
    ax.axhline(100 * threshold, color="grey", ls="--", lw=1, label="stable below 2 %")
    ax.set_xlabel("rewind step k (iterations)")
    ax.set_ylabel("instability: error barrier (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
