"""Tidy tables: per-member rows in ``results.csv``, their statistics in ``summary.csv``."""

import csv

import numpy as np
import pytest

from ltjax.io import results


def _planted(seed: int = 0) -> list[dict]:
    """Rows of two arms x two densities x three replicates, one accuracy missing."""
    rng = np.random.default_rng(seed)
    rows = [{"arm": arm, "density": density, "replicate": r,
             "accuracy": float(rng.uniform()), "loss": float(rng.uniform(1, 2))}
            for arm in ("ticket", "random") for density in (0.5, 0.1) for r in range(3)]
    rows[4]["accuracy"] = None  # ticket at 0.1, replicate 1: not evaluated
    return rows


def test_summary_rows_are_numpy_statistics_per_group_in_first_seen_order():
    rows = _planted()
    summary = results.summarize(rows, by=("arm", "density"), constants={"step": 7})
    groups = [("ticket", 0.5), ("ticket", 0.1), ("random", 0.5), ("random", 0.1)]
    assert [(r["arm"], r["density"], r["stat"]) for r in summary] == [
        (*g, stat) for g in groups for stat in ("mean", "std")]
    for row in summary:
        assert row["step"] == 7 and "replicate" not in row  # a member's id is not averaged
        mine = [r for r in rows if (r["arm"], r["density"]) == (row["arm"], row["density"])]
        for field in ("accuracy", "loss"):
            values = np.array([r[field] for r in mine if r[field] is not None])
            expected = values.mean() if row["stat"] == "mean" else values.std()
            assert row[field] == pytest.approx(expected, rel=1e-12)
    # The missing accuracy is left out of its group, not read as zero.
    (mean,) = [r for r in summary if (r["arm"], r["density"], r["stat"]) == ("ticket", 0.1,
                                                                            "mean")]
    assert mean["accuracy"] == pytest.approx(np.mean([rows[3]["accuracy"], rows[5]["accuracy"]]))


def test_a_field_missing_everywhere_in_a_group_is_none_and_fields_can_be_chosen():
    rows = [{"arm": "a", "replicate": 0, "x": None, "y": 1.0},
            {"arm": "a", "replicate": 1, "x": None, "y": 3.0}]
    assert results.summarize(rows, by=("arm",), stats=("mean",)) == [
        {"arm": "a", "stat": "mean", "x": None, "y": 2.0}]
    assert results.summarize(rows, by=("arm",), fields=("y",), stats=("std",)) == [
        {"arm": "a", "stat": "std", "y": 1.0}]


def test_write_table_keeps_member_rows_tidy_and_the_statistics_apart(tmp_path):
    rows = _planted(1)
    reported = results.write_table(tmp_path / "results.csv", rows, by=("arm", "density"))
    with open(tmp_path / "results.csv", newline="") as f:
        written = list(csv.DictReader(f))
    # One row per member, in order; every replicate an integer (pandas reads one dtype).
    assert len(written) == len(rows)
    assert [int(r["replicate"]) for r in written] == [r["replicate"] for r in rows]
    assert all(float(w["loss"]) == r["loss"] for w, r in zip(written, rows, strict=True))
    summary = results.read_csv(tmp_path / "summary.csv")
    assert {r["stat"] for r in summary} == {"mean", "std"} and len(summary) == 8
    assert [r["stat"] for r in reported["rows"]] == ["mean"] * 4
    assert [r["stat"] for r in reported["std"]] == ["std"] * 4
    for got, expected in zip(summary, results.summarize(rows, by=("arm", "density")),
                             strict=True):
        assert float(got["loss"]) == expected["loss"]


@pytest.mark.parametrize(("name", "expected"), [
    ("results.csv", "summary.csv"), ("wise_ft.csv", "wise_ft_summary.csv"),
    ("accuracy.csv", "accuracy_summary.csv")])
def test_summary_path_names(tmp_path, name, expected):
    assert results.summary_path(tmp_path / name) == tmp_path / expected
