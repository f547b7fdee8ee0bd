"""A TensorBoard mirror of a workdir: ``<workdir>/tensorboard/``, rebuilt from its files.

``metrics.jsonl`` stays the source of truth; :func:`write` reads it (with
``config.json``, ``warnings.jsonl`` and ``plots/*.png``) and rebuilds the
event files from scratch, so the mirror of a resumed run is exactly that of an
uninterrupted one (no repeated or dropped steps), and rebuilding twice gives
the same curves. Nothing here writes anywhere else.

Layout (``tensorboard --logdir <workdir>/tensorboard``):

- one TensorBoard *run* per member, named by the record's identifying fields
  as ``key=value`` joined by commas (keys in alphabetical order, ``replicate``
  last), e.g. ``branch=ticket,level=3,replicate=0``: the members' curves
  overlay on one chart per tag, and the run filter picks members by regex;
- scalar tags ``<split>/<metric>`` for ``loss`` and ``accuracy`` (e.g.
  ``test/accuracy``, ``train_running/loss``) and ``density``, at the record's
  ``step``; telemetry as ``telemetry/<quantity>/<layer>``; interpolation paths
  (records with an ``alpha`` and no step) as ``path/<split>/<metric>`` at step
  ``round(1000 * alpha)``; records with neither (final evaluations) at the
  run's last step;
- the run ``.`` holds the config as text (tag ``config/text_summary``, one
  ``field = value`` line each, as ``--print_config`` prints it), the warnings
  (``warnings/text_summary``) and the study's figures (``plots/<name>``), at
  the run's last step;
- a study that runs others in sub-folders of its workdir (transition,
  early_phase) has their runs under the sub-folder's name (``dense/...``).

Switched on for every study run by ``$LTJAX_TENSORBOARD=1`` (the experiments'
``--tensorboard`` flag sets it): the outermost study checks for the writer
before any work and calls :func:`write` when it returns
(:func:`ltjax.studies.common.study_entry`). :func:`write` can also be called
by hand at any time, e.g. from another shell while the run goes on.

TensorBoard is optional: ``pip install 'ltjax[tensorboard]'`` (tensorboardX,
no TensorFlow). Importing this module imports nothing of it.

Example:
    >>> import json, pathlib, tempfile
    >>> from ltjax.io import tensorboard
    >>> workdir = pathlib.Path(tempfile.mkdtemp())
    >>> record = {"replicate": 0, "step": 0, "split": "test", "accuracy": 0.1}
    >>> _ = (workdir / "metrics.jsonl").write_text(json.dumps(record) + "\\n")
    >>> tensorboard.write(workdir).name
    'tensorboard'
    >>> sorted(p.name for p in (workdir / "tensorboard").iterdir() if p.is_dir())
    ['replicate=0']
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ltjax.io import distributed

#: Environment variable that turns the mirror on for every study run (``1``); the
#: experiments' ``--tensorboard`` flag sets it.
ENV = "LTJAX_TENSORBOARD"
#: The folder of the mirror inside a workdir.
FOLDER = "tensorboard"
#: The extra that installs the writer library.
EXTRA = "ltjax[tensorboard]"
#: Fields of a record drawn as scalars (the rest, but the axes, name the member).
METRICS = ("loss", "accuracy", "density")
#: Fields that place a record on an axis or in a tag, never in the member's name.
AXES = ("step", "alpha", "split", "quantity", "layer", "value", "message")
#: Interpolation records are drawn at step ``round(ALPHA_SCALE * alpha)``.
ALPHA_SCALE = 1000
_VERSION = "1"  # of the layout: a change rebuilds every mirror
_SOURCE = ".source"  # the fingerprint of the files a mirror was built from


def enabled() -> bool:
    """Whether ``$LTJAX_TENSORBOARD`` asks every study run to write its mirror."""
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no")


def require() -> None:
    """Raise a clear ImportError when the writer library is not installed.

    Raises:
      ImportError: tensorboardX is missing; the message names the extra.
    """
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ImportError(
            "the TensorBoard mirror needs tensorboardX (no TensorFlow): "
            f"pip install '{EXTRA}' (or pip install tensorboardX)") from None


def run_name(record: dict) -> str:
    """The TensorBoard run (member) of a record: its identifying fields, ``key=value,...``.

    Example:
        >>> from ltjax.io import tensorboard
        >>> tensorboard.run_name({"branch": "ticket", "replicate": 0, "level": 3, "step": 5,
        ...                       "split": "test", "loss": 1.0})
        'branch=ticket,level=3,replicate=0'
    """
    keys = sorted((k for k in record if k not in AXES and k not in METRICS),
                  key=lambda k: (k == "replicate", k))
    return ",".join(f"{k}={_text(record[k])}" for k in keys)


def scalars(records: Iterable[dict], *, last_step: int = 0) -> Iterator[tuple[str, str, int,
                                                                             float]]:
    """``(run, tag, step, value)`` of every scalar the records hold, in record order.

    A record without a numeric ``step`` is drawn at ``round(ALPHA_SCALE *
    alpha)`` when it has an ``alpha`` (tags ``path/...``), else at ``last_step``.
    ``density`` belongs to the member, not to a split: it is drawn once per
    member and step, as tag ``density``. Values that are None
    (``train_running`` accuracy, non-finite numbers) are left out.
    """
    densities = set()
    for record in records:
        step, prefix = record.get("step"), ""
        if not _number(step):
            if _number(record.get("alpha")):
                step, prefix = round(ALPHA_SCALE * record["alpha"]), "path/"
            else:
                step = last_step
        run = run_name(record)
        if "quantity" in record and _number(record.get("value")):
            tag = "/".join(str(record[k]) for k in ("quantity", "layer") if k in record)
            yield run, f"telemetry/{tag}", int(step), float(record["value"])
        split = record.get("split")
        for metric in METRICS:
            if not _number(record.get(metric)):
                continue
            if metric == "density":
                if (run, prefix, step) in densities:
                    continue
                densities.add((run, prefix, step))
                tag = metric
            else:
                tag = f"{split}/{metric}" if split is not None else metric
            yield run, prefix + tag, int(step), float(record[metric])


def config_text(config: dict) -> str:
    """The config as one ``field = value`` line per leaf (as ``--print_config``)."""
    def lines(node: dict, prefix: str) -> Iterator[str]:
        for key in sorted(node):
            if isinstance(node[key], dict):
                yield from lines(node[key], f"{prefix}{key}.")
            else:
                yield f"{prefix}{key} = {node[key]!r}"
    return "\n".join(lines(config, ""))


def write(workdir: str | os.PathLike, *, force: bool = False) -> pathlib.Path:
    """Rebuild ``<workdir>/tensorboard/`` from the workdir's files; return its path.

    Reads every ``metrics.jsonl`` under ``workdir`` (a study's sub-workdirs
    included), ``config.json``, ``warnings.jsonl`` and ``plots/*.png``; writes
    nothing else. Does nothing when those files are unchanged since the last
    build (unless ``force``). The new mirror is built beside the old one and
    swapped in, so a TensorBoard watching it sees the new curves on its next
    reload. Safe to call while the run goes on (e.g. from another shell): it
    shows the records written so far. In a multi-process run process 0 writes.

    Raises:
      ImportError: tensorboardX is not installed (:func:`require`).
    """
    require()
    workdir = pathlib.Path(workdir)
    logdir = workdir / FOLDER
    sources = _sources(workdir)
    fingerprint = _fingerprint(workdir, sources)
    if not force and (logdir / _SOURCE).is_file() and (
            logdir / _SOURCE).read_text() == fingerprint:
        return logdir

    def build() -> None:
        tmp = workdir / f".{FOLDER}.tmp-{os.getpid()}"
        old = workdir / f".{FOLDER}.old-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for sub in sorted({p.parent for p in sources}):
                _write_workdir(sub, tmp / sub.relative_to(workdir))
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / _SOURCE).write_text(fingerprint)
            if logdir.exists():
                os.replace(logdir, old)
            os.replace(tmp, logdir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)

    distributed.write(f"write {logdir}", build)
    return logdir


def _write_workdir(workdir: pathlib.Path, logdir: pathlib.Path) -> None:
    """The event files of one (sub-)workdir's own files, under ``logdir``."""
    import tensorboardX

    from ltjax.io import results

    records = results.MetricsLog(workdir / "metrics.jsonl").read() if (
        workdir / "metrics.jsonl").is_file() else []
    last_step = max((int(r["step"]) for r in records if _number(r.get("step"))), default=0)
    walltime = time.time()
    by_run: dict[str, list[tuple[str, int, float]]] = {}
    for run, tag, step, value in scalars(records, last_step=last_step):
        by_run.setdefault(run, []).append((tag, step, value))

    def writer(run: str) -> Any:
        return tensorboardX.SummaryWriter(str(logdir / run) if run else str(logdir),
                                          max_queue=1 << 20, flush_secs=1 << 20)

    for run, points in by_run.items():
        points.sort(key=lambda point: point[1])  # by step (stable: record order within one)
        if not run:
            continue
        with writer(run) as w:
            for tag, step, value in points:
                w.add_scalar(tag, value, global_step=step, walltime=walltime)
    with writer("") as w:
        for tag, step, value in by_run.get("", []):
            w.add_scalar(tag, value, global_step=step, walltime=walltime)
        if (workdir / "config.json").is_file():
            text = config_text(results.read_json(workdir / "config.json"))
            w.add_text("config", _code(text), global_step=last_step, walltime=walltime)
        warnings = results.MetricsLog(workdir / "warnings.jsonl").read() if (
            workdir / "warnings.jsonl").is_file() else []
        if warnings:
            w.add_text("warnings", "\n".join(f"- {x.get('message', x)}" for x in warnings),
                       global_step=last_step, walltime=walltime)
        for path in _plots(workdir):
            w.add_image(f"plots/{path.relative_to(workdir / 'plots').with_suffix('')}",
                        _pixels(path), global_step=last_step, walltime=walltime,
                        dataformats="HWC")


def _sources(workdir: pathlib.Path) -> list[pathlib.Path]:
    """The files a mirror is built from: each (sub-)workdir's metrics, config, warnings."""
    found = []
    for name in ("metrics.jsonl", "config.json", "warnings.jsonl"):
        found += [p for p in workdir.rglob(name) if not _inside_mirror(p, workdir)]
    return sorted(found)


def _plots(workdir: pathlib.Path) -> list[pathlib.Path]:
    return sorted((workdir / "plots").rglob("*.png")) if (workdir / "plots").is_dir() else []


def _inside_mirror(path: pathlib.Path, workdir: pathlib.Path) -> bool:
    parts = path.relative_to(workdir).parts[:-1]
    return any(p == FOLDER or p.startswith(f".{FOLDER}") or p == "checkpoints" for p in parts)


def _fingerprint(workdir: pathlib.Path, sources: list[pathlib.Path]) -> str:
    digest = hashlib.sha256(_VERSION.encode())
    files = sources + [p for sub in sorted({s.parent for s in sources}) for p in _plots(sub)]
    for path in files:
        digest.update(str(path.relative_to(workdir)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _pixels(path: pathlib.Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _code(text: str) -> str:
    """``text`` as a Markdown code block (TensorBoard renders text as Markdown)."""
    return "\n".join("    " + line for line in text.splitlines())


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value: Any) -> str:
    """A field's value as it reads in a run (folder) name: no separators."""
    text = value if isinstance(value, str) else json.dumps(value)
    return "".join(c if c.isalnum() or c in "._+-=" else "_" for c in text)
