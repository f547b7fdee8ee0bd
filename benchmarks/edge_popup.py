"""Edge-popup's per-step top-k: bisection select vs a sort, against plain training.

Bias-free LeNet-300-100 on MNIST shapes (random pixels), batch 128, SGD with
momentum, S members at once on the executor: plain training of the weights
(identity), edge-popup with :func:`ltjax.core.topk.mask` (32-pass
bisection on the scores' bit patterns) and edge-popup with a sort-based
threshold (``jnp.sort`` per layer per step, the slow way the spec measured),
in one process, each timed over ``--steps`` steps after a warm-up call.

    python benchmarks/edge_popup.py --out benchmarks/results/edge_popup.json

Run it on a quiet machine (no other jobs): it measures wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from ltjax import models
from ltjax.core import masking, rng, topk
from ltjax.engine import executor as executor_lib
from ltjax.engine import optim
from ltjax.io import data
from ltjax.methods import supermasks


def sort_top_k_mask(values: jax.Array, kept, *, ties: str = "first", alive=None) -> jax.Array:
    """The same mask as ``topk.mask`` of non-negative values (ties by lower index), by a sort."""
    assert ties == "first" and alive is None, (ties, alive)
    flat = values.reshape(-1).astype(jnp.float32)
    kept = jnp.asarray(kept, jnp.int32)
    ordered = jnp.sort(flat)
    threshold = ordered[jnp.clip(flat.size - kept, 0, flat.size - 1)]
    above = flat > threshold
    ties = flat == threshold
    room = kept - jnp.sum(above, dtype=jnp.int32)
    mask = (above | (ties & (jnp.cumsum(ties, dtype=jnp.int32) <= room))) & (kept > 0)
    return mask.reshape(values.shape)


def measure(executor, members: int, steps: int) -> float:
    """Examples/s over all members for ``steps`` steps (after one warm-up call)."""
    keys = rng.replicate_keys(0, members)
    init_keys, noise_keys = rng.init_and_noise(keys)
    state = executor.init(init_keys)
    state, _ = executor.train(state, None, noise_keys, num_steps=steps)  # compile + warm up
    jax.block_until_ready(state)
    start = time.perf_counter()
    state, _ = executor.train(state, None, noise_keys, num_steps=steps)
    jax.block_until_ready(state)
    return members * steps * executor.recipe.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    shape, n = (28, 28, 1), 60000
    gen = np.random.default_rng(0)
    split = data.Split(x=gen.integers(0, 256, (n, *shape), dtype=np.uint8),
                       y=gen.integers(0, 10, n).astype(np.int32))
    dataset = data.Dataset(name="synthetic", train=split, validation=None,
                           test=data.Split(x=split.x[:1000], y=split.y[:1000]), num_classes=10,
                           mean=np.full(1, 128.0, np.float32), std=np.full(1, 64.0, np.float32),
                           augment=None)
    model = models.create("lenet_300_100", use_bias=False)
    recipe = optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=1e-4,
                          batch_size=128)
    abstract = jax.eval_shape(lambda k: models.init(model, k, shape)[0], jax.random.key(0))
    selection = masking.prunable(abstract)
    steps = args.steps

    def executor(reparam=None):
        return executor_lib.Executor(model, dataset, recipe, reparam=reparam,
                                     steps_per_call=steps)

    results = {"plain": measure(executor(), args.members, steps)}
    reparam = supermasks.edge_popup(selection, density=args.density)
    results["edge_popup_bisection"] = measure(executor(reparam), args.members, steps)
    original = topk.mask
    topk.mask = sort_top_k_mask  # apply() looks it up at trace time
    try:
        results["edge_popup_sort"] = measure(executor(supermasks.edge_popup(
            selection, density=args.density)), args.members, steps)
    finally:
        topk.mask = original
    report = {
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__, "members": args.members, "steps": steps,
        "density": args.density, "batch_size": recipe.batch_size,
        "examples_per_s": {k: round(v, 1) for k, v in results.items()},
        "ratio_to_plain": {k: round(v / results["plain"], 3) for k, v in results.items()},
        "bisection_over_sort": round(results["edge_popup_bisection"]
                                     / results["edge_popup_sort"], 2),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
