"""Metrics files of a workdir: ``config.json``, ``metrics.jsonl`` and CSV tables.

``metrics.jsonl`` holds one JSON record per evaluation (replicate, level,
step, split, loss, accuracy, density, ...). A resumed run first drops the
records written after its last checkpoint (:meth:`MetricsLog.keep_only`),
so a killed-and-resumed run ends with the same file as an uninterrupted one.

In a multi-process run only process 0 writes, between barriers
(:func:`ltjax.distributed.write`); every process reads the files.

Example:
    >>> log = MetricsLog(workdir / "metrics.jsonl")
    >>> log.append([{"replicate": 0, "step": 0, "split": "test", "accuracy": 0.1}])
    >>> log.read()[0]["accuracy"]
    0.1
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

from ltjax import distributed


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
