"""What evaluating inside the training program saves: one segment's training and evaluations,
as host calls (``Executor.train`` then ``Executor.evaluate`` per split, per interval: the
studies' loop before #36) against ``Executor.train_and_evaluate`` (one program and one host
transfer for every interval), and training alone, interleaved in one process.

LeNet-300-100 with the LTH recipe (Adam 1.2e-3, batch 60) on MNIST (55K train; 5K
validation and 10K test evaluated after every interval, as the IMP reproduction does),
``--members`` members, ``--intervals`` intervals of ``--interval`` steps. Each variant is
compiled first, then timed ``--repeats`` times in turn; the report gives every time, the
medians and the ratios.

    LTJAX_DATA_DIR=../shared/data python benchmarks/eval_in_program.py \\
        --out benchmarks/results/eval_in_program.json

Run it on a quiet machine: it measures wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/eval_in_program.json")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--cadences", default="5x1000,50x100",
                        help="intervals x steps per interval, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from ltjax import models
    from ltjax.core import rng
    from ltjax.engine import optim
    from ltjax.engine.executor import Executor
    from ltjax.io import data

    dataset = data.load("mnist", validation_size=5000)
    executor = Executor(models.create("lenet_300_100"), dataset,
                        optim.Recipe(optimizer="adam", learning_rate=1.2e-3, batch_size=60))
    init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(0, args.members))
    start = executor.init(init_keys)
    splits = ["validation", "test"]

    def host_calls(intervals: int, steps: int):
        state = start
        for _ in range(intervals):
            state, _ = executor.train(state, None, noise_keys, num_steps=steps)
            for split in splits:
                executor.evaluate(state, split)
        return state

    def in_program(intervals: int, steps: int):
        return executor.train_and_evaluate(start, None, noise_keys, num_intervals=intervals,
                                           interval=steps, splits=splits)[0]

    def training_only(intervals: int, steps: int):
        return executor.train(start, None, noise_keys, num_steps=intervals * steps)[0]

    variants = {"host_calls": host_calls, "in_program": in_program,
                "training_only": training_only}
    report: dict = {"device": str(jax.devices()[0]), "members": args.members, "cadences": {}}
    for cadence in args.cadences.split(","):
        intervals, steps = (int(x) for x in cadence.split("x"))
        for fn in variants.values():  # compile
            jax.block_until_ready(fn(intervals, steps).params)
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                tic = time.perf_counter()
                jax.block_until_ready(fn(intervals, steps).params)
                seconds[name].append(round(time.perf_counter() - tic, 3))
        median = {k: statistics.median(v) for k, v in seconds.items()}
        report["cadences"][cadence] = {
            "seconds": seconds, "median_seconds": median,
            "in_program_over_host_calls": median["in_program"] / median["host_calls"],
            "evaluation_share_host_calls": 1 - median["training_only"] / median["host_calls"]}
        print(cadence, json.dumps(report["cadences"][cadence]), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
