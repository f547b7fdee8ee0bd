"""Cold and warm compile times of the executor's programs with JAX's persistent cache.

Each measurement runs in a fresh process (so nothing is cached in memory):
the first process compiles into an empty cache folder (cold), the second
finds the programs there (warm). Timed: building the executor and its init
program (``executor.init``), then the first training call (compile + 1 step).
A third process runs with the cache turned off as a check.

    python benchmarks/compile_cache.py            # writes benchmarks/results/compile_cache.json

Data: random arrays of the real shapes (MNIST 28x28x1, CIFAR-10 32x32x3), so
no dataset is needed.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "compile_cache.json"

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from ltjax import cli
cli.tune_allocator()
cache = sys.argv[2]
if cache != "off":
    cli.use_compilation_cache(cache, min_compile_seconds=0.0)
import jax, numpy as np
from ltjax import models
from ltjax.core import rng
from ltjax.engine import executor as executor_lib
from ltjax.engine import optim
from ltjax.io import data
name = sys.argv[1]
shape, model = {"lenet": ((28, 28, 1), models.create("lenet_300_100")),
                "resnet20": ((32, 32, 3), models.create("resnet20"))}[name]
rs = np.random.default_rng(0)
split = data.Split(x=rs.integers(0, 256, (2048, *shape), dtype=np.uint8),
                   y=rs.integers(0, 10, 2048).astype(np.int32))
test = data.Split(x=split.x[:1000], y=split.y[:1000])
dataset = data.Dataset(name="synthetic", train=split, validation=None, test=test, num_classes=10,
                       mean=np.full(shape[-1], 128.0, np.float32),
                       std=np.full(shape[-1], 64.0, np.float32),
                       augment="cifar" if name == "resnet20" else None)
recipe = (optim.Recipe(optimizer="adam", learning_rate=1.2e-3, batch_size=60) if name == "lenet"
          else optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9, batch_size=128))
t1 = time.perf_counter()
executor = executor_lib.Executor(model, dataset, recipe)
init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(0, 1))
state = executor.init(init_keys)
jax.block_until_ready(state)
t2 = time.perf_counter()
state, _ = executor.train(state, None, noise_keys, num_steps=1)
jax.block_until_ready(state)
t3 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "init_s": t2 - t1, "first_train_call_s": t3 - t2}))
"""


def run(name: str, cache: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, name, cache], check=True,
                         capture_output=True, text=True,
                         cwd=pathlib.Path(__file__).resolve().parents[1],
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    rows = {}
    for name in ("lenet", "resnet20"):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            rows[name] = {"cold": run(name, cache), "warm": run(name, cache),
                          "off": run(name, "off")}
            rows[name]["wall_s"] = time.perf_counter() - start
        print(name, json.dumps(rows[name], indent=1))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": os.uname().nodename, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
