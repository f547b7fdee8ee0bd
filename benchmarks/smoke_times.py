"""Cold wall time of every smoke variant: each config's ``:quick`` and ``:quick,sample``.

Each variant runs as a user runs it, ``python -m experiments.<study>
--config=<file>:<variants> --workdir=<fresh folder>``, in a fresh process with an
empty persistent compilation cache (``$LTJAX_COMPILATION_CACHE`` pointed at a new
folder): the time a first-time user waits, compilation included.

    LTJAX_DATA_DIR=../shared/data python benchmarks/smoke_times.py   # all, ~40 min
    python benchmarks/smoke_times.py --only supermask                 # configs matching

Writes ``benchmarks/results/smoke_times.json`` (one entry per command, kept
between runs: a second run measures only what is missing, ``--again`` all)
and prints a Markdown table. Run it on a quiet machine: another process on the
cores inflates every number. ``taskset -c 0 python benchmarks/smoke_times.py`` measures on
one core (an upper bound of the 2-core time; the table says "1 core").
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "smoke_times.json"
GOAL_SECONDS = 120.0  # issue #34: every smoke variant under 2 minutes cold


def smoke_commands() -> list[tuple[str, str]]:
    """``(study module, --config value)`` of every ``:quick`` and ``:quick,sample`` variant."""
    sys.path.insert(0, str(ROOT))
    from ltjax import cli

    out = []
    for path in sorted((ROOT / "experiments" / "configs").glob("*.py")):
        if path.stem == "__init__":
            continue
        variants = importlib.import_module(f"experiments.configs.{path.stem}").VARIANTS
        study = cli.config_study(str(path))
        relative = path.relative_to(ROOT)
        for chosen in (("quick",), ("quick", "sample")):
            if set(chosen) <= set(variants):
                out.append((study, f"{relative}:{','.join(chosen)}"))
    return out


def cold_seconds(study: str, config: str, timeout: float) -> tuple[float, int, str]:
    """Wall seconds, exit code and the last output line of one cold run."""
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "LTJAX_COMPILATION_CACHE": cache}
        start = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, "-m", f"experiments.{study}", f"--config={config}",
                 f"--workdir={work}/run"], cwd=ROOT, env=env, capture_output=True, text=True,
                timeout=timeout)
            code, output = done.returncode, (done.stdout + done.stderr).strip()
        except subprocess.TimeoutExpired:
            code, output = 124, f"killed after {timeout:g} s"
        seconds = time.perf_counter() - start
    return seconds, code, (output.splitlines() or [""])[-1][:200]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="measure configs whose name contains this")
    parser.add_argument("--again", action="store_true", help="measure what is already stored")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for study, config in smoke_commands():
        if args.only not in config or (config in stored and not args.again):
            continue
        seconds, code, last = cold_seconds(study, config, args.timeout)
        stored[config] = {"study": study, "cold_s": round(seconds, 1), "exit_code": code,
                          "last_line": last, "measured": time.strftime("%Y-%m-%d %H:%M"),
                          "cores": len(os.sched_getaffinity(0))}
        print(f"{seconds:7.1f} s  exit {code}  {study}  {config}", flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    print("\n| command | cold wall time |\n| --- | ---: |")
    for config, entry in sorted(stored.items()):
        flag = "" if entry["exit_code"] == 0 else f" (exit {entry['exit_code']})"
        over = " **over 2 min**" if entry["cold_s"] > GOAL_SECONDS else ""
        cores = " (1 core)" if entry.get("cores") == 1 else ""
        print(f"| `python -m experiments.{entry['study']} --config={config}` | "
              f"{entry['cold_s']:.0f} s{cores}{flag}{over} |")


if __name__ == "__main__":
    main()
