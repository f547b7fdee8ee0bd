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
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
