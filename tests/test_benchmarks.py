"""The accelerator benchmark's --quick mode runs anywhere (here: CPU) and writes its report."""

import importlib.util
import json
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "accelerator.py"


def _module():
    spec = importlib.util.spec_from_file_location("accelerator", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_accelerator_benchmark_writes_a_consistent_report(tmp_path):
    accelerator = _module()
    out = tmp_path / "report.json"
    # LeNet only: the quick ResNet-8 adds ~15 s of compiling to the suite.
    report = accelerator.main(["--quick", "--only", "lenet_300_100", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    runs = {(r["model"], r["seeds"]): r for r in report["runs"]}
    assert set(runs) == {("lenet_300_100", 1), ("lenet_300_100", 2)}
    for run in runs.values():
        # examples/s from the timed steps: steps x batch / seconds, per seed and in all.
        batch = 60 if run["model"] == "lenet_300_100" else 128
        assert run["examples_per_s_per_seed"] == pytest.approx(
            run["steps"] * batch / run["seconds"])
        assert run["examples_per_s_total"] == pytest.approx(
            run["seeds"] * run["examples_per_s_per_seed"])
    two, one = runs["lenet_300_100", 2], runs["lenet_300_100", 1]
    assert two["speedup_over_one_seed"] == pytest.approx(
        two["examples_per_s_total"] / one["examples_per_s_total"])
    assert report["backend"] == "cpu"
    # Share of peak: the analytic training FLOPs over a known device's peak.
    lenet = dict(one, examples_per_s_total=1e6)
    macs = 784 * 300 + 300 * 100 + 100 * 10
    assert accelerator.share_of_peak(lenet, "NVIDIA H200") == pytest.approx(
        1e6 * 6 * macs / 67e12)
    assert accelerator.share_of_peak(lenet, "an unknown chip") is None
