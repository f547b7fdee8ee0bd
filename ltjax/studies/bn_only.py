"""Training BatchNorm and only BatchNorm, against its controls, S replicates per arm.

Frankle, Schwab & Morcos 2021 ("Training BatchNorm and Only BatchNorm", ICLR
2021). Arms (``config.arms``), each one program (its reparameterisation is the
program's) with the replicates as members, all from the same initialisations
and data orders:

================== ============================================================
``full``           every parameter trains
``batchnorm``      only BatchNorm's gamma and beta (:func:`batchnorm_only.batchnorm_only`)
``batchnorm_output`` gamma, beta and the output layer
``output``         only the output layer
``random``         random non-BatchNorm entries, as many as ``batchnorm`` trains,
                   BatchNorm frozen; drawn by the rule ``config.random_control``:
                   ``'per_channel'`` (default, the paper's rule): 2 random kernel
                   entries of every output channel of each layer but the output
                   one (:func:`ltjax.methods.batchnorm_only.random_per_channel`);
                   ``'global'``: uniformly over all non-BatchNorm entries
                   (:func:`ltjax.methods.batchnorm_only.random_subset`)
================== ============================================================

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import bn_only_mlp_digits
    summary = run_bn_only(bn_only_mlp_digits.get_config("quick"), "/tmp/bn")
    sorted(summary)                  # ['num_replicates', 'rows', 'std']
    summary["num_replicates"]        # 2
    [r["arm"] for r in summary["rows"]]   # one mean row of results.csv per arm
    ```

    The same run from a shell: ``python -m experiments.bn_only
    --config=experiments/configs/bn_only_mlp_digits.py:quick --workdir=/tmp/bn``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any

import jax
import numpy as np

from ltjax.engine import reparam as reparam_lib
from ltjax.io import results
from ltjax.methods import batchnorm_only
from ltjax.studies import common, plots
from ltjax.studies.spec import RunSpec

ARMS = ("full", "batchnorm", "batchnorm_output", "output", "random")
THRESHOLDS = (0.01, 0.05)
#: Random entries per output channel in the ``'per_channel'`` control: BatchNorm's gamma and beta.
PER_CHANNEL = 2


def random_control(config: Any) -> str:
    """``config.random_control`` (default ``'per_channel'``), checked.

    Raises:
      ValueError: not one of :data:`ltjax.methods.batchnorm_only.RANDOM_CONTROLS`.

    Example:
        >>> import ml_collections
        >>> from ltjax.studies import bn_only
        >>> bn_only.random_control(ml_collections.ConfigDict({"random_control": "global"}))
        'global'
        >>> bn_only.random_control(ml_collections.ConfigDict())
        'per_channel'
    """
    rule = config.get("random_control", "per_channel")
    if rule not in batchnorm_only.RANDOM_CONTROLS:
        raise ValueError(f"config.random_control must be one of "
                         f"{batchnorm_only.RANDOM_CONTROLS}, got {rule!r}")
    return rule


def arm_reparams(params: Any, *, random_control: str) -> dict[str, reparam_lib.Reparam]:
    """Each arm's reparameterisation for a model whose params look like ``params``.

    The ``random`` arm follows ``random_control`` (the rule :func:`random_control`
    reads); its per-channel draw leaves out the output layer (no BatchNorm follows
    it), so it trains exactly as many entries as ``batchnorm`` on ``mlp_bn`` and the
    ResNets.

    Raises:
      ValueError: ``random_control`` not one of
        :data:`ltjax.methods.batchnorm_only.RANDOM_CONTROLS`.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.studies import bn_only
        >>> model = models.create("mlp_bn", widths=(8,), num_classes=3)
        >>> params = jax.eval_shape(lambda k: models.init(model, k, (4,))[0], jax.random.key(0))
        >>> reparams = bn_only.arm_reparams(params, random_control="per_channel")
        >>> sorted(reparams), reparams["random"].name
        (['batchnorm', 'batchnorm_output', 'full', 'output', 'random'], 'random_per_channel(2)')
    """
    if random_control not in batchnorm_only.RANDOM_CONTROLS:
        raise ValueError(f"random_control must be one of {batchnorm_only.RANDOM_CONTROLS}, "
                         f"got {random_control!r}")
    output = batchnorm_only.output_layer(params)
    if random_control == "per_channel":
        random = batchnorm_only.random_per_channel(
            PER_CHANNEL, exclude=f"{batchnorm_only.BATCHNORM_PATTERN}|^{re.escape(output)}/")
    else:
        random = batchnorm_only.random_subset(
            batchnorm_only.trainable_count(batchnorm_only.batchnorm_only(), params))
    return {"full": reparam_lib.identity(),
            "batchnorm": batchnorm_only.batchnorm_only(),
            "batchnorm_output": batchnorm_only.batchnorm_only(output=output),
            "output": batchnorm_only.output_only(output),
            "random": random}


@dataclasses.dataclass(frozen=True)
class BnOnlySpec:
    """A BatchNorm-only study, parsed and checked once at its entry (Frankle et al. 2021).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`; the model has
        BatchNorm).
      arms: the arms trained, in order (:data:`ARMS`).
      random_control: how the ``random`` arm draws its entries (:func:`random_control`).
      reparams: every arm's reparameterisation for the model (:func:`arm_reparams`).

    Example:
        The spec of the digits quick config, before any workdir exists:

        >>> from experiments.configs import bn_only_mlp_digits
        >>> from ltjax.studies.bn_only import BnOnlySpec
        >>> spec = BnOnlySpec.from_config(bn_only_mlp_digits.get_config("quick"), progress=False)
        >>> spec.arms
        ('full', 'batchnorm', 'batchnorm_output', 'output', 'random')
        >>> spec.random_control, spec.reparams["random"].name
        ('per_channel', 'random_per_channel(2)')
    """

    run: RunSpec
    arms: tuple[str, ...]
    random_control: str
    reparams: dict[str, reparam_lib.Reparam]

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> BnOnlySpec:
        """Parse and check ``config``; nothing is written.

        Raises:
          ValueError: unknown or no arms, an unknown ``random_control``, a model without
            BatchNorm (naming the field).
        """
        arms = common.names_of(config.arms, field="arms", allowed=ARMS)
        if not arms:
            raise ValueError("config.arms must name at least one arm")
        rule = random_control(config)

        run = RunSpec.from_config(config, progress=progress)
        run.require_batch_norm()
        return cls(run=run, arms=arms, random_control=rule, reparams=arm_reparams(
            run.executor.abstract_params, random_control=rule))


@common.study_entry
def run_bn_only(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Train every arm; write ``results.csv`` and ``plots/gamma.png``; resumable.

    ``results.csv``: ``arm, replicate, trainable_params, test_accuracy, test_loss,
    share_gamma_below_0.01, share_gamma_below_0.05`` (mean and std rows too).

    Raises:
      ValueError: unknown arms or ``random_control``, or a model without
        BatchNorm (before any work).
    """
    spec = BnOnlySpec.from_config(config, progress=progress)
    run = spec.run.open(workdir)
    executor, num = spec.run.executor, spec.run.num_replicates
    init_keys, noise_keys = spec.run.keys()
    params = executor.abstract_params
    rows, gammas = [], {}
    for arm in spec.arms:
        arm_executor = executor.like(recipe=spec.run.recipe, reparam=spec.reparams[arm])
        start = arm_executor.init(init_keys)
        if arm == "random":  # each member's count of chosen entries
            trainable = [int(sum(np.sum(np.asarray(c[r])) for c in
                                 jax.tree.leaves(start.frozen["chosen"]))) for r in range(num)]
        else:
            trainable = [batchnorm_only.trainable_count(spec.reparams[arm], params)] * num
        done = run.segment(arm, state=start, noise_keys=noise_keys,
                           tags={"arm": arm}, executor=arm_executor, desc=f"{arm} x{num}")
        final = done.state  # its last evaluation is the table's (not evaluated again)
        test = {k: v.tolist() for k, v in done.curves.final_metrics("test").items()}
        trained = arm_executor.model_params(final)
        shares = {t: np.asarray(jax.vmap(
            lambda p, t=t: batchnorm_only.gamma_share_below(p, t))(trained)) for t in THRESHOLDS}
        gammas[arm] = np.concatenate([np.abs(np.asarray(g)).reshape(-1)
                                      for g in batchnorm_only.gammas(trained)])
        rows += [{"arm": arm, "replicate": r, "trainable_params": trainable[r],
                  "test_accuracy": test["accuracy"][r], "test_loss": test["loss"][r],
                  **{f"share_gamma_below_{t}": float(shares[t][r]) for t in THRESHOLDS}}
                 for r in range(num)]
    table = results.write_table(run.workdir / "results.csv", rows, by=("arm",), fields=(
        "trainable_params", "test_accuracy", "test_loss",
        *(f"share_gamma_below_{t}" for t in THRESHOLDS)))
    plots.plot_gamma_histograms(gammas, run.workdir / "plots" / "gamma.png",
                                title=f"|gamma| after training, {spec.run.model_name} on "
                                      f"{plots.dataset_label(spec.run.dataset.name)}")
    return {**table, "num_replicates": num}
