"""Figures and printed summaries read right: ticks, band legends, panels, titles, ranges.

Each test plants rows or records (no training) and inspects the matplotlib
Figure a plot function built (captured at ``plots._save``), or the text a
study's ``report`` prints.
"""

import pathlib

import matplotlib.colors
import matplotlib.patches
import numpy as np
import pytest

from experiments import imp as imp_experiment
from experiments import prune_at_init as prune_at_init_experiment
from experiments import stability as stability_experiment
from experiments import supermask as supermask_experiment
from ltjax.studies import plots


@pytest.fixture
def figures(monkeypatch):
    """The Figure each plot writes, by file name (the PNG is still written)."""
    out: dict = {}
    original = plots._save

    def spy(fig, path):
        out[pathlib.Path(path).name] = fig
        original(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    return out


def _imp_rows(levels: int, *, early_stop_differs: bool, num: int = 3) -> list[dict]:
    rows = []
    for level in range(levels):
        for branch in ("imp", "reinit") if level else ("imp",):
            for rep in range(num):
                acc = 0.9 - 0.01 * level + 0.001 * rep
                rows.append({"level": level, "branch": branch, "replicate": rep,
                             "density": 0.8**level, "test_accuracy": acc,
                             "early_stop_step": 50 if early_stop_differs else 100,
                             "early_stop_test_accuracy": acc - 0.02 if early_stop_differs
                             else acc})
    return rows


def _labels(texts) -> list[str]:
    return [t.get_text() for t in texts]


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [] if legend is None else _labels(legend.get_texts())


def test_density_axis_ticks_are_the_plotted_densities_in_percent(tmp_path, figures):
    plots.plot_accuracy_vs_density(_imp_rows(7, early_stop_differs=False), tmp_path / "a.png")
    (ax,) = figures["a.png"].axes
    assert _labels(ax.get_xticklabels()) == ["100", "80", "64", "51.2", "41", "32.8", "26.2"]
    np.testing.assert_allclose(ax.get_xticks(), 100 * 0.8 ** np.arange(7))
    assert not [t for t in _labels(ax.get_xticklabels(minor=True)) if t]
    left, right = ax.get_xlim()
    assert left > right  # dense on the left


def test_prune_at_init_density_ticks_and_a_long_sweep_keeps_both_ends(tmp_path, figures):
    densities = [1.0, 0.5, 0.1, 0.036]
    rows = [{"method": m, "density": d, "ablation": a, "replicate": r,
             "test_accuracy": 0.9 - 0.1 * (1 - d)}
            for m in ("snip", "random") for d in densities for a in ("none", "shuffle")
            for r in range(2)]
    plots.plot_prune_at_init(rows, tmp_path / "p.png", title="t")
    for ax in figures["p.png"].axes:
        assert _labels(ax.get_xticklabels()) == ["100", "50", "10", "3.6"]
    many = _imp_rows(plots.MAX_DENSITY_TICKS + 9, early_stop_differs=False, num=1)
    plots.plot_accuracy_vs_density(many, tmp_path / "m.png")
    labels = _labels(figures["m.png"].axes[0].get_xticklabels())
    assert len(labels) == plots.MAX_DENSITY_TICKS
    assert labels[0] == "100"
    assert labels[-1] == plots.percent_label(100 * 0.8 ** (plots.MAX_DENSITY_TICKS + 8))


def test_shaded_bands_have_one_legend_entry_saying_what_they_are(tmp_path, figures):
    plots.plot_accuracy_vs_density(_imp_rows(4, early_stop_differs=False), tmp_path / "a.png")
    texts = _legend_texts(figures["a.png"].axes[0])
    assert texts == ["imp", "reinit", "dense (level 0)", "±1 std over 3 replicates"]
    records = [{"replicate": r, "step": s, "split": "test", "loss": 1.0 / (s + 1 + r),
                "accuracy": 0.5 + 0.01 * r, "member": m}
               for r in range(5) for s in (0, 10, 20) for m in ("a", "b")]
    plots.plot_learning_curves(records, tmp_path / "l.png")
    for ax in figures["l.png"].axes:
        assert _legend_texts(ax)[-2:] == ["±1 std over 5 replicates",
                                          "min-max over 5 replicates"]
    plots.plot_branch_curves(records, tmp_path / "b.png", key="member")
    assert _legend_texts(figures["b.png"].axes[0]) == ["a", "b", "min-max over 5 replicates"]
    # One replicate: its bands are empty, so the legend names none.
    plots.plot_accuracy_vs_density(_imp_rows(4, early_stop_differs=False, num=1),
                                   tmp_path / "one.png")
    assert _legend_texts(figures["one.png"].axes[0]) == ["imp", "reinit", "dense (level 0)"]
    plots.plot_learning_curves([r for r in records if r["replicate"] == 0],
                               tmp_path / "l1.png")
    for ax in figures["l1.png"].axes:
        assert not [t for t in _legend_texts(ax) if " over " in t]


def test_early_stop_panel_only_when_early_stopping_changes_something(tmp_path, figures):
    plots.plot_accuracy_vs_density(_imp_rows(3, early_stop_differs=False), tmp_path / "same.png")
    plots.plot_accuracy_vs_density(_imp_rows(3, early_stop_differs=True), tmp_path / "diff.png")
    (ax,) = figures["same.png"].axes
    assert ax.get_ylabel() == "final test accuracy (%)"
    final, early = figures["diff.png"].axes
    assert early.get_ylabel() == "test accuracy at early stop (%)"
    imp_line = {line.get_label(): line for line in early.get_lines()}["imp"]
    np.testing.assert_allclose(imp_line.get_ydata(), [88.1 - 1.0 * lv for lv in (2, 1, 0)])


@pytest.mark.parametrize(("name", "expected"), [
    ("mnist", "mnist"),
    ("/data/cifar10_first4000/cifar10_train_first4000.npz", "cifar10_train_first4000"),
    ("cifar10_train_first4000.npz", "cifar10_train_first4000"),
    ("/data/some_dataset/", "some_dataset"),
    (pathlib.Path("/x/y/digits.npz"), "digits"),
])
def test_dataset_label_shows_the_name_not_the_path(name, expected):
    assert plots.dataset_label(name) == expected


def _path_records(train_error: float) -> list[dict]:
    """Train error 0 except one alpha at ``train_error``; test error 5-10 %."""
    out = []
    for k in (0, 10):
        for rep in range(2):
            for a in np.linspace(0, 1, 5):
                out.append({"k": k, "replicate": rep, "pair": 0, "split": "train",
                            "alpha": float(a), "accuracy": 1 - (train_error if a == 0.5 else 0)})
                out.append({"k": k, "replicate": rep, "pair": 0, "split": "test",
                            "alpha": float(a), "accuracy": 0.95 - 0.05 * np.sin(np.pi * a)})
    return out


@pytest.mark.parametrize("train_error", [0.0, 1 / 3000, 0.3])
def test_error_panels_start_at_zero_and_hide_no_data(tmp_path, figures, train_error):
    plots.plot_error_vs_alpha(_path_records(train_error), tmp_path / "e.png")
    for ax in figures["e.png"].axes:
        bottom, top = ax.get_ylim()
        assert bottom == 0.0
        assert top >= 1.0  # at least one percentage point: no zoom on noise around zero
        for line in ax.get_lines():
            assert bottom <= np.min(line.get_ydata()) and np.max(line.get_ydata()) <= top
    assert figures["e.png"].axes[0].get_ylim()[1] >= 100 * train_error


def test_wise_ft_lines_are_thin_and_coloured_by_a_hyperparameter(tmp_path, figures):
    rates = (1e-4, 1e-3, 1e-2)
    ingredients = [{"ingredient": i, "learning_rate": rates[i // 2], "weight_decay": 0.0,
                    "data_order": i % 2} for i in range(6)]
    records = [{"ingredient": i, "head": "interpolate", "split": split, "alpha": float(a),
                "accuracy": 0.5 + 0.1 * a * (1 + i) / 6 + (0.1 if split == "test" else 0)}
               for i in range(6) for split in ("validation", "test", "shifted")
               for a in np.linspace(0, 1, 5)]
    plots.plot_wise_ft(records, tmp_path / "w.png", ingredients=ingredients)
    ax = figures["w.png"].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    mean = lines.pop("mean over fine-tunes")
    tuned = [lines[f"_fine-tune {i}"] for i in range(6)]
    assert all(line.get_linewidth() < mean.get_linewidth() for line in tuned)
    colors = [matplotlib.colors.to_hex(line.get_color()) for line in tuned]
    assert colors[0] == colors[1] and colors[2] == colors[3] and colors[4] == colors[5]
    assert len({colors[0], colors[2], colors[4]}) == 3
    assert _legend_texts(ax)[:3] == [f"learning_rate = {r:g}" for r in rates]


def test_imp_report_shows_mean_and_std_over_the_replicates(capsys):
    mean = {"level": 1, "branch": "imp", "replicate": "mean", "density": 0.8,
            "test_accuracy": 0.975, "early_stop_test_accuracy": 0.9712}
    std = {**mean, "replicate": "std", "test_accuracy": 0.002, "early_stop_test_accuracy": 0.0031}
    imp_experiment.report({"rows": [mean], "std": [std], "num_replicates": 3})
    out = capsys.readouterr().out
    assert "mean ± std over 3 replicates" in out
    assert "97.50 ±  0.20" in out and "97.12 ±  0.31" in out


def test_imp_report_of_a_learning_rate_sweep_prints_the_small_dense_rows(capsys):
    # A swept run's table: the small dense control has no learning rate (None in its rows;
    # the report crashed on it after the run had finished).
    rows = [{"level": 1, "branch": "imp", "learning_rate": 0.012, "density": 0.8,
             "test_accuracy": 0.9},
            {"level": 1, "branch": "small_dense", "learning_rate": None, "density": 0.8,
             "test_accuracy": 0.85}]
    std = [{**row, "test_accuracy": 0.01} for row in rows]
    imp_experiment.report({"rows": rows, "std": std, "num_replicates": 2})
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[:3] == ["1", "imp", "0.012"]
    assert lines[3].split()[:3] == ["1", "small_dense", "-"]
    assert "85.00 ±  1.00" in lines[3]


def test_stability_prune_at_init_and_supermask_reports_show_the_std(capsys):
    row = {"k": 18, "split": "test", "instability": 0.031, "stable": 0.5, "accuracy_a": 0.93}
    std = {**row, "instability": 0.004, "accuracy_a": 0.01}
    stability_experiment.report({"rows": [row], "std": [std], "num_pairs": 6})
    out = capsys.readouterr().out
    assert "mean ± std over 6 pairs of copies" in out
    assert "3.10 ±  0.40" in out and "93.00 ±  1.00" in out
    row = {"density": 0.1, "method": "snip", "ablation": "none", "kept_density": 0.1,
           "test_accuracy": 0.8}
    prune_at_init_experiment.report({"rows": [row], "std": [{**row, "test_accuracy": 0.05}],
                                     "num_replicates": 2})
    out = capsys.readouterr().out
    assert "mean ± std over 2 replicates" in out and "80.00 ±  5.00" in out
    row = {"weight_init": "signed_constant", "density": 0.5, "test_accuracy": 0.6}
    supermask_experiment.report({"rows": [row], "std": [{**row, "test_accuracy": 0.015}],
                                 "num_replicates": 4})
    out = capsys.readouterr().out
    assert "mean ± std over 4 replicates" in out and "60.00 ±  1.50" in out


def test_zoomed_curves_say_the_first_evaluation_is_below_the_axis(tmp_path, monkeypatch):
    """The level and branch curves zoom on trained values and say where step 0 went."""
    from ltjax.studies import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    records = [{"level": 0, "branch": "b", "split": "test", "step": s, "accuracy": a,
                "density": 1.0, "replicate": r}
               for r in (0, 1) for s, a in ((0, 0.1 + 0.01 * r), (10, 0.97), (20, 0.98))]
    plots.plot_level_curves(records, tmp_path / "a.png")
    plots.plot_branch_curves(records, tmp_path / "b.png", key="branch")
    for fig, lowest in zip(figures, (10.5, 10.0), strict=True):
        (ax,) = fig.axes
        assert ax.get_ylim()[0] > lowest  # the zoom leaves step 0 out...
        texts = [t.get_text() for t in ax.texts]
        assert texts == [f"first evaluation (as low as {lowest:.1f} %) below the axis"]
    figures.clear()
    high = [{**r, "accuracy": 0.97} for r in records]  # nothing below: nothing said
    plots.plot_level_curves(high, tmp_path / "c.png")
    assert len(figures[0].axes[0].texts) == 0


def _learning_records(steps, num=3):
    return [{"replicate": r, "step": s, "split": "test", "loss": 2.0 / (s + 1) + 0.01 * r,
             "accuracy": 0.5 + 0.01 * r} for r in range(num) for s in steps]


def test_one_x_value_is_a_marker_with_error_bars_and_one_tick(tmp_path, figures):
    # A :quick run evaluates once: a line and a band of one column would be invisible.
    plots.plot_learning_curves(_learning_records([50]), tmp_path / "l.png")
    for ax in figures["l.png"].axes:
        line = ax.get_lines()[0]  # then the error bar's caps
        assert line.get_marker() == "o" and line.get_linestyle() == "None"
        assert list(ax.get_xticks()) == [50]
        (bars,) = [c for c in ax.containers]  # the min-max error bar
        assert bars.has_yerr
    rows = [{"kept": 0.5, "mode": mode, "replicate": r, "test_accuracy": 0.8 + 0.01 * r}
            for mode in ("el2n", "random") for r in range(2)]
    plots.plot_data_diet(rows, tmp_path / "d.png")
    (ax,) = figures["d.png"].axes
    assert [line.get_marker() for line in ax.get_lines() if line.get_label() in (
        "el2n", "random")] == ["o", "o"]
    assert len(ax.containers) == 2  # each mode's min-max as an error bar
    assert list(ax.get_xticks()) == [50]


def test_a_control_at_a_slightly_other_density_shares_the_tick(tmp_path, figures):
    rows = _imp_rows(4, early_stop_differs=False)
    for r in rows:  # the control kept a few weights more: 64.1 % beside IMP's 64 %
        if r["branch"] == "reinit" and r["level"] == 2:
            r["density"] = 0.641
    plots.plot_accuracy_vs_density(rows, tmp_path / "a.png")
    (ax,) = figures["a.png"].axes
    ticks = sorted(ax.get_xticks(), reverse=True)
    assert len(ticks) == 4 and all(a / b > 1 + plots.TICK_MERGE for a, b in zip(
        ticks, ticks[1:], strict=False))
    assert plots.swept_values([80, 64, 64.5, 63.9, 51.2]) == [80, 64.5, 51.2]


def test_legends_sit_outside_the_data_and_band_swatches_have_the_bands_colours(tmp_path,
                                                                                 figures):
    plots.plot_accuracy_vs_density(_imp_rows(4, early_stop_differs=False), tmp_path / "a.png")
    fig = figures["a.png"]
    (ax,) = fig.axes
    fig.canvas.draw()
    legend_box, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend_box.x0 >= axes_box.x1  # right of the axes: covers no point
    # The band entry shows one swatch per band, in its line's colour (not grey).
    lines = {line.get_label(): line for line in ax.get_lines()}
    expected = [matplotlib.colors.to_hex(lines[b].get_color()) for b in ("imp", "reinit")]
    drawn = [matplotlib.colors.to_hex(c.get_facecolor()[0], keep_alpha=False)
             for c in ax.collections]
    swatches = [matplotlib.colors.to_hex(p.get_facecolor(), keep_alpha=False)
                for p in ax.get_legend().findobj(matplotlib.patches.Rectangle)
                if p.get_alpha() == 0.2]
    assert drawn == expected and swatches == expected


def test_dense_baseline_log_loss_integer_steps_and_the_batch_norm_note(tmp_path, figures):
    plots.plot_accuracy_vs_density(_imp_rows(3, early_stop_differs=False), tmp_path / "a.png")
    (ax,) = figures["a.png"].axes
    dense = {line.get_label(): line for line in ax.get_lines()}["dense (level 0)"]
    np.testing.assert_allclose(dense.get_ydata(), [100 * np.mean([0.9, 0.901, 0.902])] * 2)
    plots.plot_learning_curves(_learning_records([0, 1, 2, 3]), tmp_path / "l.png",
                               note=plots.BATCH_NORM_INIT_NOTE)
    loss, accuracy = figures["l.png"].axes
    assert loss.get_yscale() == "log" and accuracy.get_yscale() == "linear"
    for ax in (loss, accuracy):
        ticks = ax.get_xticks()
        assert np.all(ticks == np.round(ticks))  # no step 0.5
    assert plots.BATCH_NORM_INIT_NOTE in [t.get_text() for t in loss.texts]
    plots.plot_supermask([{"density": 0.5, "weight_init": "signed", "replicate": r,
                           "test_accuracy": 0.7} for r in range(2)], tmp_path / "s.png",
                         dense=0.95)
    (ax,) = figures["s.png"].axes
    dense = {line.get_label(): line for line in ax.get_lines()}["dense, trained"]
    np.testing.assert_allclose(dense.get_ydata(), [95.0, 95.0])
