"""Kill campaign (#35): SIGKILL every study's ``:quick`` digits run, rerun it, compare files.

For each study: one uninterrupted reference run in its own workdir; then per
trial a fresh workdir where the same command is killed (SIGKILL to its process
group) at one or two points, then rerun until it exits 0. Every file of the
workdir is compared byte-for-byte with the reference, except what a resume may
legitimately differ in: anything under a ``checkpoints/`` folder, the
``*.damaged`` folders and the ``.lock`` files. Kill points:

- ``step1`` / ``step2``: the first / second new checkpoint step folder
  (``checkpoints/**/<digits>``) appearing, polled every 20 ms;
- ``results``: a ``results.csv`` (any depth) appearing or changing;
- ``random``: a uniform time in [0, reference wall time) after launch.

Trial ``t`` kills at ``[step1, step2, results][t % 3]``; trials with
``t % 4 == 1`` add a random kill before it, ``t % 4 == 2`` one after it (a
trial whose first run ends before its kill point starts over, see
:func:`run_trial`). A concurrency check starts two runs of the first study on
one workdir at once: exactly one must exit 2 with "is in use by pid", the
other must match the reference. Run by hand, from the repository root, e.g.

    export LTJAX_DATA_DIR=/work/shared/data
    nice -n 10 python benchmarks/kill_campaign.py --studies=train,supermask --trials=2

No ``--config.`` overrides are needed: every :quick run takes under a minute
on 2 CPU cores. Writes ``benchmarks/results/kill_campaign.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
STUDIES = {  # study -> config (experiments/configs/<config>.py:quick)
    "train": "lenet_digits", "imp": "imp_lenet_digits", "stability": "stability_lenet_digits",
    "soups": "soups_lenet_digits", "rebasin": "rebasin_mlp_digits",
    "prune_at_init": "prune_at_init_lenet_digits", "supermask": "supermask_lenet_digits",
    "supsup": "supsup_lenet_digits", "str": "str_lenet_digits",
    "subspaces": "subspaces_mlp_digits", "bn_only": "bn_only_mlp_digits",
    "data_diet": "data_diet_lenet_digits", "early_bird": "early_bird_mlp_digits",
    "knowledge_evolution": "knowledge_evolution_lenet_digits",
    "early_phase": "early_phase_lenet_digits", "transition": "transition_lenet_digits",
}
FILE_TRIGGERS = ("step1", "step2", "results")
POLL_S = 0.02
MAX_FINAL_RUNS = 3  # reruns after the kills until one exits 0
MAX_ATTEMPTS = 3  # fresh starts of a trial whose first run ended before its kill point


def command(study: str, workdir: pathlib.Path) -> list[str]:
    """The study's :quick command line on ``workdir``."""
    return [sys.executable, "-m", f"experiments.{study}",
            f"--config=experiments/configs/{STUDIES[study]}.py:quick", f"--workdir={workdir}"]


def step_folders(workdir: pathlib.Path) -> set[str]:
    """Checkpoint step folders (``checkpoints/**/<digits>``) under ``workdir``, as paths."""
    found = set()
    for root, dirs, _ in os.walk(workdir):
        in_checkpoints = "checkpoints" in pathlib.Path(root).relative_to(workdir).parts
        if in_checkpoints:
            found.update(os.path.join(root, d) for d in dirs if d.isdigit())
        dirs[:] = [d for d in dirs if not d.isdigit() and "tmp" not in d]  # no descent into steps
    return found


def results_stamp(workdir: pathlib.Path) -> frozenset[tuple[str, int, int]]:
    """(path, mtime_ns, size) of every ``results.csv`` under ``workdir`` (any depth:
    the transition study has none at the top, only in its sub-studies)."""
    stamps = set()
    for path in workdir.rglob("results.csv"):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        stamps.add((str(path), stat.st_mtime_ns, stat.st_size))
    return frozenset(stamps)


def run_once(study: str, workdir: pathlib.Path, kill: str | None, at_s: float = 0.0,
             timeout_s: float = 900.0) -> tuple[str, float]:
    """Run the command once; kill it when ``kill`` fires (None: let it finish).

    Returns (outcome, seconds): outcome is ``killed``, ``rc=<code>`` (it ended
    first) or ``timeout``. Its stderr goes to ``<workdir>.stderr``.
    """
    steps_before, results_before = step_folders(workdir), results_stamp(workdir)
    start = time.monotonic()
    with open(f"{workdir}.stderr", "ab") as stderr:
        proc = subprocess.Popen(command(study, workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
    while proc.poll() is None:
        elapsed = time.monotonic() - start
        fire = elapsed > timeout_s
        if kill == "random":
            fire = fire or elapsed >= at_s
        elif kill in ("step1", "step2"):
            fire = fire or len(step_folders(workdir) - steps_before) >= int(kill[-1])
        elif kill == "results":
            fire = fire or bool(results_stamp(workdir) - results_before)
        if fire:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return ("timeout" if elapsed > timeout_s else "killed"), time.monotonic() - start
        time.sleep(POLL_S)
    if proc.returncode != 0:
        print(f"  {study}: rc={proc.returncode}, see {workdir}.stderr", flush=True)
    return f"rc={proc.returncode}", time.monotonic() - start


def compared_files(workdir: pathlib.Path) -> dict[str, bytes]:
    """Every compared file of ``workdir`` (relative path -> bytes); see the module doc."""
    files = {}
    for path in sorted(workdir.rglob("*")):
        rel = path.relative_to(workdir)
        if (not path.is_file() or "checkpoints" in rel.parts or path.name == ".lock"
                or any(part.endswith(".damaged") for part in rel.parts)):
            continue
        files[str(rel)] = path.read_bytes()
    return files


def differences(reference: pathlib.Path, workdir: pathlib.Path) -> list[str]:
    """Files that differ between two workdirs (missing on one side counts)."""
    ref, got = compared_files(reference), compared_files(workdir)
    return sorted(name for name in ref.keys() | got.keys() if ref.get(name) != got.get(name))


def plan(trial: int, rng: random.Random, wall_s: float) -> list[tuple[str, float]]:
    """The kill points of ``trial``: (kind, time for ``random``), see the module doc."""
    kills = [(FILE_TRIGGERS[trial % 3], 0.0)]
    if trial % 4 in (1, 2):
        extra = ("random", rng.uniform(0.0, wall_s))
        kills = [extra] + kills if trial % 4 == 1 else kills + [extra]
    return kills


def run_trial(study: str, trial: int, rng: random.Random, reference: pathlib.Path,
              wall_s: float, base: pathlib.Path) -> dict:
    """Kill, rerun until done, compare; the workdir is removed when identical.

    A first run that ends before its kill point (a random time past its end, on
    a machine shared with others) kills nothing: the trial starts over in a
    fresh workdir with a new draw, up to ``MAX_ATTEMPTS`` times.
    """
    workdir = base / f"{study}_t{trial}"
    attempt = 0
    while True:
        attempt += 1
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir()
        points, runs, outcome = [], 0, "killed"
        for kind, at_s in plan(trial, rng, wall_s):
            if outcome != "killed":  # the previous run finished before its kill point
                points.append(f"{kind} (skipped)")
                continue
            outcome, seconds = run_once(study, workdir, kind, at_s)
            runs += 1
            label = f"random {at_s:.1f}s" if kind == "random" else kind
            points.append(f"{label} @{seconds:.1f}s"
                          + ("" if outcome == "killed" else f" ({outcome})"))
        if runs > 1 or outcome == "killed" or attempt == MAX_ATTEMPTS:
            break
    if attempt > 1:
        points.append(f"(attempt {attempt})")
    for _ in range(MAX_FINAL_RUNS):
        if outcome == "rc=0":
            break
        outcome, _ = run_once(study, workdir, None)
        runs += 1
    diff = differences(reference, workdir) if outcome == "rc=0" else [f"final run {outcome}"]
    if not diff:
        shutil.rmtree(workdir)
    return {"trial": trial, "points": points, "reruns": runs - 1, "identical": not diff,
            "diff": diff, "workdir": workdir}


def concurrency_check(study: str, reference: pathlib.Path, base: pathlib.Path) -> str:
    """Two runs of ``study`` on one workdir at once: one refused (exit 2), one identical."""
    workdir = base / f"{study}_concurrent"
    workdir.mkdir()
    logs = [base / f"{study}_concurrent_{i}.stderr" for i in range(2)]
    procs = []
    for log in logs:
        with log.open("wb") as stderr:
            procs.append(subprocess.Popen(command(study, workdir), cwd=REPO,
                                          stdout=subprocess.DEVNULL, stderr=stderr))
    results = [(p.wait(), log.read_text(errors="replace"))
               for p, log in zip(procs, logs, strict=True)]
    refused = [err for rc, err in results if rc == 2 and "is in use by pid" in err]
    finished = [rc for rc, _ in results if rc == 0]
    diff = differences(reference, workdir) if finished else ["no run finished"]
    ok = len(refused) == 1 and len(finished) == 1 and not diff
    message = refused[0].strip().splitlines()[-1] if refused else "(none refused)"
    return (f"{'PASS' if ok else 'FAIL'} ({study}): exit codes {[rc for rc, _ in results]}; "
            f"refused with `{message}`; the other run's files "
            f"{'identical to the reference' if not diff else 'differ: ' + ', '.join(diff)}")


def machine() -> str:
    """``nproc`` and lscpu's model name."""
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lscpu
                  if line.startswith("Model name")), "?")
    return f"nproc {nproc}, {model}"


def main() -> None:
    """Parse the flags, run the campaign, write the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", default=",".join(STUDIES))
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/kill_campaign.md"))
    parser.add_argument("--note", default="", help="a line added to the report")
    args = parser.parse_args()
    studies = args.studies.split(",")
    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        parser.error(f"unknown studies {unknown}; known: {', '.join(STUDIES)}")
    rng = random.Random(args.seed)
    base = pathlib.Path(tempfile.mkdtemp(prefix="kill_campaign_"))
    started, sections, totals = time.monotonic(), [], [0, 0]
    concurrency = ""
    for study in studies:
        reference = base / f"{study}_reference"
        reference.mkdir()
        outcome, wall_s = run_once(study, reference, None)
        if outcome != "rc=0":
            sections.append(f"## {study}\n\nreference run failed ({outcome})\n")
            continue
        if not concurrency:
            concurrency = concurrency_check(study, reference, base)
            print(concurrency, flush=True)
        rows = [run_trial(study, t, rng, reference, wall_s, base) for t in range(args.trials)]
        totals[0] += sum(r["identical"] for r in rows)
        totals[1] += len(rows)
        lines = [f"## {study}\n", f"reference wall time {wall_s:.1f}s\n",
                 "| trial | kill points | reruns | identical | differing files |",
                 "|---|---|---|---|---|"]
        for r in rows:
            kept = f"{', '.join(r['diff'])} (kept in {r['workdir']})" if r["diff"] else ""
            lines.append(f"| {r['trial']} | {'; '.join(r['points'])} | {r['reruns']} | "
                         f"{'yes' if r['identical'] else 'no'} | {kept} |")
        sections.append("\n".join(lines) + "\n")
        print(f"{study}: {sum(r['identical'] for r in rows)}/{len(rows)} identical", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    header = [
        "# Kill campaign (#35)\n",
        f"Command: `python benchmarks/kill_campaign.py --studies={args.studies} "
        f"--trials={args.trials} --seed={args.seed}`\n",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- commit: {commit} (plus uncommitted edits, if any)",
        f"- machine: {machine()}",
        f"- wall time: {(time.monotonic() - started) / 60:.1f} min",
        f"- identical: **{totals[0]} / {totals[1]}** trials",
        f"- concurrency: {concurrency}",
        *([f"- note: {args.note}"] if args.note else []),
        "\nCompared: every file but `checkpoints/**`, `*.damaged/` and `.lock`. Reruns: runs "
        "after the first launch (the kill runs after the first, and the final run(s)).\n",
    ]
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header) + "\n" + "\n".join(sections))
    print(f"wrote {out}; workdirs under {base}")


if __name__ == "__main__":
    main()
