"""Training throughput of the executor: examples/s per seed and in aggregate.

LeNet-300-100 (MNIST shapes, batch 60, Adam) and ResNet-20 (CIFAR shapes,
batch 128, SGD momentum 0.9, augmentation) at S = 1, 2, 4, 8 seeds, with the
seed axis on 1 and on 2 CPU devices, plus numpy's fp32 2048x2048 matmul
GFLOP/s in the same run so the report can give a share of peak. Each
configuration runs in its own process (the CPU device count is fixed at
start-up). Data are random arrays of the real shapes: speed does not depend
on pixel values.

    python benchmarks/train_throughput.py --out benchmarks/results/train_throughput.json
    python benchmarks/train_throughput.py --quick     # a fast smoke run

Run it on a quiet machine (no other jobs): it measures wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

# Allocator settings that stop XLA:CPU from page-faulting a fresh scratch
# buffer every conv step (FACTS.md: ~1.15x on ResNet-20). Set for the
# benchmark's child processes only.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
              "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """numpy fp32 matmul GFLOP/s with ``threads`` BLAS threads (in a child process)."""
    code = (
        "import numpy as np, time\n"
        f"a = np.random.rand({size}, {size}).astype(np.float32); b = a.copy(); a @ b\n"
        "best = 1e9\n"
        f"for _ in range({repeats}):\n"
        "    t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)\n"
        f"print(2 * {size} ** 3 / best / 1e9)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip())


def _child(args: argparse.Namespace) -> None:
    """Measure one configuration in this process; print one JSON line."""
    if args.pin_core >= 0:
        os.sched_setaffinity(0, {args.pin_core})
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)

    from ltjax import models
    from ltjax.core import rng
    from ltjax.engine import executor as executor_lib
    from ltjax.engine import optim
    from ltjax.io import data

    if args.model == "lenet":
        shape, n = (28, 28, 1), 60000
        model = models.create("lenet_300_100")
        recipe = optim.Recipe(optimizer="adam", learning_rate=1.2e-3, batch_size=60)
        augment = None
    else:
        shape, n = (32, 32, 3), 50000
        model = models.create("resnet20", materialize_inputs=args.materialize)
        recipe = optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9,
                              weight_decay=1e-4, batch_size=128)
        augment = "cifar"
    dataset = data.synthetic(shape, n, augment=augment)
    executor = executor_lib.Executor(
        model, dataset, recipe, strategy=args.strategy,
        steps_per_call=args.steps_per_call or None, devices=jax.devices()[: args.devices],
        member_block={-1: "auto", 0: None}.get(args.member_block, args.member_block))
    init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(0, args.seeds))
    state = executor.init(init_keys)
    t0 = time.perf_counter()
    state, _ = executor.train(state, None, noise_keys, num_steps=args.warmup)  # compile
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, _ = executor.train(state, None, noise_keys, num_steps=args.steps)
        jax.block_until_ready(state)
        best = min(best, time.perf_counter() - t0)
    per_seed = args.steps * recipe.batch_size / best
    print(json.dumps({
        "model": args.model, "seeds": args.seeds, "devices": args.devices,
        "strategy": executor.strategy, "steps_per_call": executor.steps_per_call,
        "member_block": executor.member_block,
        "materialize": executor.materialize_inputs,
        "malloc_env": args.malloc_env, "pinned_core": args.pin_core, "steps": args.steps,
        "seconds": best, "first_call_seconds": compile_s,
        "examples_per_s_per_seed": per_seed, "examples_per_s_total": per_seed * args.seeds,
    }))


def _run_child(**kw) -> dict:
    cmd = [sys.executable, __file__, "--child"]
    for key, value in kw.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ)
    if kw.get("malloc_env", 1):
        env.update(MALLOC_ENV)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"benchmark child {kw} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    parser.add_argument("--quick", action="store_true", help="few steps, S in (1, 2)")
    parser.add_argument("--only", choices=("lenet", "resnet"), default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--steps-per-call", type=int, default=0)
    parser.add_argument("--materialize", type=int, default=-1, help="-1: executor decides")
    parser.add_argument("--pin-core", type=int, default=-1, help="run the child on one core")
    parser.add_argument("--malloc-env", type=int, default=1)
    parser.add_argument("--member-block", type=int, default=-1,
                        help="-1: the executor's default, 0: one vmap of all local members")
    args = parser.parse_args()
    if args.child:
        args.materialize = None if args.materialize < 0 else bool(args.materialize)
        args.malloc_env = bool(args.malloc_env)
        _child(args)
        return

    seeds = (1, 2) if args.quick else (1, 2, 4, 8)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "numpy_matmul_gflops": {"1_thread": matmul_gflops(1), "2_threads": matmul_gflops(2)},
        "runs": [],
    }
    lenet_steps = 200 if args.quick else 1000
    resnet_steps = 2 if args.quick else 8
    if args.only in (None, "lenet"):  # the 1-core baseline for the 2-device ratio
        run = _run_child(model="lenet", seeds=1, devices=1, steps=lenet_steps,
                         warmup=lenet_steps, repeats=3, pin_core=0)
        report["runs"].append(run)
        print(json.dumps(run), flush=True)
    for devices in (1, 2):
        for s in seeds:
            if args.only in (None, "lenet"):
                run = _run_child(model="lenet", seeds=s, devices=devices, steps=lenet_steps,
                                 warmup=lenet_steps, repeats=3)
                report["runs"].append(run)
                print(json.dumps(run), flush=True)
    if args.only in (None, "lenet"):
        # What exactness across S costs: blocks of 1 (the CPU default) vs one vmap of all
        # local members (same run, ratios).
        for s in ((2,) if args.quick else (4, 8)):
            run = _run_child(model="lenet", seeds=s, devices=2, steps=lenet_steps,
                             warmup=lenet_steps, repeats=3, member_block=0)
            report["runs"].append(run)
            print(json.dumps(run), flush=True)
    for devices in (1, 2):
        for s in seeds:
            if args.only in (None, "resnet") and not (s > 4 and args.quick):
                run = _run_child(model="resnet", seeds=s, devices=devices,
                                 steps=resnet_steps, warmup=2, repeats=3)
                report["runs"].append(run)
                print(json.dumps(run), flush=True)
    if args.only in (None, "resnet"):
        # What each CPU trick buys on one seed (same run, ratios).
        for materialize, malloc in ((1, 1), (0, 1), (1, 0), (0, 0)):
            run = _run_child(model="resnet", seeds=1, devices=1, steps=resnet_steps, warmup=2,
                             repeats=3, materialize=materialize, malloc_env=malloc)
            report["runs"].append(run)
            print(json.dumps(run), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
