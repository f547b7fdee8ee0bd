"""What telemetry costs: the dense LeNet-300-100 study with and without it, same run.

Frankle et al. 2020's telemetry (``experiments/configs/lenet_mnist.py:telemetry``:
every 50 steps up to 2000, then every 500, the post-pass against the final
weights) on MNIST, 2 seeds, ``--steps`` training steps. Each configuration runs
twice in its own process (the first fills JAX's compilation cache; the second
is timed), alternating, and the report gives the wall times and their ratio.

    LTJAX_DATA_DIR=../shared/data python benchmarks/telemetry_overhead.py \\
        --out benchmarks/results/telemetry_overhead.json

Run it on a quiet machine: it measures wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def _run(variant: str, steps: int, workdir: str) -> float:
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [sys.executable, "-m", "experiments.train",
           f"--config=experiments/configs/lenet_mnist.py{variant}",
           f"--config.training_steps={steps}it", f"--config.eval_every={steps}it",
           f"--config.checkpoint_every={steps}it", f"--workdir={workdir}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/telemetry_overhead.json")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="ltjax-telemetry-")
    times: dict[str, list[float]] = {"plain": [], "telemetry": []}
    for _ in range(args.repeats + 1):  # the first round fills the compilation cache
        for name, variant in (("plain", ""), ("telemetry", ":telemetry")):
            times[name].append(_run(variant, args.steps, os.path.join(root, name)))
    shutil.rmtree(root, ignore_errors=True)
    best = {k: min(v[1:]) for k, v in times.items()}
    report = {"steps": args.steps, "seconds": times, "best_seconds": best,
              "overhead": best["telemetry"] / best["plain"] - 1.0}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
