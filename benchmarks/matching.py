"""Wall time of Git Re-Basin weight matching on random weights, against the reference algorithm.

For MLP 784-512x3-10, ResNet-20 at width multipliers 4 and 16 (base widths
64 and 256) and VGG-16 (CIFAR shapes), two independent He-normal inits are
matched with :func:`ltjax.core.matching.weight_matching` (scipy solver): the
first call (with compilation) and the median of 3 further calls, the
sweeps to converge, the objective, and the share of time spent building
similarity matrices vs solving assignments.

The baseline, measured in the same run, is the published algorithm as
samuela/git-re-basin runs it: eager JAX, every similarity matrix rebuilt from
the permuted weights at every step (``moveaxis``, ``reshape``, ``w_a @ w_b.T``),
scipy's ``linear_sum_assignment``, stop when a sweep changes nothing. It
uses the same sweep orders as ours, so both must reach the same objective.
The original code measured on this machine (FACTS.md): MLP 0.55 s,
ResNet-20x4 0.43 s, ResNet-20x16 17.5 s, VGG-16 23.8 s.

    python benchmarks/matching.py --out benchmarks/results/matching.json
    python benchmarks/matching.py --quick      # MLP only, one repeat

Run it on a quiet machine (no other jobs): it measures wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from ltjax import models
from ltjax.core import matching, tree

CASES = {
    "mlp_784_512x3_10": ("mlp", {"widths": (512, 512, 512)}, (28, 28, 1)),
    "resnet20x4": ("resnet20", {"width": 64}, (32, 32, 3)),
    "resnet20x16": ("resnet20", {"width": 256}, (32, 32, 3)),
    "vgg16": ("vgg16", {}, (32, 32, 3)),
}


def _models(name: str):
    model_name, kwargs, shape = CASES[name]
    model = models.create(model_name, **kwargs)
    params_a, _ = models.init(model, jax.random.key(0), shape)
    params_b, _ = models.init(model, jax.random.key(1), shape)
    return models.permutation_spec(model, params_a), params_a, params_b


def baseline_weight_matching(spec: matching.PermutationSpec, params_a, params_b, *,
                             seed: int = 0, max_iter: int = 100) -> dict:
    """The reference algorithm, eager: every similarity rebuilt at every step.

    Sweep orders as :func:`ltjax.core.matching.weight_matching` restart 0 draws them.
    """
    if any(not isinstance(e, str | None) for axes in spec.params.values() for e in axes):
        raise ValueError("the baseline handles plain axes only (no (name, repeats) entries)")
    flat_a = dict(zip(tree.names(params_a), jax.tree.leaves(params_a), strict=True))
    flat_b = dict(zip(tree.names(params_b), jax.tree.leaves(params_b), strict=True))
    sizes = matching.check_spec(spec, params_a)
    perms = {k: jnp.arange(n) for k, n in sizes.items()}
    names = list(spec.names)
    order_rng = np.random.default_rng([seed, 0])
    timing = {"similarity_s": 0.0, "assignment_s": 0.0}
    sweeps = 0
    for sweep in range(max_iter):
        sweeps = sweep + 1
        progress = False
        for index in order_rng.permutation(len(names)):
            name = names[index]
            n = sizes[name]
            start = time.perf_counter()
            similarity = jnp.zeros((n, n))
            for path, axis in spec.perm_to_axes[name]:
                w_a, w_b = flat_a[path], flat_b[path]
                for other, entry in enumerate(spec.params[path]):
                    if entry is not None and other != axis:
                        w_b = jnp.take(w_b, perms[entry], axis=other)
                w_a = jnp.moveaxis(w_a, axis, 0).reshape(n, -1)
                w_b = jnp.moveaxis(w_b, axis, 0).reshape(n, -1)
                similarity += w_a @ w_b.T
            host = np.asarray(similarity)
            middle = time.perf_counter()
            _, cols = scipy.optimize.linear_sum_assignment(host, maximize=True)
            timing["assignment_s"] += time.perf_counter() - middle
            timing["similarity_s"] += middle - start
            old = host[np.arange(n), np.asarray(perms[name])].sum()
            new = host[np.arange(n), cols].sum()
            if new > old + 1e-12:
                perms[name] = jnp.asarray(cols)
                progress = True
        if not progress:
            break
    flat = {k: np.asarray(v) for k, v in perms.items()}
    objective = matching.objective(spec, params_a, params_b, flat)
    return {"perms": flat, "objective": objective, "sweeps": sweeps, **timing}


class _Profile:
    """Times the similarity terms and the assignments inside weight_matching."""

    def __init__(self):
        self.similarity_s = 0.0
        self.assignment_s = 0.0

    def __enter__(self):
        self._term, self._solve = matching._Term.current, matching.solve_assignment
        profile = self

        def current(term, *args):
            start = time.perf_counter()
            value = profile._term(term, *args).block_until_ready()
            profile.similarity_s += time.perf_counter() - start
            return value

        def solve(*args, **kwargs):
            start = time.perf_counter()
            value = profile._solve(*args, **kwargs)
            profile.assignment_s += time.perf_counter() - start
            return value

        matching._Term.current, matching.solve_assignment = current, solve
        return self

    def __exit__(self, *exc):
        matching._Term.current, matching.solve_assignment = self._term, self._solve


def measure(name: str, repeats: int, baseline: bool) -> dict:
    spec, params_a, params_b = _models(name)
    start = time.perf_counter()
    result = matching.weight_matching(spec, params_a, params_b, seed=0)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matching.weight_matching(spec, params_a, params_b, seed=0)
        times.append(time.perf_counter() - start)
    with _Profile() as profile:
        start = time.perf_counter()
        matching.weight_matching(spec, params_a, params_b, seed=0)
        profiled = time.perf_counter() - start
    row = {
        "case": name, "permutations": len(spec.names),
        "weights": int(sum(x.size for x in jax.tree.leaves(params_a))),
        "ltjax_first_s": first, "ltjax_median_s": statistics.median(times),
        "ltjax_times_s": times, "ltjax_sweeps": result.iterations,
        "ltjax_objective": result.objective,
        "ltjax_similarity_share": profile.similarity_s / profiled,
        "ltjax_assignment_share": profile.assignment_s / profiled,
    }
    if baseline:
        base_times, base = [], None
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            base = baseline_weight_matching(spec, params_a, params_b, seed=0)
            base_times.append(time.perf_counter() - start)
        total = base["similarity_s"] + base["assignment_s"]
        row.update({
            "baseline_median_s": statistics.median(base_times), "baseline_times_s": base_times,
            "baseline_sweeps": base["sweeps"], "baseline_objective": base["objective"],
            "baseline_similarity_share": base["similarity_s"] / total,
            "same_permutations": all(np.array_equal(base["perms"][k], result.perms[k])
                                     for k in spec.names),
            "speedup_median": statistics.median(base_times) / statistics.median(times),
        })
    print(json.dumps({k: v for k, v in row.items() if not k.endswith("times_s")}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/matching.json")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--quick", action="store_true", help="MLP only, one repeat")
    args = parser.parse_args()
    cases = ["mlp_784_512x3_10"] if args.quick else args.cases.split(",")
    repeats = 1 if args.quick else args.repeats
    rows = [measure(name, repeats, not args.no_baseline) for name in cases]
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]},
        "reference_original_s": {"mlp_784_512x3_10": 0.55, "resnet20x4": 0.43,
                                 "resnet20x16": 17.5, "vgg16": 23.8},
        "rows": rows,
    }
    if not args.quick:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
