"""Metrics files of a workdir: ``config.json``, ``metrics.jsonl`` and CSV tables.

``metrics.jsonl`` holds one JSON record per evaluation (replicate, level,
step, split, loss, accuracy, density, ...). A resumed run first drops the
records written after its last checkpoint (:meth:`MetricsLog.keep_only`),
so a killed-and-resumed run ends with the same file as an uninterrupted one.

In a multi-process run only process 0 writes, between barriers
(:func:`ltjax.io.distributed.write`); every process reads the files.

Example:
    A run's metrics file (not run here: it writes into ``workdir``):

    ```python
    log = MetricsLog(workdir / "metrics.jsonl")
    log.append([{"replicate": 0, "step": 0, "split": "test", "accuracy": 0.1}])
    log.read()[0]["accuracy"]    # 0.1
    ```

    The summaries are plain functions of rows:

    >>> from ltjax.io import results
    >>> results.summarize([{"arm": "a", "replicate": 0, "acc": 0.5},
    ...                    {"arm": "a", "replicate": 1, "acc": 1.0}], by=("arm",))
    [{'arm': 'a', 'stat': 'mean', 'acc': 0.75}, {'arm': 'a', 'stat': 'std', 'acc': 0.25}]
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import pathlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ltjax.io import distributed


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def as_logged(records: Sequence[dict]) -> list[dict]:
    """``records`` as :class:`MetricsLog` writes them and reads them back.

    JSON values (NumPy scalars as Python numbers, NaN and inf as None), keys sorted.

    Example:
        >>> import numpy as np
        >>> from ltjax.io import results
        >>> results.as_logged([{"split": "test", "loss": np.float32(0.5), "acc": float("nan")}])
        [{'acc': None, 'loss': 0.5, 'split': 'test'}]
    """
    return [json.loads(json.dumps(_jsonable(r), sort_keys=True)) for r in records]


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (tmp file, then rename)."""
    path = pathlib.Path(path)
    text = json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n"

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    distributed.write(f"write {path}", write)


def save_npy(path: str | os.PathLike, array: Any) -> None:
    """Write ``array`` as a ``.npy`` file, atomically (tmp file, then rename)."""
    import numpy as np

    path = pathlib.Path(path)

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, np.asarray(array))
        os.replace(tmp, path)

    distributed.write(f"write {path}", write)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    return json.loads(pathlib.Path(path).read_text())


class MetricsLog:
    """An append-only JSON-lines file of metric records."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> list[dict]:
        """All complete records.

        A torn last line (a crash while appending) is ignored without a word;
        an unreadable line elsewhere is skipped with a warning naming it (it was
        not written by ltjax), and the next rewrite drops it.
        """
        records, _ = self._read()
        return records

    def _read(self) -> tuple[list[dict], int]:
        """The records and the number of unreadable lines (a torn last one included)."""
        if not self.path.exists():
            return [], 0
        records, bad = [], 0
        lines = self.path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
                if number < len(lines):
                    logging.warning("%s line %d is not a JSON record (skipped): %.80r",
                                    self.path, number, line)
        return records, bad

    def append(self, records: Iterable[dict]) -> None:
        """Append records and flush them to disk."""
        lines = "".join(json.dumps(_jsonable(r), sort_keys=True) + "\n" for r in records)

        def write() -> None:
            with self.path.open("a") as f:
                f.write(lines)
                f.flush()
                os.fsync(f.fileno())

        distributed.write(f"append {self.path}", write)

    def keep_only(self, keep_fn: Callable[[dict], bool]) -> None:
        """Rewrite the file with the records for which ``keep_fn`` is true.

        Nothing is written when every record is kept and every line reads (a
        finished run's rerun leaves the file, and a read-only workdir, alone).
        """
        records, bad = self._read()
        kept = [r for r in records if keep_fn(r)]
        if len(kept) == len(records) and not bad:
            return

        def write() -> None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
            os.replace(tmp, self.path)

        distributed.write(f"rewrite {self.path}", write)


def write_csv(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """Write dict rows as CSV; the columns are the union of the keys, in first-seen order."""
    path = pathlib.Path(path)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _jsonable(v) for k, v in row.items()})
        os.replace(tmp, path)

    distributed.write(f"write {path}", write)


def read_csv(path: str | os.PathLike) -> list[dict]:
    """Read a CSV written by :func:`write_csv` (values as strings)."""
    with pathlib.Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


#: Fields that name a member rather than measure it: never averaged by :func:`summarize`.
MEMBER_FIELDS = ("replicate", "pair")


def summarize(rows: list[dict], *, by: tuple[str, ...], fields: Sequence[str] | None = None,
              stats: tuple[str, ...] = ("mean", "std"),
              constants: dict | None = None) -> list[dict]:
    """The summary rows of a table: one row per statistic and group of ``by`` values.

    Every study's mean/std block is built here. Groups come in the order their
    first row appears; a row without one of the ``by`` fields (an IMP control
    trained at one learning rate beside a sweep) groups under None for it. A
    summary row holds the group's ``by`` values, ``stat`` (``'mean'``,
    ``'std'``), the ``constants`` and, for each of ``fields``
    (default: every field of the group's first row but ``by``, the constants
    and :data:`MEMBER_FIELDS`), the statistic over the rows where the field is
    present and not None (None when it is in none). ``stats`` are NumPy's
    (``'mean'``, ``'std'``: the population standard deviation).

    Args:
      rows: the per-member rows.
      by: the fields that make a group.
      fields: the fields summarised (default: see above).
      stats: the statistics, in the order their rows come.
      constants: fields written as they are into every summary row.

    Returns:
      The summary rows (:func:`write_table` writes them beside the rows).

    Example:
        >>> from ltjax.io.results import summarize
        >>> summarize([{"arm": "a", "replicate": 0, "acc": 0.5},
        ...            {"arm": "a", "replicate": 1, "acc": 1.0}], by=("arm",))
        [{'arm': 'a', 'stat': 'mean', 'acc': 0.75}, {'arm': 'a', 'stat': 'std', 'acc': 0.25}]
    """
    constants = dict(constants or {})
    out = []
    for group in dict.fromkeys(tuple(r.get(k) for k in by) for r in rows):
        mine = [r for r in rows if tuple(r.get(k) for k in by) == group]
        names = list(fields) if fields is not None else [
            k for k in mine[0] if k not in (*by, *constants, *MEMBER_FIELDS)]
        for stat in stats:
            fn = getattr(np, stat)
            out.append({**dict(zip(by, group, strict=True)), "stat": stat, **constants,
                        **{k: _summary(fn, [r[k] for r in mine if r.get(k) is not None])
                           for k in names}})
    return out


def _summary(fn: Callable, values: list) -> float | None:
    return float(fn(values)) if values else None


def summary_path(path: str | pathlib.Path) -> pathlib.Path:
    """Where the summary of the table at ``path`` goes: ``results.csv`` -> ``summary.csv``,
    any other ``<name>.csv`` -> ``<name>_summary.csv``.

    Example:
        >>> from ltjax.io.results import summary_path
        >>> summary_path("run/results.csv").name, summary_path("run/wise_ft.csv").name
        ('summary.csv', 'wise_ft_summary.csv')
    """
    path = pathlib.Path(path)
    name = "summary.csv" if path.name == "results.csv" else f"{path.stem}_summary.csv"
    return path.with_name(name)


def write_table(path: str | pathlib.Path, rows: list[dict], *, by: tuple[str, ...],
                fields: Sequence[str] | None = None, stats: tuple[str, ...] = ("mean", "std"),
                constants: dict | None = None) -> dict:
    """Write a tidy table and its summary; return the summary as a study reports it.

    ``path`` gets ``rows`` as they are (one row per member: pandas reads every
    column with one type); :func:`summary_path` gets :func:`summarize`'s rows
    (``stat`` names the statistic). Every study writes its tables here.

    Args:
      path: the table's CSV (``<workdir>/results.csv``).
      rows: the per-member rows.
      by, fields, stats, constants: as :func:`summarize`.

    Returns:
      ``{'rows': [...], 'std': [...]}``: the summary's mean rows and its std rows
      (empty when ``stats`` has no ``'std'``), in group order.
    """
    summary = summarize(rows, by=by, fields=fields, stats=stats, constants=constants)
    write_csv(path, rows)
    write_csv(summary_path(path), summary)
    return {"rows": [r for r in summary if r["stat"] == "mean"],
            "std": [r for r in summary if r["stat"] == "std"]}
