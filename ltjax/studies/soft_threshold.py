"""STR (soft threshold reparameterisation) over a grid of s_init x weight decay, with baselines.

Kusupati et al. 2020 ("Soft Threshold Weight Reparameterization for Learnable
Sparsity", ICML 2020): every prunable layer trains ``W`` and one threshold
``s_l``; the net runs on ``sign(W) * relu(|W| - sigmoid(s_l))``
(:mod:`ltjax.methods.soft_threshold`), and the weight decay on ``s`` drives the
sparsity. For each ``s_init`` (its own program: the reparameterisation is the
program's) the weight decays x replicates are members with their own decay
(the thresholds decay with the member's, as the reference's ``st_decay``
defaulting to ``wd``). Baselines, from the same initialisations and data
orders: the dense net (``recipe.weight_decay``), and one-shot global magnitude
pruning of the trained dense net to each STR member's learned sparsity,
retrained with the recipe (fine-tuning from the pruned trained weights, the
paper's "prune + retrain" comparison), all as members of one program.

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import str_lenet_digits
    summary = run_soft_threshold(str_lenet_digits.get_config("quick"), "/tmp/str")
    summary["num_replicates"]        # 2
    summary["rows"]                  # means per (method, s_init, weight_decay): sparsity, ...
    ```

    The same run from a shell: ``python -m experiments.str
    --config=experiments/configs/str_lenet_digits.py:quick --workdir=/tmp/str``.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import masking, pruning, tree
from ltjax.engine import optim
from ltjax.io import results
from ltjax.methods import soft_threshold
from ltjax.studies import common, plots
from ltjax.studies.spec import RunSpec


def _check_config(config: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        s_inits = tuple(float(s) for s in config.s_inits)
        decays = tuple(float(w) for w in config.weight_decays)
    except (TypeError, ValueError):
        raise ValueError(f"config.s_inits and config.weight_decays must be numbers, got "
                         f"{config.s_inits!r} and {config.weight_decays!r}") from None
    if not s_inits or any(not math.isfinite(s) for s in s_inits):
        raise ValueError(f"config.s_inits must be finite numbers, got {config.s_inits!r}")
    if not decays or any(not (math.isfinite(w) and w >= 0) for w in decays):
        raise ValueError(f"config.weight_decays must be numbers >= 0, got "
                         f"{config.weight_decays!r}")
    if len(set(s_inits)) != len(s_inits) or len(set(decays)) != len(decays):
        raise ValueError("config.s_inits and config.weight_decays must not repeat values")
    return s_inits, decays


@dataclasses.dataclass(frozen=True)
class SoftThresholdSpec:
    """An STR study, parsed and checked once at its entry (Kusupati et al. 2020).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`).
      s_inits: the thresholds' initial values, one program each.
      weight_decays: the members' weight decays (the thresholds' too).
      oneshot_baseline: also prune the dense nets one-shot to each STR member's
        sparsity and retrain them.
      scope: how that baseline ranks magnitudes (:data:`ltjax.core.pruning.SCOPES`).
      prunable: the leaves with a threshold, and pruned by the baseline (the
        model's default selection).

    Example:
        The spec of the digits quick config, before any workdir exists:

        >>> from experiments.configs import str_lenet_digits
        >>> from ltjax.studies.soft_threshold import SoftThresholdSpec
        >>> spec = SoftThresholdSpec.from_config(str_lenet_digits.get_config("quick"),
        ...                                      progress=False)
        >>> spec.s_inits, spec.weight_decays, spec.oneshot_baseline, spec.scope
        ((-5.0,), (0.0001, 0.005), True, 'global')
    """

    run: RunSpec
    s_inits: tuple[float, ...]
    weight_decays: tuple[float, ...]
    oneshot_baseline: bool
    scope: str
    prunable: Any

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> SoftThresholdSpec:
        """Parse and check ``config``; nothing is written.

        Raises:
          ValueError: empty or non-finite ``s_inits``, negative ``weight_decays``,
            repeated values, or (with the one-shot baseline) an unknown ``scope``.
        """
        s_inits, decays = _check_config(config)
        run = RunSpec.from_config(config, progress=progress)
        scope, oneshot = config.scope, bool(config.get("oneshot_baseline", True))
        if oneshot and scope not in pruning.SCOPES:
            raise ValueError(f"config.scope must be one of {pruning.SCOPES}, got {scope!r}")
        return cls(run=run, s_inits=s_inits, weight_decays=decays, oneshot_baseline=oneshot,
                   scope=scope, prunable=masking.prunable(run.executor.abstract_params))


@common.study_entry
def run_soft_threshold(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Train STR on the grid and the baselines; write tables and a plot; resumable.

    Writes into ``workdir``: ``config.json``, ``metrics.jsonl``, ``results.csv``
    (``method`` in str / oneshot / dense, ``s_init``, ``weight_decay``,
    ``replicate``, ``sparsity``, ``test_accuracy``, ``test_loss``; mean and std
    rows), ``layer_densities.csv`` (STR's learned per-layer densities),
    ``plots/str.png`` and ``checkpoints/``.

    Raises:
      ValueError: empty or non-finite ``s_inits``, negative ``weight_decays``, an
        unknown ``scope`` (:meth:`SoftThresholdSpec.from_config`; before any work).
    """
    study = SoftThresholdSpec.from_config(config, progress=progress)
    spec, selection = study.run, study.prunable
    run = spec.open(workdir)
    executor, recipe, num = spec.executor, spec.recipe, spec.num_replicates
    init_keys, noise_keys = spec.keys()
    rows: list[dict] = []

    dense = run.segment("dense", state=executor.init(init_keys), noise_keys=noise_keys,
                        tags={"method": "dense"}, desc=f"dense x{num}")
    test = {k: v.tolist() for k, v in dense.curves.final_metrics("test").items()}
    rows += [{"method": "dense", "s_init": None, "weight_decay": recipe.weight_decay,
              "replicate": r, "sparsity": 0.0, "test_accuracy": test["accuracy"][r],
              "test_loss": test["loss"][r]} for r in range(num)]

    grid = [(w, r) for w in study.weight_decays for r in range(num)]
    replicate_of = np.array([r for _, r in grid])
    layer_rows, str_members = [], []
    for i, s_init in enumerate(study.s_inits):
        str_executor = executor.like(
            recipe=recipe, reparam=soft_threshold.str_reparam(selection, s_init=s_init))
        tags = [{"s_init": s_init, "weight_decay": w, "replicate": r} for w, r in grid]
        trained = run.segment(
            f"str_{i:02d}", state=str_executor.init(init_keys[replicate_of]),
            noise_keys=noise_keys[replicate_of], tags={"method": "str"}, member_tags=tags,
            hparams=optim.member_hparams(recipe, len(grid), weight_decay=[w for w, _ in grid]),
            executor=str_executor, desc=f"STR s_init={s_init:g}: {len(grid)} members")
        final = trained.state
        test = {k: v.tolist() for k, v in trained.curves.final_metrics("test").items()}
        trainable = jax.device_get(final.params)
        for m, tag in enumerate(tags):
            one = tree.index(trainable, m)
            sparsity = soft_threshold.learned_sparsity(one, selection)
            rows.append({"method": "str", **tag, "sparsity": sparsity,
                         "test_accuracy": test["accuracy"][m], "test_loss": test["loss"][m]})
            str_members.append((tag, sparsity))
            layer_rows += [{**tag, "layer": name, "layer_density": density} for name, density
                           in soft_threshold.learned_densities(one, selection).items()]

    if study.oneshot_baseline:
        rows += _oneshot_baseline(run, dense.state, str_members, selection, noise_keys,
                                  study.scope)
    table = results.write_table(run.workdir / "results.csv", rows,
                                by=("method", "s_init", "weight_decay"),
                                fields=("sparsity", "test_accuracy", "test_loss"))
    results.write_csv(run.workdir / "layer_densities.csv", layer_rows)
    plots.plot_str(rows, run.workdir / "plots" / "str.png",
                   title=f"STR, {spec.model_name} on {plots.dataset_label(spec.dataset.name)}: "
                         f"{num} replicates")
    return {**table, "num_replicates": num}


def _oneshot_baseline(run, dense, str_members, selection, noise_keys, scope) -> list[dict]:
    """Magnitude-prune the trained dense net to each STR member's sparsity; retrain; rows."""
    executor = run.spec.executor
    dense_params = jax.device_get(dense.params)
    member_masks, tags = [], []
    for tag, sparsity in str_members:
        one = tree.index(dense_params, tag["replicate"])
        density = max(1.0 - sparsity, 1e-6)
        member_masks.append(pruning.prune_to_density(pruning.magnitude_scores(one), selection,
                                                     density=density, scope=scope))
        tags.append(tag)
    masks = executor.shard(tree.stack(member_masks))
    replicate_of = np.array([t["replicate"] for t in tags])
    start = jax.tree.map(lambda x: x[replicate_of], dense)
    params = masking.apply(executor.shard(start.params), masks)
    state = executor.shard(start.replace(step=jnp.zeros(len(tags), jnp.int32), params=params,
                                         opt_state=executor.fresh_opt_state(params)))
    kept = np.asarray(jax.vmap(lambda m: masking.density(m, selection))(masks))
    retrained = run.segment("oneshot", state=state, masks=masks,
                            noise_keys=noise_keys[replicate_of], tags={"method": "oneshot"},
                            member_tags=tags, densities=kept,
                            desc=f"one-shot + retrain: {len(tags)} members")
    metrics = retrained.curves.final_metrics("test")
    return [{"method": "oneshot", **tag, "sparsity": float(1.0 - kept[m]),
             "test_accuracy": float(metrics["accuracy"][m]),
             "test_loss": float(metrics["loss"][m])} for m, tag in enumerate(tags)]
