"""Masked ResNet-20 training on a CPU: ltjax's executor against an OpenLTH-style torch loop.

One seed, CIFAR shapes (random data: speed does not depend on pixel values), batch 128,
SGD with momentum 0.9 and weight decay 1e-4, every conv and the head masked at 80 %
density. ltjax: the public ``Executor`` (``'unrolled_loop'``, materialised conv inputs,
the allocator settings of ``ltjax.cli.tune_allocator``: what a study runs), CIFAR's
crop-and-flip augmentation inside the step. torch: OpenLTH's ResNet-20 (conv-BN-ReLU, 1x1
conv shortcuts where the shape changes), eager, the masks applied after each optimiser
step as OpenLTH does, the same augmentation on the host tensors. Each side runs in its own
process, on one core (``taskset -c 0``, one torch thread) and on two (torch 2 threads),
alternating; the report gives examples/s (the best of ``--repeats`` timed calls of
``--steps`` steps after a warm-up) and the ratios.

torch is optional and never a dependency of ltjax: without it the script measures ltjax
alone and says how to get torch (``pip install torch``; on this project's machines
``pip install torch==2.13.0`` takes a CPU build from the local disk).

    python benchmarks/conv_throughput.py --out benchmarks/results/conv_throughput.json

Run it on a quiet machine: it measures wall time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time

BATCH, DENSITY = 128, 0.8


def _ltjax_child(steps: int, repeats: int) -> dict:
    from ltjax import cli

    cli.tune_allocator()
    import jax
    import numpy as np

    from ltjax import models
    from ltjax.core import rng
    from ltjax.engine import executor as executor_lib
    from ltjax.engine import optim
    from ltjax.io import data

    dataset = data.synthetic((32, 32, 3), 50000, augment="cifar")
    recipe = optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=1e-4,
                          batch_size=BATCH)
    executor = executor_lib.Executor(models.create("resnet20"), dataset, recipe,
                                     devices=jax.devices()[:1])
    init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(0, 1))
    state = executor.init(init_keys)
    draw = np.random.default_rng(0)
    masks = jax.tree.map(lambda p: draw.random(p.shape) < DENSITY if p.ndim == 5 or (
        p.ndim == 3) else np.ones(p.shape, bool), state.params)
    masks = executor.shard(masks)
    state, _ = executor.train(state, masks, noise_keys, num_steps=2)  # compile
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        state, _ = executor.train(state, masks, noise_keys, num_steps=steps)
        jax.block_until_ready(state)
        best = min(best, time.perf_counter() - tic)
    return {"examples_per_s": steps * BATCH / best, "seconds": best,
            "strategy": executor.strategy, "jax": jax.__version__}


def _torch_child(steps: int, repeats: int, threads: int) -> dict:
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, f_in: int, f_out: int, downsample: bool):
            super().__init__()
            stride = 2 if downsample else 1
            self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(f_out)
            self.conv2 = nn.Conv2d(f_out, f_out, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(f_out)
            self.shortcut = nn.Sequential() if f_in == f_out else nn.Sequential(
                nn.Conv2d(f_in, f_out, 1, stride=2, bias=False), nn.BatchNorm2d(f_out))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    class ResNet20(nn.Module):  # OpenLTH's cifar_resnet_20
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(16)
            layers, f_in = [], 16
            for segment, f_out in enumerate((16, 32, 64)):
                for i in range(3):
                    layers.append(Block(f_in, f_out, segment > 0 and i == 0))
                    f_in = f_out
            self.blocks = nn.Sequential(*layers)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            out = self.blocks(torch.relu(self.bn(self.conv(x))))
            return self.fc(torch.nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))

    model = ResNet20()
    masks = {name: (torch.rand_like(p) < DENSITY).float() for name, p in model.named_parameters()
             if p.dim() in (2, 4)}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = torch.rand(50000, 3, 32, 32)
    labels = torch.randint(0, 10, (50000,))

    def step(i: int) -> None:
        index = torch.randint(0, 50000, (BATCH,))
        x = torch.nn.functional.pad(images[index], (4, 4, 4, 4))
        dx, dy = (int(v) for v in torch.randint(0, 9, (2,)))
        x = x[:, :, dy:dy + 32, dx:dx + 32]
        if i % 2:
            x = torch.flip(x, dims=(3,))
        loss = nn.functional.cross_entropy(model(x), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in masks:
                    p.mul_(masks[name])

    model.train()
    for i in range(2):
        step(i)
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        for i in range(steps):
            step(i)
        best = min(best, time.perf_counter() - tic)
    return {"examples_per_s": steps * BATCH / best, "seconds": best, "torch": torch.__version__,
            "threads": threads}


def _run(side: str, cores: int, steps: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--cores", str(cores),
           "--steps", str(steps), "--repeats", str(repeats)]
    if cores == 1 and shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if out.returncode:
        raise RuntimeError(f"{side} on {cores} core(s) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/conv_throughput.json")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=("ltjax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--cores", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "ltjax":
        print(json.dumps(_ltjax_child(args.steps, args.repeats)))
        return
    if args.child == "torch":
        print(json.dumps(_torch_child(args.steps, args.repeats, args.cores)))
        return
    sides = ["ltjax"] + (["torch"] if importlib.util.find_spec("torch") else [])
    if len(sides) == 1:
        print("torch is not installed: measuring ltjax alone (pip install torch, or "
              "pip install torch==2.13.0 on this project's machines, for the comparison)")
    runs: dict = {f"{side}_{cores}core": [] for cores in (1, 2) for side in sides}
    for _ in range(args.rounds):
        for cores in (1, 2):
            for side in sides:
                run = _run(side, cores, args.steps, args.repeats)
                runs[f"{side}_{cores}core"].append(run)
                print(side, cores, f"{run['examples_per_s']:.1f} examples/s", flush=True)
    best = {k: max(r["examples_per_s"] for r in v) for k, v in runs.items()}
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "batch": BATCH, "density": DENSITY, "steps": args.steps, "runs": runs,
              "best_examples_per_s": best,
              "ltjax_2core_over_1core": best["ltjax_2core"] / best["ltjax_1core"]}
    if "torch" in sides:
        report.update({f"ltjax_over_torch_{c}core": best[f"ltjax_{c}core"] / best[f"torch_{c}core"]
                       for c in (1, 2)})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
