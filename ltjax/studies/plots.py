"""Figures of a workdir, drawn from ``metrics.jsonl`` records (matplotlib, Agg).

Example:
    >>> import pathlib, tempfile
    >>> from ltjax.studies import plots
    >>> records = [{"replicate": r, "step": s, "split": "test", "loss": 2.0 / (s + 1),
    ...             "accuracy": 0.3 * s + 0.1 * r} for r in (0, 1) for s in (0, 1, 2)]
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "learning_curve.png"
    >>> plots.plot_learning_curves(records, path)
    >>> path.is_file()
    True

    A study draws its figures from its workdir's log (not run here):
    ``plots.plot_learning_curves(log.read(), workdir / "plots" / "learning_curve.png")``.
"""

from __future__ import annotations

import os
import pathlib
from collections import Counter, defaultdict
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.legend_handler import HandlerTuple  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ltjax.io import distributed, results  # noqa: E402

MAX_DENSITY_TICKS = 16
"""The most ticks a density axis labels; more densities get an evenly spread subset."""


def dataset_label(name: str | os.PathLike) -> str:
    """The name of a dataset for a figure's title: a path's file name without ``.npz``.

    Args:
      name: a dataset name (``'mnist'``) or a path to an ``.npz`` file or a folder.

    Returns:
      ``name`` itself for a bare name, else the last component of the path
      without its ``.npz`` suffix.

    Example:
        >>> from ltjax.studies import plots
        >>> plots.dataset_label("/data/cifar10_first4000/cifar10_train_first4000.npz")
        'cifar10_train_first4000'
        >>> plots.dataset_label("mnist")
        'mnist'
    """
    text = os.fspath(name)
    if "/" not in text and os.sep not in text and not text.endswith(".npz"):
        return text
    path = pathlib.PurePath(text.rstrip("/" + os.sep))
    return path.name.removesuffix(".npz")


def percent_label(percent: float) -> str:
    """A density in percent as a tick label: 3 significant digits from 10 up, else 2.

    Example:
        >>> from ltjax.studies import plots
        >>> [plots.percent_label(100 * 0.8**n) for n in (0, 1, 3, 4, 15)]
        ['100', '80', '51.2', '41', '3.5']
    """
    return f"{percent:.3g}" if percent >= 10 else f"{percent:.2g}"


def band_label(kind: str, count: int, unit: str = "replicates") -> str | None:
    """The legend text of a shaded band: ``kind`` is ``'std'`` (+-1 std) or ``'range'`` (min-max).

    None for fewer than 2 samples: a band over one sample is empty, and its legend
    entry is left out (no "±1 std over 1 replicates" beside nothing).

    Example:
        >>> from ltjax.studies import plots
        >>> plots.band_label("std", 4)
        '±1 std over 4 replicates'
        >>> plots.band_label("range", 3, unit="pairs")
        'min-max over 3 pairs'
        >>> print(plots.band_label("std", 1))
        None
    """
    what = {"std": "±1 std", "range": "min-max"}[kind]
    return f"{what} over {count} {unit}" if count >= 2 else None


def mean_and_spread(records: Sequence[dict], *, x: str, y: str) -> tuple[np.ndarray, ...]:
    """Group ``records`` by ``x``; return ``xs, mean, std, min, max`` of ``y`` over replicates.

    Example:
        >>> from ltjax.studies import plots
        >>> records = [{"step": 0, "acc": 0.5}, {"step": 0, "acc": 0.7}, {"step": 1, "acc": 0.9}]
        >>> xs, mean, std, lo, hi = plots.mean_and_spread(records, x="step", y="acc")
        >>> xs.tolist(), mean.round(3).tolist(), std.round(3).tolist(), hi.tolist()
        ([0, 1], [0.6, 0.9], [0.1, 0.0], [0.7, 0.9])
    """
    groups: dict[float, list[float]] = defaultdict(list)
    for r in records:
        if r.get(y) is not None:
            groups[r[x]].append(float(r[y]))
    xs = np.array(sorted(groups))
    values = [np.array(groups[k]) for k in xs]
    stats = [np.array([f(v) for v in values]) for f in (np.mean, np.std, np.min, np.max)]
    return (xs, *stats)


def _group_size(records: Sequence[dict], *, x: str) -> int:
    """The most records sharing one value of ``x``: the S of a band over S samples."""
    return max(Counter(r[x] for r in records).values(), default=0)


#: Densities closer than this share of each other (a control that kept a few weights more)
#: share one tick on a density axis.
TICK_MERGE = 0.03


def swept_values(values: Sequence[float], *, merge: float = TICK_MERGE) -> list[float]:
    """The distinct values of a sweep, largest first, values within ``merge`` (relative)
    of a kept larger one dropped: the ticks of an axis that must not overlap.

    Example:
        >>> from ltjax.studies import plots
        >>> plots.swept_values([100, 80, 64.1, 64.0, 51.2, 80])
        [100, 80, 64.1, 51.2]
    """
    out: list[float] = []
    for value in sorted(set(values), reverse=True):
        if not out or abs(out[-1] - value) > merge * abs(out[-1]):
            out.append(value)
    return out


def _density_axis(ax, densities: Sequence[float]) -> None:
    """A log density axis in percent, dense on the left, ticks at the densities drawn.

    Densities within :data:`TICK_MERGE` of each other share a tick
    (:func:`swept_values`); at most :data:`MAX_DENSITY_TICKS` ticks (evenly
    spread over the densities, both ends kept), labelled by
    :func:`percent_label`; no minor ticks.
    """
    percents = swept_values([float(100 * d) for d in densities])
    ax.set_xscale("log")
    if percents:
        if len(percents) > MAX_DENSITY_TICKS:
            keep = np.unique(np.round(np.linspace(0, len(percents) - 1, MAX_DENSITY_TICKS)))
            percents = [percents[int(i)] for i in keep]
        ax.set_xticks(percents, [percent_label(p) for p in percents], fontsize=8)
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    if not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.set_xlabel("percent of prunable weights remaining")


def _mean_with_bands(ax, xs: np.ndarray, mean: np.ndarray,
                     bands: Sequence[tuple[np.ndarray, np.ndarray, float]] = (),
                     **line_kw) -> Line2D:
    """Draw a mean line with its shaded bands ``(low, high, alpha)``; return the line.

    With one x value a line and a band are invisible (a point, a zero-width
    area): the mean is then a marker with the widest band as an error bar,
    and the x axis gets a tick at that value only.
    """
    if len(xs) == 1:
        line_kw = {**line_kw, "marker": line_kw.get("marker") or "o", "linestyle": "none"}
        (line,) = ax.plot(xs, mean, **line_kw)
        if bands:
            low, high, _ = bands[-1] if len(bands) > 1 else bands[0]
            ax.errorbar(xs, mean, yerr=[mean - low, high - mean], fmt="none",
                        ecolor=line.get_color(), capsize=5, lw=1)
        ax.set_xticks(xs)
        return line
    (line,) = ax.plot(xs, mean, **line_kw)
    for low, high, alpha in bands:
        ax.fill_between(xs, low, high, alpha=alpha, color=line.get_color(), lw=0)
    return line


def _integer_ticks(ax, axis: str = "x") -> None:
    """Integer ticks only (steps, epochs, generations): no 12.5 on a step axis. Ticks set
    by hand (the one value of :func:`_mean_with_bands`) stay."""
    target = getattr(ax, f"{axis}axis")
    if not isinstance(target.get_major_locator(), ticker.FixedLocator):
        target.set_major_locator(ticker.MaxNLocator(integer=True))


def _error_ylim(ax, tops: Sequence[float]) -> None:
    """Errors in percent from 0 to the largest drawn value, at least 1 (never a zoom on noise)."""
    ax.set_ylim(0.0, max([1.0, *(1.05 * float(t) for t in tops)]))


def _style(ax, *, xlabel: str | None = None, ylabel: str | None = None,
           bands: Sequence[tuple[str, float]] = (), legend: bool = True,
           fontsize: float = 8, title: str | None = None, **legend_kw) -> None:
    """Label an axis, draw its grid and its legend.

    Args:
      ax: the axis.
      xlabel: its x label (None: keep it).
      ylabel: its y label (None: keep it).
      bands: ``(text, alpha)`` per kind of shaded band on the axis: one
        legend entry each, after the lines', its swatch in the colours of the
        bands of that kind drawn on the axis (grey when none is); a text of
        None (:func:`band_label` of one sample) gets no entry.
      legend: whether to draw a legend. It goes outside the axis, on its
        right, so it never covers the data (unless ``loc`` is given).
      fontsize: the legend's font size.
      title: the axis title (None: none).
      **legend_kw: more ``ax.legend`` arguments.
    """
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        handles, labels = ax.get_legend_handles_labels()
        for text, alpha in bands:
            if text is None:
                continue
            colors = list(dict.fromkeys(
                matplotlib.colors.to_hex(c.get_facecolor()[0], keep_alpha=False)
                for c in ax.collections if c.get_alpha() == alpha and len(c.get_facecolor())))
            handles.append(tuple(Patch(facecolor=c, alpha=alpha) for c in colors or ["grey"]))
            labels.append(text)
        if handles:
            if "loc" not in legend_kw:
                legend_kw.update(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
            ax.legend(handles, labels, fontsize=fontsize,
                      handler_map={tuple: HandlerTuple(ndivide=None, pad=0.0)}, **legend_kw)


def _finish(fig, path: str | os.PathLike, title: str) -> None:
    """Give ``fig`` its title, lay it out and write it to ``path``."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


#: What :func:`plot_learning_curves` says under a model with BatchNorm (``note=``).
BATCH_NORM_INIT_NOTE = ("step 0 is evaluated in eval mode: BatchNorm's running statistics are "
                        "still their init (mean 0, var 1), which inflates the first loss")


def plot_learning_curves(
    records: Sequence[dict], path: str | os.PathLike, *, splits: Sequence[str] = ("test",),
    title: str = "", note: str | None = None,
) -> None:
    """Loss (log scale) and accuracy vs step: mean over replicates, a band of +-1 std and min-max.

    Args:
      records: metric records with ``step``, ``split``, ``loss``, ``accuracy``.
      path: the PNG to write.
      splits: the splits to draw, one line each.
      title: the figure title.
      note: a line written under the loss panel (e.g. :data:`BATCH_NORM_INIT_NOTE`).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    num = len({r["replicate"] for r in records}) if records else 0
    for split in splits:
        rows = [r for r in records if r["split"] == split]
        if not rows:
            continue
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            xs, mean, std, lo, hi = mean_and_spread(rows, x="step", y=metric)
            if not len(xs):
                continue
            _mean_with_bands(ax, xs, mean, [(mean - std, mean + std, 0.3), (lo, hi, 0.1)],
                             label=f"{split} (mean)")
    if any(line.get_ydata().size and np.all(np.asarray(line.get_ydata()) > 0)
           for line in axes[0].get_lines()):
        axes[0].set_yscale("log")  # a linear loss axis flattens after the first steps
    if note:
        axes[0].text(0.0, -0.2, note, transform=axes[0].transAxes, fontsize=7, color="0.35",
                     va="top", wrap=True)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        _integer_ticks(ax)
        _style(ax, xlabel="step", ylabel=metric + (" (log scale)" if ax.get_yscale() == "log"
                                                   else ""), fontsize=9,
               bands=((band_label("std", num), 0.3), (band_label("range", num), 0.1)))
    _finish(fig, path, title or f"learning curves ({num} replicates)")


def plot_accuracy_vs_density(rows: Sequence[dict], path: str | os.PathLike, *,
                             title: str = "") -> None:
    """Test accuracy vs density, one line per branch (IMP and each control).

    ``rows`` are the rows of an IMP ``results.csv`` (``level``, ``branch``,
    ``replicate``, ``density``, ``test_accuracy``, optional
    ``early_stop_test_accuracy``); mean over replicates with a +-1 std band.
    The density axis is logarithmic and runs from dense (left) to sparse
    (right), as in the LTH paper's figures, its ticks at the densities drawn.
    A second panel shows the accuracy at the early-stop step, unless it
    would repeat the first (every early stop at the final step). The dense
    net (level 0) is also a dotted horizontal line, the baseline a ticket
    must match.
    """
    per_replicate = [r for r in rows if isinstance(r["replicate"], int)]
    metrics = [("test_accuracy", "final test accuracy")]
    if any("early_stop_test_accuracy" in r and r["early_stop_test_accuracy"]
           != r["test_accuracy"] for r in per_replicate):
        metrics.append(("early_stop_test_accuracy", "test accuracy at early stop"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    branches = list(dict.fromkeys(r["branch"] for r in per_replicate))
    num = len({r["replicate"] for r in per_replicate})
    for ax, (metric, label) in zip(axes[0], metrics, strict=True):
        for branch in branches:
            mine = [r for r in per_replicate if r["branch"] == branch and metric in r]
            if branch != "imp":  # controls start at level 1; draw them from the dense point
                mine += [r for r in per_replicate if r["branch"] == "imp" and r["level"] == 0]
            xs, mean, std, _, _ = mean_and_spread(mine, x="density", y=metric)
            _mean_with_bands(ax, 100 * xs, 100 * mean,
                             [(100 * (mean - std), 100 * (mean + std), 0.2)],
                             marker="o", ms=3, label=branch)
        dense = [r[metric] for r in per_replicate
                 if r["level"] == 0 and r["branch"] == "imp" and metric in r]
        if dense:
            ax.axhline(100 * np.mean(dense), color="k", lw=0.8, ls=":", label="dense (level 0)")
        _density_axis(ax, [r["density"] for r in per_replicate])
        _style(ax, ylabel=f"{label} (%)", fontsize=10,
               bands=((band_label("std", num), 0.2),))
    _finish(fig, path, title)


def plot_level_curves(records: Sequence[dict], path: str | os.PathLike, *, split: str = "test",
                      title: str = "") -> None:
    """Accuracy vs step for each pruning level (mean over replicates), one line per level."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    levels = sorted({r["level"] for r in records})
    cmap = plt.get_cmap("viridis", max(len(levels), 2))
    trained = []  # values after the first eval: the y-range that shows the differences
    first = float("inf")
    for i, level in enumerate(levels):
        mine = [r for r in records if r["level"] == level and r["split"] == split]
        if not mine:
            continue
        xs, mean, _, _, _ = mean_and_spread(mine, x="step", y="accuracy")
        ax.plot(xs, 100 * mean, color=cmap(i),
                label=f"level {level} ({100 * mine[0]['density']:.1f}%)")
        trained += list(100 * mean[1:])
        first = min(first, 100 * float(mean[0])) if len(mean) else first
    if trained:
        ax.set_ylim(max(0.0, min(trained) - 0.5), min(100.0, max(trained) + 0.3))
        _say_clipped(ax, first)
    _integer_ticks(ax)
    _style(ax, xlabel="step", ylabel=f"{split} accuracy (%)", fontsize=7)
    _finish(fig, path, title)


def _say_clipped(ax, first: float) -> None:
    """Say on ``ax`` that the first evaluation (lowest value ``first``, %) lies below its y-range.

    The curves zoom on the trained values so their differences show; the
    step-0 points are then off the axis, and the plot says where they are.
    """
    if first < ax.get_ylim()[0]:
        ax.text(0.01, 0.01, f"first evaluation (as low as {first:.1f} %) below the axis",
                transform=ax.transAxes, fontsize=7, color="0.35", va="bottom")


def _save(fig, path: str | os.PathLike) -> None:
    """Save and close ``fig`` (process 0 saves in a multi-process run:
    :mod:`ltjax.io.distributed`)."""
    path = pathlib.Path(path)

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")  # legends sit outside the axes

    distributed.write(f"plot {path}", write)
    plt.close(fig)


def plot_error_vs_alpha(records: Sequence[dict], path: str | os.PathLike, *,
                        title: str = "") -> None:
    """Error along the interpolation path, one line per rewind step k, one panel per split.

    ``records`` are ``path`` records (``k``, ``split``, ``alpha``, ``accuracy``);
    mean over replicates and pairs with a +-1 std band. The error axis runs
    from 0 to the largest value drawn (at least 1 %), so a split that is
    all but error-free shows flat lines rather than magnified noise.
    """
    splits = list(dict.fromkeys(r["split"] for r in records))
    fig, axes = plt.subplots(1, max(len(splits), 1), figsize=(6 * max(len(splits), 1), 4.5),
                             squeeze=False)
    ks = sorted({r["k"] for r in records})
    cmap = plt.get_cmap("viridis", max(len(ks), 2))
    for ax, split in zip(axes[0], splits, strict=False):
        tops, num = [], 0
        for i, k in enumerate(ks):
            mine = [{**r, "error": 100 * (1 - r["accuracy"])} for r in records
                    if r["k"] == k and r["split"] == split]
            xs, mean, std, _, _ = mean_and_spread(mine, x="alpha", y="error")
            _mean_with_bands(ax, xs, mean, [(np.maximum(mean - std, 0.0), mean + std, 0.2)],
                             color=cmap(i), label=f"k = {k}")
            tops += list(mean + std)
            num = max(num, _group_size(mine, x="alpha"))
        _error_ylim(ax, tops)
        _style(ax, xlabel="interpolation alpha", ylabel=f"{split} error (%)", fontsize=10,
               bands=((band_label("std", num, "pairs of copies"), 0.2),))
    _finish(fig, path, title)


_CURVE_COLORS = {("naive", "none"): "tab:grey", ("matched", "none"): "tab:green",
                 ("naive", "reset"): "tab:olive", ("matched", "reset"): "tab:blue",
                 ("naive", "repair"): "tab:brown", ("matched", "repair"): "tab:red"}


def plot_interpolation(records: Sequence[dict], path: str | os.PathLike, *,
                       title: str = "", rows: Sequence[dict] = ()) -> None:
    """Loss and accuracy along naive and matched paths, train solid and test dashed.

    The style of Git Re-Basin's figures (Ainsworth et al. 2023, Figures 2 and
    4): one line per path kind (``variant`` naive/matched x ``correction``
    none/reset/repair) and split, mean over pairs of models. With ``rows``
    (the study's results rows), the loss panel's legend names both loss
    barriers, against the chord (the paper's Eq. 1) and against the ends'
    mean (the reference plots), and the accuracy panel's the error barrier.

    Args:
      records: ``path`` records (``variant``, ``correction``, ``split``,
        ``alpha``, ``loss``, ``accuracy``).
      path: the PNG to write.
      title: the figure title.
      rows: optional results rows with ``loss_barrier_chord``,
        ``loss_barrier_mean_ends`` and ``error_barrier`` per
        ``(variant, correction, split)``, averaged over pairs here.
    """
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    kinds = list(dict.fromkeys((r["variant"], r["correction"]) for r in records))
    for kind in kinds:
        for split in dict.fromkeys(r["split"] for r in records):
            mine = [r for r in records if (r["variant"], r["correction"]) == kind
                    and r["split"] == split]
            label = kind[0] + ("" if kind[1] == "none" else f" + {kind[1]}") + f", {split}"
            found = [r for r in rows if (r["variant"], r["correction"], r["split"])
                     == (*kind, split) and r.get("pair") != "mean"]
            extra = {"loss": "", "accuracy": ""}
            if found:
                mean = {key: float(np.mean([float(r[key]) for r in found]))
                        for key in ("loss_barrier_chord", "loss_barrier_mean_ends",
                                    "error_barrier")}
                extra = {"loss": f" (barrier: chord {mean['loss_barrier_chord']:.3f}, "
                                 f"ends' mean {mean['loss_barrier_mean_ends']:.3f})",
                         "accuracy": f" (error barrier {100 * mean['error_barrier']:.2f} %)"}
            style = "-" if split == "train" else "--"
            for ax, metric, scale in ((axes[0], "loss", 1.0), (axes[1], "accuracy", 100.0)):
                xs, mean_curve, _, _, _ = mean_and_spread(mine, x="alpha", y=metric)
                ax.plot(xs, scale * mean_curve, style, color=_CURVE_COLORS.get(kind),
                        label=label + extra[metric],
                        marker="." if split == "train" else None)
    for ax, name in zip(axes, ("loss", "accuracy (%)"), strict=True):
        _style(ax, xlabel="interpolation alpha (model 0 -> model j)", ylabel=name,
               fontsize=6 if rows else 7)
    _finish(fig, path, title)


def plot_branch_curves(records: Sequence[dict], path: str | os.PathLike, *, key: str,
                       split: str = "test", title: str = "") -> None:
    """Accuracy vs step, one line per value of ``records[key]``: mean and min-max over replicates.

    Example:
        >>> import pathlib, tempfile
        >>> from ltjax.studies import plots
        >>> records = [{"member": m, "replicate": r, "step": s, "split": "test",
        ...             "accuracy": 0.2 * s + 0.1 * r + (m == "ticket") * 0.1}
        ...            for m in ("ticket", "random") for r in (0, 1) for s in (0, 1, 2)]
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "sparse.png"
        >>> plots.plot_branch_curves(records, path, key="member")
        >>> path.is_file()
        True
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    trained, num, first = [], 0, float("inf")
    for value in dict.fromkeys(r[key] for r in records if r["split"] == split):
        mine = [r for r in records if r[key] == value and r["split"] == split]
        xs, mean, _, lo, hi = mean_and_spread(mine, x="step", y="accuracy")
        _mean_with_bands(ax, xs, 100 * mean, [(100 * lo, 100 * hi, 0.15)], label=str(value))
        trained += list(100 * lo[1:] if len(lo) > 2 else 100 * lo)
        first = min(first, 100 * float(lo[0])) if len(lo) else first
        num = max(num, _group_size(mine, x="step"))
    if trained:
        ax.set_ylim(max(0.0, min(trained) - 1.0), 100.0)
        _say_clipped(ax, first)
    _integer_ticks(ax)
    _style(ax, xlabel="step", ylabel=f"{split} accuracy (%)",
           bands=((band_label("range", num), 0.15),))
    _finish(fig, path, title)


def plot_instability_vs_k(rows: Sequence[dict], path: str | os.PathLike, *,
                          title: str = "", threshold: float = 0.02) -> None:
    """Instability (error barrier) vs rewind step k per split: mean and spread over pairs."""
    rows = [r for r in rows if isinstance(r.get("replicate"), int)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    num = 0
    for split in dict.fromkeys(r["split"] for r in rows):
        mine = [{**r, "pct": 100 * r["instability"]} for r in rows if r["split"] == split]
        xs, mean, std, lo, hi = mean_and_spread(mine, x="k", y="pct")
        positions = np.arange(len(xs))
        _mean_with_bands(ax, positions, mean, [(mean - std, mean + std, 0.2), (lo, hi, 0.08)],
                         marker="o", label=split)
        ax.set_xticks(positions, [str(int(x)) for x in xs])
        num = max(num, _group_size(mine, x="k"))
    ax.axhline(100 * threshold, color="grey", ls="--", lw=1,
               label=f"stable below {100 * threshold:g} %")
    _style(ax, xlabel="rewind step k (iterations)", ylabel="instability: error barrier (%)",
           fontsize=10, bands=((band_label("std", num, "pairs of copies"), 0.2),
                               (band_label("range", num, "pairs of copies"), 0.08)))
    _finish(fig, path, title)


_TRANSITION_COLORS = {"dense": "tab:blue", "imp": "tab:orange", "random": "tab:green"}


def plot_transition(instability: Sequence[dict], accuracy: Sequence[dict],
                    path: str | os.PathLike, *, dense_accuracy: float, matching_within: float,
                    title: str = "", threshold: float = 0.02) -> None:
    """The instability transition (Frankle et al. 2020, Figures 3 and 6) in two panels.

    Left: test instability vs rewind step k, one line per ``kind`` (dense,
    IMP, random pruning) with a band of +-1 std over pairs of copies. Right:
    test accuracy of the sparse subnetworks vs k, with the dense accuracy and
    the matching band below it.

    Args:
      instability: per-pair rows of the stability study's ``results.csv`` on
        the test split, each with a ``kind``.
      accuracy: rows ``{'k', 'kind', 'test_accuracy'}``, one per trained copy.
      path: the PNG to write.
      dense_accuracy: the dense network's mean test accuracy.
      matching_within: the matching tolerance (an accuracy share, e.g. 0.005).
      title: the figure's title.
      threshold: the instability below which a network is stable.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    ks = sorted({int(r["k"]) for r in instability} | {int(r["k"]) for r in accuracy})
    position = {k: i for i, k in enumerate(ks)}

    def draw(ax, rows: Sequence[dict], field: str) -> int:
        """One line per kind (mean, +-1 std) at the k's positions; the largest group size."""
        num = 0
        for kind in dict.fromkeys(r["kind"] for r in rows):
            mine = [{"k": position[int(r["k"])], "pct": 100 * float(r[field])}
                    for r in rows if r["kind"] == kind]
            xs, mean, std, _, _ = mean_and_spread(mine, x="k", y="pct")
            color = _TRANSITION_COLORS.get(kind)
            _mean_with_bands(ax, xs, mean, [(mean - std, mean + std, 0.2)], marker="o",
                             label=kind, color=color)
            num = max(num, _group_size(mine, x="k"))
        return num

    num = draw(left, instability, "instability")
    left.axhline(100 * threshold, color="grey", ls="--", lw=1,
                 label=f"stable below {100 * threshold:g} %")
    num_copies = draw(right, accuracy, "test_accuracy")
    right.axhline(100 * dense_accuracy, color="black", lw=1, label="dense")
    right.axhspan(100 * (dense_accuracy - matching_within), 100 * dense_accuracy, color="grey",
                  alpha=0.15, label=f"matching: within {100 * matching_within:g} pp")
    for ax in (left, right):
        ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    _style(left, xlabel="rewind step k (iterations)", ylabel="test instability (%)",
           fontsize=9, bands=((band_label("std", num, "pairs of copies"), 0.2),))
    _style(right, xlabel="rewind step k (iterations)", ylabel="test accuracy (%)", fontsize=9,
           bands=((band_label("std", num_copies, "trained copies"), 0.2),))
    _finish(fig, path, title)


_SOUP_STYLE = {  # model -> (marker, color, size, label)
    "pretrained": ("X", "black", 80, "pretrained (theta_0)"),
    "uniform": ("*", "tab:blue", 220, "uniform soup"),
    "greedy": ("*", "tab:red", 220, "greedy soup"),
    "learned": ("*", "tab:green", 220, "learned soup"),
    "ensemble": ("D", "tab:purple", 70, "output ensemble"),
}


def plot_soups(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Ingredients vs soups: validation vs test accuracy, and test vs shifted-test accuracy.

    ``rows`` are the per-model rows of a soups ``results.csv`` (``model`` =
    ``'ingredient'``, ``'pretrained'``, ``'uniform'``, ``'greedy'``,
    ``'learned'``, ``'ensemble'``; ``validation_accuracy``, ``test_accuracy``,
    ``shifted_accuracy``).
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    panels = (("validation_accuracy", "test_accuracy"), ("test_accuracy", "shifted_accuracy"))
    for ax, (x, y) in zip(axes, panels, strict=True):
        mine = [r for r in rows if r["model"] == "ingredient"]
        ax.scatter([100 * float(r[x]) for r in mine], [100 * float(r[y]) for r in mine],
                   s=18, color="grey", alpha=0.7, label=f"fine-tuned ingredients ({len(mine)})")
        for model, (marker, color, size, label) in _SOUP_STYLE.items():
            for r in rows:
                if r["model"] == model and r.get(x) not in (None, ""):
                    ax.scatter([100 * float(r[x])], [100 * float(r[y])], marker=marker,
                               color=color, s=size, label=label, edgecolors="white",
                               linewidths=0.5, zorder=3)
        _style(ax, xlabel=x.replace("_", " ") + " (%)", ylabel=y.replace("_", " ") + " (%)",
               legend=ax is axes[1], loc="best")
    # Zoom the left panel on the fine-tuned models (the pretrained one may lie far off).
    tuned = [r for r in rows if r["model"] != "pretrained"]
    for ax, (x, y) in zip(axes[:1], panels[:1], strict=True):
        xs = [100 * float(r[x]) for r in tuned]
        ys = [100 * float(r[y]) for r in tuned]
        ax.set_xlim(min(xs) - 0.2, max(xs) + 0.2)
        ax.set_ylim(min(ys) - 0.2, max(ys) + 0.2)
    _finish(fig, path, title)


_HYPERPARAMETERS = ("learning_rate", "weight_decay", "label_smoothing", "epochs", "augment",
                    "data_order")
"""The fine-tuning hyperparameters :func:`plot_wise_ft` may colour by, in order of preference."""


def _value_label(value: object) -> str:
    """A hyperparameter value in a legend: floats in ``%g`` form, anything else as ``str``."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_wise_ft(records: Sequence[dict], path: str | os.PathLike, *, title: str = "",
                 ingredients: Sequence[dict] = (), color_by: str | None = None) -> None:
    """WiSE-FT curves, one column per head mode.

    Top: test (in-distribution) vs shifted-test accuracy along the path from
    the pretrained model (alpha = 0) to each fine-tune (alpha = 1): one thin
    line per fine-tune, coloured by a hyperparameter, the mean in bold.
    Bottom: mean accuracy (+-1 std over fine-tunes) vs alpha on validation,
    test and shifted test.

    Args:
      records: ``wise_ft`` records (``ingredient``, ``head``, ``split``,
        ``alpha``, ``accuracy``).
      path: the PNG to write.
      title: the figure title.
      ingredients: one dict of hyperparameters per fine-tune (``ingredient``
        and e.g. ``learning_rate``, as the soups study's ``finetune_grid``);
        without them every fine-tune is grey.
      color_by: the hyperparameter that colours the fine-tunes (one colour
        per value, named in the legend); default: the first of
        ``learning_rate, weight_decay, label_smoothing, epochs, augment,
        data_order`` that varies.
    """
    hyper = {ing["ingredient"]: ing for ing in ingredients}
    if color_by is None:
        color_by = next((k for k in _HYPERPARAMETERS
                         if len({ing.get(k) for ing in ingredients}) > 1), None)
    values = sorted({hyper[i][color_by] for i in hyper}) if color_by else []
    cmap = plt.get_cmap("plasma")
    colors = {v: cmap(0.85 * n / max(len(values) - 1, 1)) for n, v in enumerate(values)}
    modes = list(dict.fromkeys(r["head"] for r in records))
    fig, axes = plt.subplots(2, max(len(modes), 1), figsize=(6.5 * max(len(modes), 1), 9),
                             squeeze=False)
    for col, mode in enumerate(modes):
        mine = [r for r in records if r["head"] == mode]
        curves: dict = defaultdict(dict)
        for r in mine:
            curves[(r["ingredient"], r["split"])][r["alpha"]] = 100 * r["accuracy"]
        ax = axes[0][col]
        tuned = sorted({r["ingredient"] for r in mine})
        for ingredient in tuned:
            test, shifted = curves[(ingredient, "test")], curves[(ingredient, "shifted")]
            alphas = sorted(test)
            color = colors[hyper[ingredient][color_by]] if color_by else "grey"
            ax.plot([test[a] for a in alphas], [shifted[a] for a in alphas], color=color,
                    lw=0.8, alpha=0.7, label=f"_fine-tune {ingredient}")
        _, test_mean, _, _, _ = mean_and_spread([r for r in mine if r["split"] == "test"],
                                                x="alpha", y="accuracy")
        alphas, shifted_mean, _, _, _ = mean_and_spread(
            [r for r in mine if r["split"] == "shifted"], x="alpha", y="accuracy")
        ax.plot(100 * test_mean, 100 * shifted_mean, color="black", lw=2.5, marker="o", ms=4,
                label="mean over fine-tunes", zorder=3)
        for a, tx, sy in zip(alphas, test_mean, shifted_mean, strict=True):
            if np.isclose(a, 0) or np.isclose(a, 1) or np.isclose(a, 0.5):
                ax.annotate(f"alpha={a:g}", (100 * tx, 100 * sy), textcoords="offset points",
                            xytext=(4, -10), fontsize=8)
        _style(ax, xlabel="test accuracy (%)", ylabel="shifted test accuracy (%)",
               title=f"head: {mode}", legend=False)
        handles = [Line2D([], [], color=colors[v], lw=1.5, label=f"{color_by} = {_value_label(v)}")
                   for v in values] if color_by else [
            Line2D([], [], color="grey", lw=0.8, label=f"one fine-tune ({len(tuned)})")]
        ax.legend(handles=[*handles, *ax.get_legend_handles_labels()[0]], fontsize=8)
        ax = axes[1][col]
        for split in ("validation", "test", "shifted"):
            split_records = [r for r in mine if r["split"] == split]
            xs, mean, std, _, _ = mean_and_spread(split_records, x="alpha", y="accuracy")
            _mean_with_bands(ax, xs, 100 * mean, [(100 * (mean - std), 100 * (mean + std), 0.2)],
                             marker="o", ms=3, label=split)
        _style(ax, xlabel="alpha (0: pretrained, 1: fine-tuned)", ylabel="accuracy (%)",
               bands=((band_label("std", len(tuned), "fine-tunes"), 0.2),))
    _finish(fig, path, title)


def plot_prune_at_init(rows: Sequence[dict], path: str | os.PathLike, *,
                       title: str = "") -> None:
    """Test accuracy vs density, one panel per ablation, one line per pruning method.

    ``rows`` are the rows of a pruning-at-init ``results.csv`` (``method``,
    ``density``, ``ablation``, ``replicate``, ``test_accuracy``); mean over
    replicates with a +-1 std band. Each panel repeats the unablated masks
    (thin dotted lines) for comparison; the dense net (method ``dense``) is a
    horizontal line. The density axis is logarithmic, dense on the left, its
    ticks at the densities drawn.
    """
    per_replicate = [r for r in rows if isinstance(r["replicate"], int)]
    methods = [m for m in dict.fromkeys(r["method"] for r in per_replicate) if m != "dense"]
    ablations = list(dict.fromkeys(r["ablation"] for r in per_replicate if r["method"] != "dense"))
    colors = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3,
                      strict=False))
    dense = [float(r["test_accuracy"]) for r in per_replicate if r["method"] == "dense"]
    num = len({r["replicate"] for r in per_replicate})
    fig, axes = plt.subplots(1, len(ablations), figsize=(4.5 * len(ablations), 4.5),
                             squeeze=False)
    for ax, ablation in zip(axes[0], ablations, strict=True):
        for method in methods:
            for abl, style in ((ablation, "-"), ("none", ":")):
                mine = [r for r in per_replicate
                        if r["method"] == method and r["ablation"] == abl]
                if not mine or (abl == "none" and ablation == "none" and style == ":"):
                    continue
                xs, mean, std, _, _ = mean_and_spread(mine, x="density", y="test_accuracy")
                if style == "-":
                    _mean_with_bands(ax, 100 * xs, 100 * mean,
                                     [(100 * (mean - std), 100 * (mean + std), 0.15)],
                                     marker="o", ms=3, color=colors[method], label=method)
                else:
                    ax.plot(100 * xs, 100 * mean, ":", lw=0.8, color=colors[method])
        if dense:
            ax.axhline(100 * np.mean(dense), color="k", lw=0.8, label="dense")
        _density_axis(ax, [r["density"] for r in per_replicate if r["method"] != "dense"])
        _style(ax, ylabel="final test accuracy (%)",
               title="as pruned" if ablation == "none" else ablation, fontsize=7,
               bands=((band_label("std", num), 0.15),))
    _finish(fig, path, title + " (dotted: as pruned)")


def plot_str(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """STR's test accuracy vs learned sparsity, one line per ``s_init`` over the weight decays.

    ``rows`` are the rows of an STR ``results.csv``; mean over replicates. The
    one-shot magnitude baseline at matched sparsities is drawn as crosses and the
    dense net as a horizontal line.
    """
    means = results.summarize(rows, by=("method", "s_init", "weight_decay"), stats=("mean",),
                              fields=("sparsity", "test_accuracy"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s_init in dict.fromkeys(r["s_init"] for r in means if r["method"] == "str"):
        mine = sorted((r for r in means if r["method"] == "str" and r["s_init"] == s_init),
                      key=lambda r: r["sparsity"])
        ax.plot([100 * r["sparsity"] for r in mine], [100 * r["test_accuracy"] for r in mine],
                "-o", ms=4, label=f"STR, s_init={s_init:g}")
    oneshot = [r for r in means if r["method"] == "oneshot"]
    if oneshot:
        ax.plot([100 * r["sparsity"] for r in oneshot], [100 * r["test_accuracy"] for r in oneshot],
                "x", color="k", label="one-shot magnitude + retrain")
    dense = [r for r in means if r["method"] == "dense"]
    if dense:
        ax.axhline(100 * dense[0]["test_accuracy"], color="k", lw=0.8, label="dense")
    _style(ax, xlabel="sparsity (% of prunable weights exactly zero)",
           ylabel="final test accuracy (%)")
    _finish(fig, path, title)


def plot_gamma_histograms(gammas: dict, path: str | os.PathLike, *, title: str = "") -> None:
    """Histograms of ``|gamma|`` (all BatchNorm scales, all replicates) per arm, log-spaced bins."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bins = np.logspace(-5, 1, 61)
    for arm, values in gammas.items():
        ax.hist(np.clip(values, 1e-5, 10), bins=bins, histtype="step", label=arm)
    ax.set_xscale("log")
    ax.axvline(0.01, color="k", lw=0.6, ls=":")
    _style(ax, xlabel="|gamma|", ylabel="count")
    _finish(fig, path, title)


def plot_subspaces(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Test accuracy along each learned subspace (``point_0`` to ``point_1``), mean over replicates.

    ``rows`` are the rows of a subspaces ``results.csv``. The path between
    independently trained standard nets is dashed, the standard nets' mean
    accuracy a horizontal line.
    """
    means = results.summarize(rows, by=("variant", "beta", "alpha"), stats=("mean",),
                              fields=("test_accuracy",))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in dict.fromkeys((r["variant"], r["beta"]) for r in means if r["alpha"] is not None):
        mine = sorted((r for r in means if (r["variant"], r["beta"]) == arm),
                      key=lambda r: r["alpha"])
        independent = arm[0] == "independent"
        label = "independent nets" if independent else f"{arm[0]}, beta={arm[1]:g}"
        ax.plot([r["alpha"] for r in mine], [100 * r["test_accuracy"] for r in mine],
                "--" if independent else "-o", ms=3, color="k" if independent else None,
                label=label)
    standard = [r for r in means if r["variant"] == "standard"]
    if standard:
        ax.axhline(100 * standard[0]["test_accuracy"], color="k", lw=0.8, ls=":",
                   label="standard training")
    _style(ax, xlabel="alpha (point_0 -> point_1)", ylabel="test accuracy (%)")
    _finish(fig, path, title)


def plot_perturbations(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Test accuracy drop vs effective std of each perturbation, one panel per rewind step k.

    ``rows`` are the rows of an early-phase ``results.csv``; each point is a
    perturbation's mean over replicates, with the replicates as small dots.
    """
    ks = sorted({r["k"] for r in rows})
    fig, axes = plt.subplots(1, len(ks), figsize=(5.5 * len(ks), 4.5), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        mine = [r for r in rows if r["k"] == k]
        means = results.summarize(mine, by=("perturbation",), stats=("mean",),
                                  fields=("effective_std", "test_accuracy_drop"))
        for mean in means:
            name = mean["perturbation"]
            reps = [r for r in mine if r["perturbation"] == name]
            points = ax.plot(mean["effective_std"], 100 * mean["test_accuracy_drop"], "o",
                             label=name)
            ax.plot([r["effective_std"] for r in reps],
                    [100 * r["test_accuracy_drop"] for r in reps], ".", ms=3,
                    color=points[0].get_color(), alpha=0.6)
        ax.axhline(0.0, color="k", lw=0.8)
        _style(ax, xlabel="effective std of W' - W_k (kept weights)",
               ylabel="test accuracy drop vs the ticket (pp)", title=f"k = {k}", fontsize=7)
    _finish(fig, path, title)


def plot_supermask(rows: Sequence[dict], path: str | os.PathLike, *,
                   by: tuple[str, ...] = ("density", "weight_init"), dense: float | None = None,
                   title: str = "") -> None:
    """Edge-popup's test accuracy vs density, one line per weight init (mean, replicates dotted).

    ``rows`` are per-replicate rows (``density, weight_init, replicate,
    test_accuracy``); a point is the mean of the rows sharing ``by`` (without
    ``density`` in ``by``, as for learned Bernoulli masks whose members each
    keep their own share, at the group's mean density). ``dense``: the trained
    dense net's test accuracy, a horizontal line (None: the study trained none).
    """
    means = results.summarize(rows, by=by, stats=("mean",), fields=[
        f for f in ("density", "test_accuracy") if f not in by])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for weight_init in dict.fromkeys(r["weight_init"] for r in rows):
        mine = sorted((r for r in means if r["weight_init"] == weight_init),
                      key=lambda r: r["density"])
        line = ax.plot([100 * r["density"] for r in mine],
                       [100 * r["test_accuracy"] for r in mine], "-o", ms=4, label=weight_init)
        reps = [r for r in rows if r["weight_init"] == weight_init]
        ax.plot([100 * r["density"] for r in reps], [100 * r["test_accuracy"] for r in reps], ".",
                ms=3, color=line[0].get_color(), alpha=0.6)
    if dense is not None:
        ax.axhline(100 * dense, color="k", lw=0.8, ls=":", label="dense, trained")
    _style(ax, xlabel="density (% of each layer's weights kept)", ylabel="test accuracy (%)")
    _finish(fig, path, title)


def plot_early_bird(rows: Sequence[dict], path: str | os.PathLike, *, threshold: float,
                    title: str = "") -> None:
    """The largest distance of each epoch's channel mask to the masks before it in the window.

    One line per pruning ratio and replicate (``rows`` of ``mask_distance.csv``);
    the ticket emerges where a line first stays under ``threshold`` over a full window.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    fields = [k for k in rows[0] if k.startswith("distance_to_previous_")] if rows else []
    for p in dict.fromkeys(r["p"] for r in rows):
        for rep in dict.fromkeys(r["replicate"] for r in rows if r["p"] == p):
            mine = [r for r in rows if r["p"] == p and r["replicate"] == rep]
            xs = [r["epoch"] for r in mine if r[fields[0]] is not None]
            ys = [max(r[f] for f in fields if r[f] is not None) for r in mine
                  if r[fields[0]] is not None]
            ax.plot(xs, ys, "-o", ms=3, label=f"p={p:g}, replicate {rep}")
    ax.axhline(threshold, color="k", lw=0.8, ls=":", label=f"threshold {threshold:g}")
    _integer_ticks(ax)
    _style(ax, xlabel="epoch (mask drawn at its start)",
           ylabel="max distance to the previous masks in the window", fontsize=7)
    _finish(fig, path, title)


def plot_knowledge_evolution(rows: Sequence[dict], path: str | os.PathLike, *,
                             title: str = "") -> None:
    """Dense and slim test accuracy by generation (Taha et al. 2021, Figure 1's curves).

    ``rows`` are the rows of a Knowledge Evolution ``results.csv``: the mean
    over replicates as a line, the replicates' min-max as a band.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    members = list(rows)
    count = len({r["replicate"] for r in members})
    for field, label, marker in (("dense_test_accuracy", "dense", "-o"),
                                 ("slim_test_accuracy", "slim (fit hypothesis)", "-s")):
        xs, mean, _, low, high = mean_and_spread(
            [{"generation": r["generation"], "accuracy": 100 * r[field]} for r in members],
            x="generation", y="accuracy")
        _mean_with_bands(ax, xs, mean, [(low, high, 0.2)], marker=marker[-1], ms=4,
                         label=label)
    ax.set_xticks(sorted({r["generation"] for r in members}))
    _style(ax, xlabel="generation", ylabel="test accuracy (%)",
           bands=[(band_label("range", count), 0.2)])
    _finish(fig, path, title)


#: The panels of :func:`plot_telemetry`, in the paper's Figure 3 order, with their labels.
TELEMETRY_PANELS = (
    ("sign_change_init", "share of signs changed since W_0"),
    ("l2_init", "||W_t - W_0||"),
    ("cosine_init", "cos(W_t, W_0)"),
    ("sign_change_final", "share of signs differing from W_T"),
    ("l2_final", "||W_t - W_T||"),
    ("cosine_final", "cos(W_t, W_T)"),
    ("mean_magnitude", "mean |w|"),
    ("grad_norm", "||grad|| (fixed batch)"),
    ("tracked", "tracked weights (replicate 0)"),
)


def plot_telemetry(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Frankle et al. 2020's Figure 3 panels: how the weights move, by step.

    ``rows`` are ``telemetry.csv`` rows (``step, replicate, layer, quantity,
    value``). Each panel is one quantity: one line per layer (the mean over
    replicates), ``global`` bold; the tracked-weights panel draws replicate 0's
    weights. Panels without rows are left out.
    """
    panels = [(q, label) for q, label in TELEMETRY_PANELS
              if any(r["quantity"] == q for r in rows)]
    cols = 3
    fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(13, 3.4 * -(
        -len(panels) // cols)), squeeze=False)
    for ax, (quantity, label) in zip(axes.flat, panels, strict=False):
        mine = [r for r in rows if r["quantity"] == quantity]
        if quantity == "tracked":
            mine = [r for r in mine if str(r["replicate"]) == "0"]
        for layer in dict.fromkeys(r["layer"] for r in mine):
            by_step: dict = {}
            for r in mine:
                if r["layer"] == layer:
                    by_step.setdefault(int(r["step"]), []).append(float(r["value"]))
            steps = sorted(by_step)
            bold = layer == "global"
            ax.plot(steps, [np.mean(by_step[s]) for s in steps], "-", lw=2.2 if bold else 1.0,
                    color="k" if bold else None, label=layer)
        ax.set_xscale("symlog", linthresh=100)  # the dense early phase stays legible
        _style(ax, xlabel="step (linear to 100, log after)", ylabel=label, fontsize=6,
               legend=quantity != "tracked")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    _finish(fig, path, title)


def plot_supsup(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """SupSup's per-task accuracy: task given, and the share of batches whose task is inferred.

    ``rows`` are per-replicate rows (``task, replicate`` and the fields
    drawn). Bars are the means over replicates, dots the replicates.
    """
    series = (("test_accuracy", "test accuracy, task given"),
              ("inferred_task_accuracy", "task inferred right (batch)"),
              ("inferred_task_accuracy_first", "task inferred right (first example)"))
    means = sorted(results.summarize([{**r, **{f: r[f] or 0.0 for f, _ in series}}
                                      for r in rows], by=("task",), stats=("mean",),
                                     fields=[f for f, _ in series]), key=lambda r: r["task"])
    reps = list(rows)
    tasks = [r["task"] for r in means]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(tasks) + 3), 4.5))
    for i, (field, label) in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar([t + offset for t in tasks], [100 * (r[field] or 0.0) for r in means], width,
               label=label)
        ax.plot([r["task"] + offset for r in reps], [100 * (r[field] or 0.0) for r in reps],
                ".", ms=3, color="k", alpha=0.5)
    ax.set_xticks(tasks)
    ax.set_ylim(0, 105)
    _style(ax, xlabel="task (pixel permutation)", ylabel="%", loc="lower right")
    _finish(fig, path, title)


def plot_data_diet(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Test accuracy vs the kept share of the training set, one line per selection mode.

    ``rows`` are per-replicate ``results.csv`` rows (``kept, mode, replicate,
    test_accuracy``); the full data (``mode='full'``, ``kept=1``) is a dashed
    line with its band. Mean over replicates with a min-max band.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    full = [100 * float(r["test_accuracy"]) for r in rows if r["mode"] == "full"]
    num = 0
    for mode in dict.fromkeys(r["mode"] for r in rows if r["mode"] != "full"):
        mine = [r for r in rows if r["mode"] == mode]
        xs, mean, _, lo, hi = mean_and_spread(
            [{**r, "kept": 100 * float(r["kept"])} for r in mine], x="kept", y="test_accuracy")
        _mean_with_bands(ax, xs, 100 * mean, [(100 * lo, 100 * hi, 0.15)], marker="o", ms=4,
                         label=mode)
        num = max(num, _group_size(mine, x="kept"))
    if full:
        ax.axhline(np.mean(full), color="k", ls="--", lw=1,
                   label=f"full data ({np.mean(full):.2f} %)")
        ax.axhspan(min(full), max(full), color="k", alpha=0.08)
    _style(ax, xlabel="percent of training examples kept", ylabel="test accuracy (%)",
           bands=((band_label("range", num), 0.15),))
    _finish(fig, path, title)


def plot_grokking_tickets(records: Sequence[dict], path: str | os.PathLike, *, key: str = "arm",
                          target: float = 0.95, title: str = "") -> None:
    """Train and test accuracy vs step, one line per value of ``records[key]`` (the arms of
    :mod:`ltjax.studies.grokking_tickets`): mean and min-max over replicates, the target
    test accuracy as a dotted line.

    Example:
        >>> import pathlib, tempfile
        >>> from ltjax.studies import plots
        >>> records = [{"arm": arm, "replicate": r, "step": s, "split": split,
        ...             "accuracy": 0.4 * s + 0.1 * r}
        ...            for arm in ("ticket", "dense") for split in ("train", "test")
        ...            for r in (0, 1) for s in (0, 1, 2)]
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "grokking_tickets.png"
        >>> plots.plot_grokking_tickets(records, path)
        >>> path.is_file()
        True
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    num = 0
    for ax, split in zip(axes, ("train", "test"), strict=True):
        for value in dict.fromkeys(r[key] for r in records):
            mine = [r for r in records if r[key] == value and r["split"] == split]
            if not mine:
                continue
            xs, mean, _, lo, hi = mean_and_spread(mine, x="step", y="accuracy")
            _mean_with_bands(ax, xs, 100 * mean, [(100 * lo, 100 * hi, 0.15)],
                             label=str(value))
            num = max(num, _group_size(mine, x="step"))
        if split == "test":
            ax.axhline(100 * target, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(0.0, 101.0)
        _integer_ticks(ax)
        _style(ax, xlabel="step", ylabel=f"{split} accuracy (%)", title=split,
               bands=((band_label("range", num), 0.15),))
    _finish(fig, path, title)
