"""Learning neural network subspaces: lines, curves and simplexes against standard training.

Wortsman, Horton, Guestrin, Farhadi & Rastegari 2021 ("Learning Neural
Network Subspaces", ICML 2021; :mod:`ltjax.methods.subspaces`). Arms
(``config.arms``), each one program (the reparameterisation is the
program's) with the replicates as members, all from the same
initialisations (a subspace's ``point_0`` is the standard net's init) and
data orders:

- ``standard``: ordinary training, and the linear path between independently
  trained replicates ``r`` and ``r + 1`` (the "naive" barrier);
- ``<kind>[_layerwise]@<beta>``: a learned ``line``, ``curve`` or ``simplex``
  (``config.simplex_points`` vertices), one draw for the network or one per
  module, with the cos^2 regulariser's weight ``beta``; e.g. ``line@1``,
  ``line_layerwise@1``, ``curve@0``.

Each learned subspace is evaluated at ``config.num_alphas`` evenly spaced
alphas from ``point_0`` to ``point_1`` (a simplex along that edge), with
BatchNorm statistics recomputed at every point for nets with BatchNorm; plus
the endpoint ensemble (summed logits, as the reference), the error barrier
along the path (:func:`ltjax.core.interpolation.error_barrier`) and the endpoints'
cos^2.

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import subspaces_mlp_digits
    summary = run_subspaces(subspaces_mlp_digits.get_config("quick"), "/tmp/sub")
    summary["num_replicates"]        # 2
    summary["rows"]                  # paths.csv's means per (variant, beta): midpoint, barrier
    ```

    The same run from a shell: ``python -m experiments.subspaces
    --config=experiments/configs/subspaces_mlp_digits.py:quick --workdir=/tmp/sub``.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax import models
from ltjax.core import interpolation, tree
from ltjax.engine import executor as executor_lib
from ltjax.io import results
from ltjax.methods import subspaces
from ltjax.studies import common, plots
from ltjax.studies.spec import RunSpec

VARIANTS = ("line", "line_layerwise", "curve", "curve_layerwise", "simplex",
            "simplex_layerwise")


def parse_arms(value: Any) -> tuple[tuple[str, float | None], ...]:
    """``('standard', 'line@1', ...)`` -> ``(('standard', None), ('line', 1.0), ...)``.

    Comma-separated strings are split (``--config.arms=standard,line@1``).

    Raises:
      ValueError: an unknown variant, a beta that is not a number >= 0, a
        repeated arm, or no arm (naming ``config.arms``).

    Example:
        >>> from ltjax.studies import subspaces
        >>> subspaces.parse_arms(("standard", "line_layerwise@1"))
        (('standard', None), ('line_layerwise', 1.0))
        >>> subspaces.parse_arms("standard,line@1")            # --config.arms=standard,line@1
        (('standard', None), ('line', 1.0))
    """
    items = [value] if isinstance(value, str) else list(value or ())
    names = [v.strip() for item in items for v in str(item).split(",") if v.strip()]
    if not names:
        raise ValueError("config.arms must name at least one arm")
    arms = []
    for name in names:
        if name == "standard":
            arms.append(("standard", None))
            continue
        variant, _, beta = name.partition("@")
        if variant not in VARIANTS or not beta:
            raise ValueError(f"config.arms: {name!r} is not 'standard' or '<variant>@<beta>' with "
                             f"a variant among {VARIANTS} (e.g. 'line@1')")
        try:
            value_beta = float(beta)
        except ValueError:
            value_beta = float("nan")
        if not (math.isfinite(value_beta) and value_beta >= 0):
            raise ValueError(f"config.arms: {name!r} needs a beta that is a number >= 0")
        arms.append((variant, value_beta))
    if len(set(arms)) != len(arms):
        raise ValueError(f"config.arms repeats an arm: {names}")
    return tuple(arms)


def _check_config(config: Any) -> tuple[tuple[str, float | None], ...]:
    arms = parse_arms(config.arms)
    num_alphas = config.num_alphas
    if isinstance(num_alphas, bool) or not isinstance(num_alphas, int) or num_alphas < 3 or (
            num_alphas % 2 == 0):
        raise ValueError(f"config.num_alphas must be an odd integer >= 3 (so alpha = 0.5 is on "
                         f"the grid), got {num_alphas!r}")
    if any(v.startswith("simplex") for v, _ in arms):
        subspaces.point_names("simplex", config.simplex_points)  # validates
    return arms


def _slug(variant: str, beta: float | None) -> str:
    return variant if beta is None else f"{variant}_beta{beta:g}"


@dataclasses.dataclass(frozen=True)
class SubspacesSpec:
    """A subspaces study, parsed and checked once at its entry (Wortsman et al. 2021).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`).
      arms: ``(variant, beta)`` per arm, in order (:func:`parse_arms`; ``('standard',
        None)`` for standard training).
      alphas: the paths' points from ``point_0`` to ``point_1`` (float32 values; alpha =
        0.5 among them).
      simplex_points: a simplex's vertices (``config.simplex_points``; None: the default).
      reset: how every point's BatchNorm statistics are recomputed
        (:func:`ltjax.studies.common.batch_stats_reset`), or None (no BatchNorm).

    Example:
        The spec of the digits quick config, before any workdir exists:

        >>> from experiments.configs import subspaces_mlp_digits
        >>> from ltjax.studies.subspaces import SubspacesSpec
        >>> spec = SubspacesSpec.from_config(subspaces_mlp_digits.get_config("quick"),
        ...                                  progress=False)
        >>> spec.arms[:2], spec.alphas, spec.reset     # an MLP: no BatchNorm to reset
        ((('standard', None), ('line', 1.0)), (0.0, 0.25, 0.5, 0.75, 1.0), None)
    """

    run: RunSpec
    arms: tuple[tuple[str, float | None], ...]
    alphas: tuple[float, ...]
    simplex_points: int | None
    reset: dict | None

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> SubspacesSpec:
        """Parse and check ``config``; nothing is written.

        Raises:
          ValueError: a bad ``config.arms``, ``num_alphas``, ``simplex_points`` or
            BatchNorm reset.
        """
        arms = _check_config(config)
        reset = common.batch_stats_reset(config)
        run = RunSpec.from_config(config, progress=progress)
        alphas = np.linspace(0.0, 1.0, config.num_alphas).astype(np.float32)
        return cls(run=run, arms=arms, alphas=tuple(float(a) for a in alphas),
                   simplex_points=config.get("simplex_points"),
                   reset=reset if models.has_batch_norm(run.executor.model) else None)


@common.study_entry
def run_subspaces(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Train every arm; write tables and a plot; resumable.

    Writes into ``workdir``: ``config.json``, ``metrics.jsonl``,
    ``results.csv`` (``variant, beta, alpha, replicate, test_accuracy,
    test_loss``: every arm along its path, ``independent`` for the pair of
    standard replicates ``r, r + 1``, ``standard`` with no alpha; their means
    and stds in ``summary.csv``), ``paths.csv`` (per arm and replicate: the
    endpoints', midpoint's and endpoint ensemble's test accuracy, the error
    barrier and the endpoints' cos^2; means and stds in ``paths_summary.csv``),
    ``plots/subspaces.png`` and ``checkpoints/``.

    Raises:
      ValueError: a bad ``config.arms``, ``num_alphas``, ``simplex_points`` or
        BatchNorm reset (:meth:`SubspacesSpec.from_config`; before any work).
    """
    study = SubspacesSpec.from_config(config, progress=progress)
    spec, alphas = study.run, np.asarray(study.alphas, np.float32)
    run = spec.open(workdir)
    executor, num = spec.executor, spec.num_replicates
    init_keys, noise_keys = spec.keys()
    evaluate = _PathEvaluator(executor, study.reset)

    def init_fn(key):
        return models.init(executor.model, key, spec.dataset.input_shape)[0]

    rows, summary = [], []
    for variant, beta in study.arms:
        if variant == "standard":
            done = run.segment("standard", state=executor.init(init_keys),
                               noise_keys=noise_keys, tags={"variant": "standard"},
                               desc=f"standard x{num}")
            r_rows, r_summary = evaluate.standard(done.state, done.curves.final_metrics("test"),
                                                  alphas)
        else:
            kind, layerwise = variant.removesuffix("_layerwise"), variant.endswith("_layerwise")
            arm_executor = executor.like(recipe=spec.recipe, reparam=subspaces.subspace_reparam(
                init_fn, kind=kind, layerwise=layerwise, beta=beta,
                num_points=study.simplex_points if kind == "simplex" else None))
            final = run.segment(_slug(variant, beta), state=arm_executor.init(init_keys),
                                noise_keys=noise_keys, tags={"variant": variant, "beta": beta},
                                executor=arm_executor, desc=f"{variant} beta={beta:g} x{num}").state
            r_rows, r_summary = evaluate.subspace(final, kind, alphas)
            r_rows = [{"variant": variant, "beta": beta, **r} for r in r_rows]
            r_summary = [{"variant": variant, "beta": beta, **r} for r in r_summary]
        rows += r_rows
        summary += r_summary
    fields = ("test_accuracy", "test_loss")
    rows = [{"variant": r["variant"], "beta": r.get("beta"), "alpha": r.get("alpha"),
             "replicate": r["replicate"], **{f: r[f] for f in fields}} for r in rows]
    results.write_table(run.workdir / "results.csv", rows, by=("variant", "beta", "alpha"),
                        fields=fields)
    path_fields = ("endpoint_0_accuracy", "midpoint_accuracy", "endpoint_1_accuracy",
                   "ensemble_accuracy", "error_barrier", "cos_squared")
    paths = [{"variant": r["variant"], "beta": r.get("beta"), "replicate": r["replicate"],
              **{f: r.get(f) for f in path_fields}} for r in summary]
    table = results.write_table(run.workdir / "paths.csv", paths, by=("variant", "beta"),
                                fields=path_fields)
    plots.plot_subspaces(rows, run.workdir / "plots" / "subspaces.png",
                         title=f"Subspaces, {spec.model_name} on "
                               f"{plots.dataset_label(spec.dataset.name)}: {num} replicates")
    return {**table, "num_replicates": num}


class _PathEvaluator:
    """Test metrics along paths of stacked nets (BatchNorm statistics recomputed if any)."""

    def __init__(self, executor: executor_lib.Executor, reset: dict | None):
        self.executor = executor
        self.reset = reset  # recomputed_batch_stats kwargs, or None: no BatchNorm
        self.labels = np.asarray(executor.dataset.test.y)

    def _stats(self, params: Any, like_stats: Any) -> Any:
        if self.reset is None:
            return like_stats
        return self.executor.recomputed_batch_stats(params, like_stats, **self.reset)

    def _stack_stats(self, batch_stats: Any, count: int) -> Any:
        one = tree.index(jax.device_get(batch_stats), 0)
        return tree.stack([one] * count)

    def metrics(self, params: Any, batch_stats: Any) -> dict[str, np.ndarray]:
        """Test loss and accuracy of stacked ``params`` (stats recomputed when there is BN)."""
        return self.executor.evaluate_params(params, self._stats(params, batch_stats), "test")

    def ensemble_accuracy(self, params_a: Any, params_b: Any, batch_stats: Any) -> np.ndarray:
        """Accuracy ``[S]`` of the summed logits of ``params_a[s]`` and ``params_b[s]``."""
        count = jax.tree.leaves(params_a)[0].shape[0]
        both = tree.concat([params_a, params_b])
        stats = self._stats(both, tree.concat([batch_stats, batch_stats]))
        logits = self.executor.predict_params(both, stats, "test")
        summed = logits[:count] + logits[count:]
        return (summed.argmax(-1) == self.labels[None]).mean(axis=1)

    def standard(self, final: Any, metrics: dict[str, np.ndarray],
                 alphas: np.ndarray) -> tuple[list[dict], list[dict]]:
        """The standard nets' rows (their test ``metrics``, the segment's last evaluation),
        and the independent pairs' paths."""
        num = metrics["accuracy"].shape[0]
        rows = [{"variant": "standard", "beta": None, "alpha": None, "replicate": r,
                 "test_accuracy": float(metrics["accuracy"][r]),
                 "test_loss": float(metrics["loss"][r])} for r in range(num)]
        summary = [{"variant": "standard", "beta": None, "replicate": r,
                    "midpoint_accuracy": float(metrics["accuracy"][r])} for r in range(num)]
        params = jax.device_get(final.params)
        for r in range(num - 1):
            a, b = tree.index(params, r), tree.index(params, r + 1)
            stats = self._stack_stats(final.batch_stats, len(alphas))
            path = self.metrics(interpolation.interpolate(jnp.asarray(alphas), a, b), stats)
            rows += [{"variant": "independent", "beta": None, "alpha": float(alpha),
                      "replicate": r, "test_accuracy": float(path["accuracy"][i]),
                      "test_loss": float(path["loss"][i])} for i, alpha in enumerate(alphas)]
            ensemble = self.ensemble_accuracy(tree.stack([a]), tree.stack([b]),
                                              self._stack_stats(final.batch_stats, 1))
            summary.append({"variant": "independent", "beta": None, "replicate": r,
                            **_path_summary(alphas, path["accuracy"]),
                            "ensemble_accuracy": float(ensemble[0]),
                            "cos_squared": float(subspaces.cos_squared(a, b))})
        return rows, summary

    def subspace(self, final: Any, kind: str, alphas: np.ndarray) -> tuple[list[dict], list[dict]]:
        """Rows along each member's path from ``point_0`` to ``point_1``, and its summary."""
        trainable = jax.device_get(final.params)
        num = jax.tree.leaves(trainable)[0].shape[0]
        names = sorted(trainable)
        path_alphas = alphas if kind != "simplex" else np.stack(
            [1.0 - alphas, alphas, *[np.zeros_like(alphas)] * (len(names) - 2)], axis=1)
        rows, summary = [], []
        stats = self._stack_stats(final.batch_stats, len(alphas))
        for r in range(num):
            one = tree.index(trainable, r)
            path = self.metrics(subspaces.point_params(one, path_alphas, kind=kind), stats)
            rows += [{"alpha": float(alpha), "replicate": r,
                      "test_accuracy": float(path["accuracy"][i]),
                      "test_loss": float(path["loss"][i])} for i, alpha in enumerate(alphas)]
            summary.append({"replicate": r, **_path_summary(alphas, path["accuracy"]),
                            "cos_squared": float(subspaces.cos_squared(one["point_0"],
                                                                       one["point_1"]))})
        ensemble = self.ensemble_accuracy(trainable["point_0"], trainable["point_1"],
                                          jax.device_get(final.batch_stats))
        for r in range(num):
            summary[r]["ensemble_accuracy"] = float(ensemble[r])
        return rows, summary


def _path_summary(alphas: np.ndarray, accuracy: np.ndarray) -> dict:
    mid = int(np.argmin(np.abs(alphas - 0.5)))
    barrier, _ = interpolation.error_barrier(alphas, 1.0 - np.asarray(accuracy, np.float64))
    return {"endpoint_0_accuracy": float(accuracy[0]), "midpoint_accuracy": float(accuracy[mid]),
            "endpoint_1_accuracy": float(accuracy[-1]), "error_barrier": float(barrier)}
