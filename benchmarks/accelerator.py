"""Throughput on whatever accelerator is present, in one command: many seeds as one program.

LeNet-300-100 (MNIST shapes, batch 60, Adam) at 1, 8, 64 and 256 vmapped
seeds and ResNet-20 (CIFAR shapes, batch 128, SGD momentum 0.9, crop + flip)
at 1, 4 and 16 seeds, on JAX's default backend (GPU, TPU or CPU): examples/s
per seed and in total, the speed-up of S seeds over one, and the share of
the device's peak where the device is in ``PEAK_TFLOPS`` (analytic training
FLOPs: 3x the forward pass's multiply-adds x 2). Data are random arrays of
the real shapes (speed does not depend on pixel values). Writes JSON.

    python benchmarks/accelerator.py --out benchmarks/results/accelerator_<device>.json
    python benchmarks/accelerator.py --quick --out /tmp/accelerator.json   # anywhere, seconds

What we expect on a GPU: 64 LeNet seeds train at >= 40x the examples/s of
one seed (one seed's tiny matmuls leave the device idle). ``--quick`` is a
smoke run (LeNet at 1 and 2 seeds, a ResNet-8 of width 4 at 1 seed, a few steps), tested
on CPU by ``tests/test_benchmarks.py``; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax

from ltjax import models
from ltjax.core import rng
from ltjax.engine import executor as executor_lib
from ltjax.engine import optim
from ltjax.io import data

#: Dense peak TFLOP/s by ``device_kind`` (vendor data sheets): fp32 without tensor
#: cores for GPUs (JAX's default float32 matmul precision may use TF32 tensor cores,
#: so shares above 1 are possible), bf16 for TPUs.
PEAK_TFLOPS = {
    "NVIDIA H200": 67.0, "NVIDIA H100 80GB HBM3": 67.0, "NVIDIA H100 PCIe": 51.0,
    "NVIDIA A100-SXM4-80GB": 19.5, "NVIDIA A100-SXM4-40GB": 19.5, "NVIDIA A100-PCIE-40GB": 19.5,
    "NVIDIA L4": 30.3, "Tesla T4": 8.1, "Tesla V100-SXM2-16GB": 15.7,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
}

#: Forward multiply-adds per example.
FORWARD_MACS = {
    "lenet_300_100": 784 * 300 + 300 * 100 + 100 * 10,
    "resnet20": 40_550_000,  # He et al. 2016's CIFAR ResNet-20: ~41M multiply-adds
    "resnet8": 0,  # --quick only: no share of peak
}

FULL = {"lenet_300_100": (1, 8, 64, 256), "resnet20": (1, 4, 16)}
QUICK = {"lenet_300_100": (1, 2), "resnet8": (1,)}


def _dataset(name: str, quick: bool) -> tuple[data.Dataset, optim.Recipe]:
    if name == "lenet_300_100":
        shape, num = (28, 28, 1), 60000
        recipe = optim.Recipe(optimizer="adam", learning_rate=1.2e-3, batch_size=60)
        augment = None
    else:
        shape, num = (32, 32, 3), 50000
        recipe = optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9,
                              weight_decay=1e-4, batch_size=128)
        augment = "cifar"
    return data.synthetic(shape, 2000 if quick else num, augment=augment), recipe


def measure(name: str, seeds: int, *, steps: int, repeats: int, quick: bool = False) -> dict:
    """Best-of-``repeats`` wall time of ``steps`` training steps of ``seeds`` members."""
    dataset, recipe = _dataset(name, quick)
    model = models.ResNet(depth=8, width=4) if name == "resnet8" else models.create(name)
    executor = executor_lib.Executor(model, dataset, recipe)
    init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(0, seeds))
    state = executor.init(init_keys)
    start = time.perf_counter()
    state, _ = executor.train(state, None, noise_keys, num_steps=steps)  # compiles
    jax.block_until_ready(state)
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        state, _ = executor.train(state, None, noise_keys, num_steps=steps)
        jax.block_until_ready(state)
        best = min(best, time.perf_counter() - start)
    per_seed = steps * recipe.batch_size / best
    return {"model": name, "seeds": seeds, "steps": steps, "seconds": best,
            "first_call_seconds": first, "strategy": executor.strategy,
            "examples_per_s_per_seed": per_seed, "examples_per_s_total": per_seed * seeds}


def share_of_peak(run: dict, device_kind: str) -> float | None:
    """Achieved training FLOP/s over the device's peak (None when unknown)."""
    peak, macs = PEAK_TFLOPS.get(device_kind), FORWARD_MACS.get(run["model"], 0)
    if peak is None or not macs:
        return None
    return run["examples_per_s_total"] * 3 * 2 * macs / (peak * 1e12)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--quick", action="store_true", help="a smoke run, anywhere")
    parser.add_argument("--steps", type=int, default=0, help="steps per call (0: default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="one model of the plan, e.g. lenet_300_100")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.only:
        if args.only not in plan:
            parser.error(f"--only must be one of {sorted(plan)}, got {args.only!r}")
        plan = {args.only: plan[args.only]}
    steps = args.steps or (3 if args.quick else 500)
    device = jax.devices()[0]
    report = {"backend": jax.default_backend(), "device_kind": device.device_kind,
              "num_devices": jax.device_count(), "jax": jax.__version__,
              "platform": platform.platform(), "quick": args.quick, "runs": []}
    for name, seed_counts in plan.items():
        for seeds in seed_counts:
            run = measure(name, seeds, steps=steps, repeats=1 if args.quick else args.repeats,
                          quick=args.quick)
            run["share_of_peak"] = share_of_peak(run, device.device_kind)
            one = next(r for r in report["runs"] if r["model"] == name and r["seeds"] == 1) \
                if seeds > 1 else run
            run["speedup_over_one_seed"] = run["examples_per_s_total"] / \
                one["examples_per_s_total"]
            report["runs"].append(run)
            print(f"{name:>14} x{seeds:<4} {run['examples_per_s_total']:12.0f} ex/s total "
                  f"({run['examples_per_s_per_seed']:10.0f} per seed, "
                  f"{run['speedup_over_one_seed']:6.1f}x one seed)", flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    return report


if __name__ == "__main__":
    main()
