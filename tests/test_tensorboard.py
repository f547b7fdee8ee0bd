"""The TensorBoard mirror (ltjax.io.tensorboard): event files read back against metrics.jsonl.

One quick digits run with the mirror on (``$LTJAX_TENSORBOARD``, what ``--tensorboard``
sets) and one without, shared by the tests. The event files are read with a TFRecord
reader written here (length, masked CRC-32C, payload, masked CRC-32C) and tensorboardX's
``Event`` protobuf, so no TensorBoard or TensorFlow is needed.
"""

import io
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from experiments.configs import lenet_digits
from ltjax import cli
from ltjax.io import tensorboard
from ltjax.studies import dense

tensorboardX = pytest.importorskip("tensorboardX", reason="the [tensorboard] extra")
from tensorboardX.proto import event_pb2  # noqa: E402
from tensorboardX.record_writer import masked_crc32c  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def read_events(path: pathlib.Path) -> list:
    """The events of one event file, each record's framing and checksums checked."""
    data, pos, events = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
        body = data[pos + 12:pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == (
            masked_crc32c(body))
        events.append(event_pb2.Event.FromString(body))
        pos += 16 + length
    return events


def read_logdir(logdir: pathlib.Path) -> dict:
    """``{run: {"scalars": [(tag, step, value)], "texts": {tag: text},
    "images": {tag: (step, png bytes)}}}``, a run being an event file's folder."""
    runs: dict = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        run = str(path.parent.relative_to(logdir))
        assert run not in runs, f"two event files in run {run}: a rebuild left one behind"
        out = runs[run] = {"scalars": [], "texts": {}, "images": {}}
        for event in read_events(path):
            for value in event.summary.value:
                if value.HasField("image"):
                    out["images"][value.tag] = (event.step, value.image.encoded_image_string)
                elif value.metadata.plugin_data.plugin_name == "text":
                    out["texts"][value.tag] = value.tensor.string_val[0].decode()
                else:
                    out["scalars"].append((value.tag, event.step, value.simple_value))
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same quick study with the mirror on and off: their workdirs."""
    root = tmp_path_factory.mktemp("tb")
    config = lenet_digits.get_config("quick")
    saved = os.environ.get(tensorboard.ENV)
    try:
        os.environ[tensorboard.ENV] = "1"
        dense.run_dense(config, root / "on", progress=False)
        os.environ[tensorboard.ENV] = "0"
        dense.run_dense(config, root / "off", progress=False)
    finally:
        if saved is None:
            os.environ.pop(tensorboard.ENV, None)
        else:
            os.environ[tensorboard.ENV] = saved
    return root / "on", root / "off"


def test_flag_changes_no_number(runs):
    on, off = runs
    assert (on / "tensorboard").is_dir() and not (off / "tensorboard").exists()
    for name in ("metrics.jsonl", "results.csv"):
        assert (on / name).read_bytes() == (off / name).read_bytes(), name


def _expected(records: list[dict]) -> dict:
    """``{(run, tag, step): value}`` from metrics.jsonl, written out by hand for this study."""
    out = {}
    for r in records:
        run = f"branch={r['branch']},level={r['level']},replicate={r['replicate']}"
        for metric in ("loss", "accuracy"):
            if r[metric] is not None:
                out[(run, f"{r['split']}/{metric}", r["step"])] = r[metric]
        out[(run, "density", r["step"])] = r["density"]
    return out


def test_scalars_equal_metrics_once_each(runs):
    on, _ = runs
    records = [json.loads(line) for line in (on / "metrics.jsonl").read_text().splitlines()]
    logs = read_logdir(on / "tensorboard")
    got = [(run, tag, step, value) for run, log in logs.items() for tag, step, value in
           log["scalars"]]
    keys = [(run, tag, step) for run, tag, step, _ in got]
    assert len(keys) == len(set(keys)), "a scalar written twice"
    expected = _expected(records)
    assert set(keys) == set(expected)
    for run, tag, step, value in got:  # simple_value is a float32
        np.testing.assert_allclose(value, expected[(run, tag, step)], rtol=1e-6)
    assert {"branch=dense,level=0,replicate=0", "branch=dense,level=0,replicate=1"} <= set(logs)
    assert {tag for _, tag, _ in keys} >= {"test/accuracy", "train/loss", "train_running/loss"}


def test_config_text_and_figure(runs):
    from PIL import Image

    on, _ = runs
    root = read_logdir(on / "tensorboard")["."]
    text = root["texts"]["config/text_summary"]
    assert "dataset = 'digits'" in text and "num_replicates = 2" in text
    assert "recipe.batch_size = 60" in text  # nested fields as dotted names
    last = max(json.loads(line)["step"] for line in (on / "metrics.jsonl").open())
    step, png = root["images"]["plots/learning_curve"]
    assert step == last
    with Image.open(io.BytesIO(png)) as got, Image.open(on / "plots/learning_curve.png") as want:
        assert got.size == want.size
        np.testing.assert_array_equal(np.asarray(got.convert("RGB")),
                                      np.asarray(want.convert("RGB")))


def test_rebuild_is_resume_safe(runs, tmp_path):
    """A killed run's mirror, then the finished run's: the curves of the finished run only."""
    on, _ = runs
    work = tmp_path / "work"
    shutil.copytree(on, work, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    lines = (work / "metrics.jsonl").read_text().splitlines(keepends=True)
    full = read_logdir(on / "tensorboard")
    (work / "metrics.jsonl").write_text("".join(lines[: len(lines) // 2]))
    tensorboard.write(work)
    half = read_logdir(work / "tensorboard")
    assert sum(len(r["scalars"]) for r in half.values()) < sum(
        len(r["scalars"]) for r in full.values())
    (work / "metrics.jsonl").write_text("".join(lines))  # the resumed run's log
    logdir = tensorboard.write(work)
    assert read_logdir(logdir) == full
    assert not [p for p in work.iterdir() if p.name.startswith(".tensorboard")]
    stamp = {p: p.stat().st_mtime_ns for p in logdir.rglob("*")}
    tensorboard.write(work)  # nothing changed: the mirror is left alone
    assert {p: p.stat().st_mtime_ns for p in logdir.rglob("*")} == stamp


def test_layout_of_other_records():
    records = [
        {"k": 100, "branch": "path", "replicate": 0, "pair": "0-1", "split": "test",
         "alpha": 0.5, "step": None, "loss": 1.5, "accuracy": 0.25},
        {"arm": "a", "kept": 0.5, "replicate": 2, "step": 10, "layer": "Dense_0",
         "quantity": "norm", "value": 3.0},
        {"branch": "eval", "model": "uniform/soup", "split": "test", "accuracy": 0.75},
        {"replicate": 0, "step": 4, "split": "test", "loss": 2.0, "accuracy": None,
         "density": 0.5},
        {"replicate": 0, "step": 4, "split": "train", "loss": 1.0, "accuracy": 0.5,
         "density": 0.5},
    ]
    assert list(tensorboard.scalars(records, last_step=7)) == [
        ("branch=path,k=100,pair=0-1,replicate=0", "path/test/loss", 500, 1.5),
        ("branch=path,k=100,pair=0-1,replicate=0", "path/test/accuracy", 500, 0.25),
        ("arm=a,kept=0.5,replicate=2", "telemetry/norm/Dense_0", 10, 3.0),
        ("branch=eval,model=uniform_soup", "test/accuracy", 7, 0.75),
        ("replicate=0", "test/loss", 4, 2.0),
        ("replicate=0", "density", 4, 0.5),
        ("replicate=0", "train/loss", 4, 1.0),
        ("replicate=0", "train/accuracy", 4, 0.5),
    ]


def test_missing_writer_is_one_clear_error_before_work(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'ltjax\[tensorboard\]'"):
        tensorboard.require()
    config = [f"--config={REPO}/experiments/configs/lenet_digits.py:quick"]
    with pytest.raises(flags.Error, match=r"--tensorboard: .*ltjax\[tensorboard\]"):
        cli.parse_flags(["train", *config, f"--workdir={tmp_path}", "--tensorboard"])
    assert cli.parse_flags(["train", *config, "--print_config", "--tensorboard"])
    monkeypatch.setenv(tensorboard.ENV, "1")
    with pytest.raises(ImportError, match="tensorboard"):
        dense.run_dense(lenet_digits.get_config("quick"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before the workdir was touched


def test_flag_parses():
    config = f"--config={REPO}/experiments/configs/lenet_digits.py:quick"
    assert cli.parse_flags(["train", config, "--workdir=/x", "--tensorboard"]).tensorboard
    assert not cli.parse_flags(["train", config, "--workdir=/x"]).tensorboard


def test_importing_ltjax_imports_no_writer():
    code = ("import sys, ltjax, ltjax.io.tensorboard, ltjax.studies.common, experiments; "
            "assert 'tensorboardX' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_sub_workdirs_are_runs_under_their_folder(tmp_path):
    """A study that runs others in sub-folders (transition): one logdir for all of them."""
    from PIL import Image

    for sub, step in (("", 3), ("dense", 5)):
        folder = tmp_path / sub
        (folder / "plots").mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"seed": len(sub), "recipe": {"lr": 1}}))
        (folder / "metrics.jsonl").write_text(json.dumps(
            {"replicate": 0, "step": step, "split": "test", "loss": 1.0 + step}) + "\n")
        Image.new("RGB", (4, 3), "white").save(folder / "plots" / "curve.png")
    (tmp_path / "checkpoints" / "0").mkdir(parents=True)  # never read
    logs = read_logdir(tensorboard.write(tmp_path))
    assert set(logs) == {".", "replicate=0", "dense", "dense/replicate=0"}
    assert logs["dense/replicate=0"]["scalars"] == [("test/loss", 5, 6.0)]
    assert logs["replicate=0"]["scalars"] == [("test/loss", 3, 4.0)]
    assert logs["dense"]["texts"]["config/text_summary"].split() == [
        "recipe.lr", "=", "1", "seed", "=", "5"]
    assert logs["dense"]["images"]["plots/curve"][0] == 5
    assert logs["."]["images"]["plots/curve"][0] == 3
