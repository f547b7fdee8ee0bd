"""Supermasks: edge-popup over a grid of density x weight init, and Zhou et al.'s masks.

Ramanujan et al. 2020 ("What's Hidden in a Randomly Weighted Neural
Network?", :mod:`ltjax.methods.supermasks`): the weights stay at their random init,
the scores learn which ``ceil(density * n)`` weights of each layer to keep.
Every density x weight init (``signed_constant``, ``kaiming_normal``) x
replicate is a member of one program: the members' frozen trees carry their
own weights and kept counts, both inits of a replicate come from the same
random init (the signed constant takes its signs) and the same scores, and
train on the same data order.

:func:`run_zhou` evaluates Zhou et al. 2019's untrained supermasks (mask
criteria from an IMP run's init and trained weights, applied to the init);
:func:`run_learned` trains Zhou et al.'s learned Bernoulli supermask
(``config.method='bernoulli'``) or DNW (``'dnw'``, Wortsman et al. 2019).

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import supermask_lenet_digits
    summary = run_supermask(supermask_lenet_digits.get_config("quick"), "/tmp/sm")
    summary["num_replicates"]        # 2
    summary["rows"]                  # results.csv's means per (method, density, weight_init)
    ```

    The same run from a shell: ``python -m experiments.supermask
    --config=experiments/configs/supermask_lenet_digits.py:quick --workdir=/tmp/sm``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np

from ltjax.core import masking, tree
from ltjax.io import checkpoint, results
from ltjax.methods import supermasks
from ltjax.studies import common, imp_runs, plots
from ltjax.studies.spec import RunSpec


def _check_densities(config: Any) -> tuple[float, ...]:
    try:
        densities = tuple(float(d) for d in config.densities)
    except (TypeError, ValueError):
        raise ValueError(f"config.densities must be numbers, got {config.densities!r}") from None
    if not densities or any(not 0.0 < d <= 1.0 for d in densities):
        raise ValueError(f"config.densities must be kept shares in (0, 1], got "
                         f"{config.densities!r}")
    if len(set(densities)) != len(densities):
        raise ValueError(f"config.densities repeats a value: {config.densities!r}")
    return densities


def _check_config(config: Any) -> tuple[tuple[float, ...], tuple[str, ...]]:
    densities = _check_densities(config)
    inits = common.names_of(config.weight_inits, field="weight_inits",
                            allowed=supermasks.WEIGHT_INITS)
    if not inits:
        raise ValueError("config.weight_inits must name at least one weight init")
    return densities, inits


@dataclasses.dataclass(frozen=True)
class EdgePopupSpec:
    """An edge-popup study, parsed and checked once at its entry (Ramanujan et al. 2020).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`).
      densities: the kept shares of each layer, distinct, in (0, 1].
      weight_inits: the frozen weights' inits (:data:`ltjax.methods.supermasks.WEIGHT_INITS`).
      prunable: the leaves the scores select from (the model's prunable kernels).

    Example:
        The spec of the digits config, before any workdir exists:

        >>> from experiments.configs import supermask_lenet_digits
        >>> from ltjax.studies.supermask import EdgePopupSpec
        >>> spec = EdgePopupSpec.from_config(supermask_lenet_digits.get_config("quick"),
        ...                                  progress=False)
        >>> spec.densities, spec.weight_inits
        ((0.1, 0.5), ('signed_constant', 'kaiming_normal'))
    """

    run: RunSpec
    densities: tuple[float, ...]
    weight_inits: tuple[str, ...]
    prunable: Any

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> EdgePopupSpec:
        """Parse and check ``config``; nothing is written.

        Raises:
          ValueError: densities outside (0, 1] or repeated, unknown or no weight inits.
        """
        densities, inits = _check_config(config)
        run = RunSpec.from_config(config, progress=progress)
        return cls(run=run, densities=densities, weight_inits=inits,
                   prunable=masking.prunable(run.executor.abstract_params))


@common.study_entry
def run_supermask(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Train edge-popup on the grid; write ``results.csv`` and a plot; resumable.

    ``results.csv``: ``method, density, weight_init, replicate, test_accuracy,
    test_loss`` (mean and std rows too); ``plots/supermask.png``: accuracy vs
    density per weight init.

    Raises:
      ValueError: densities outside (0, 1], unknown weight inits (before any work).
    """
    edge_popup = EdgePopupSpec.from_config(config, progress=progress)
    spec, selection = edge_popup.run, edge_popup.prunable
    run = spec.open(workdir)
    workdir, num = run.workdir, spec.num_replicates
    executor = spec.executor.like(
        reparam=supermasks.edge_popup(selection, weight_init="kaiming_normal"))
    init_keys, noise_keys = spec.keys()
    grid = [(i, d, r) for i in edge_popup.weight_inits for d in edge_popup.densities
            for r in range(num)]
    replicate_of = np.array([r for _, _, r in grid])

    # Each member's weight init (its init or their signed constant) and kept counts.
    args = tree.stack([supermasks.edge_popup_args(spec.executor.abstract_params, selection,
                                                  density=d, weight_init=i)
                       for i, d, _ in grid])

    def start() -> Any:
        return executor.init(init_keys[replicate_of], reparam_args=args)

    tags = [{"density": d, "weight_init": i, "replicate": r} for i, d, r in grid]
    final = run.segment("edge_popup", state=start, noise_keys=noise_keys[replicate_of],
                        tags={"method": "edge_popup"}, member_tags=common.member_tags_of(tags),
                        densities=np.array([d for _, d, _ in grid]), executor=executor,
                        desc=f"edge-popup: {len(grid)} members")
    metrics, final = final.curves.final_metrics("test"), final.state
    rows = [{"method": "edge_popup", **tag, "test_accuracy": float(metrics["accuracy"][m]),
             "test_loss": float(metrics["loss"][m])} for m, tag in enumerate(tags)]
    table = results.write_table(workdir / "results.csv", rows,
                                by=("method", "density", "weight_init"),
                                fields=("test_accuracy", "test_loss"))
    plots.plot_supermask(rows, workdir / "plots" / "supermask.png", by=("density", "weight_init"),
                         title=f"Edge-popup, {spec.model_name} on "
                               f"{plots.dataset_label(spec.dataset.name)}: {num} replicates")
    return {**table, "num_replicates": num}


@dataclasses.dataclass(frozen=True)
class ZhouSpec:
    """A study of Zhou et al. 2019's untrained supermasks, parsed and checked once at its entry.

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`).
      criteria: the mask criteria (:data:`ltjax.methods.supermasks.MASK_CRITERIA`).
      densities: the kept shares of each layer, distinct, in (0, 1].
      weight_inits: the kept weights' values, ``'init'`` or ``'signed_constant'``.
      imp_workdir: the IMP run whose level 0 gives the trained weights.
      level_dir: its level 0's checkpoints (checked: they hold the replicates 0..S-1).
      level_step: the step of level 0's newest checkpoint (the trained weights).
      prunable: the masked leaves (the model's prunable kernels).

    Example:
        Not run here (it needs a finished IMP run):

        ```python
        spec = ZhouSpec.from_config(config, progress=False)  # config.imp_workdir: an IMP run
        spec.criteria, spec.densities, spec.level_dir
        ```
    """

    run: RunSpec
    criteria: tuple[str, ...]
    densities: tuple[float, ...]
    weight_inits: tuple[str, ...]
    imp_workdir: str
    level_dir: pathlib.Path
    level_step: int
    prunable: Any

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> ZhouSpec:
        """Parse and check ``config`` and the IMP run it names; nothing is written.

        Raises:
          ValueError: unknown or no criteria, densities outside (0, 1], no or an
            incompatible ``imp_workdir``, or one whose level 0 holds other members.
        """
        densities = _check_densities(config)
        criteria = common.names_of(config.criteria, field="criteria",
                                   allowed=tuple(supermasks.MASK_CRITERIA))
        if not criteria:
            raise ValueError("config.criteria must name at least one criterion")
        kept_values = common.names_of(config.get("weight_inits", ("init",)),
                                      field="weight_inits", allowed=("init", "signed_constant"))
        imp_workdir = config.get("imp_workdir") or ""
        level_dir = pathlib.Path(imp_workdir) / "checkpoints" / "level_00"

        def check(dataset) -> None:
            if not imp_workdir:
                raise ValueError("config.imp_workdir must name an IMP run (its level 0 gives "
                                 "the trained weights)")
            imp_runs.check_imp_compatible(config, imp_workdir)
            if not level_dir.is_dir():
                raise ValueError(f"config.imp_workdir={imp_workdir!r} has no finished level 0")

        run = RunSpec.from_config(config, check=check, progress=progress)
        with checkpoint.Checkpointer(level_dir) as ckpt:  # its meta only: nothing trains
            if not ckpt.steps():
                raise ValueError(f"config.imp_workdir={imp_workdir!r} has no finished level 0 "
                                 f"(no checkpoint in {level_dir})")
            level_step = ckpt.steps()[-1]
            _, _, meta = ckpt.restore(level_step, like_state=None)
        order = [m["replicate"] for m in meta["members"]]
        if order != list(range(run.num_replicates)):
            raise ValueError(f"level 0 of {imp_workdir!r} holds members {meta['members']}, "
                             f"expected the replicates 0..{run.num_replicates - 1}")
        return cls(run=run, criteria=criteria, densities=densities, weight_inits=kept_values,
                   imp_workdir=imp_workdir, level_dir=level_dir, level_step=level_step,
                   prunable=masking.prunable(run.executor.abstract_params))


@common.study_entry
def run_zhou(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Zhou et al. 2019's untrained supermasks from an IMP run's init and trained weights.

    For each criterion of ``config.criteria`` (:data:`ltjax.methods.supermasks.MASK_CRITERIA`)
    and density of ``config.densities``, the masks of
    :func:`ltjax.methods.supermasks.criterion_masks` from replicate r's init and its
    trained dense weights (level 0 of ``config.imp_workdir``, an IMP run of the
    same seed, model and data) are applied to the *init*, and the network is
    evaluated without any training. The kept weights (``config.weight_inits``)
    are the init's values (``'init'``) or Zhou's signed constant
    (``'signed_constant'``: ``sign(w) * std(layer)`` of the init,
    :func:`ltjax.methods.supermasks.signed_std_constant`, as the reference's
    ``get_init_loss_train_lottery.py --exp signed_constant``, ``np.std`` of
    each layer's initial weights; not edge-popup's ``sqrt(2 / fan_in)``).
    Also evaluated: the untrained dense init and the trained dense net.
    ``results.csv``: ``method, criterion, density, weight_init, replicate,
    test_accuracy, test_loss`` (mean and std rows); ``plots/supermask.png``.

    Raises:
      ValueError: see :meth:`ZhouSpec.from_config` (before any work).
    """
    zhou = ZhouSpec.from_config(config, progress=progress)
    spec, criteria, densities, kept_values = (zhou.run, zhou.criteria, zhou.densities,
                                              zhou.weight_inits)
    selection = zhou.prunable
    workdir = spec.open(workdir).workdir
    executor, num = spec.executor, spec.num_replicates
    init_keys, _ = spec.keys()
    start = executor.init(init_keys)
    with checkpoint.Checkpointer(zhou.level_dir) as ckpt:
        final, _, _ = ckpt.restore(zhou.level_step, like_state=start)
    init, trained = jax.device_get(start.params), jax.device_get(final.params)
    grid = [(c, d, w, r) for c in criteria for d in densities for w in kept_values
            for r in range(num)]
    nets = []
    for c, d, w, r in grid:
        start_r = tree.index(init, r)
        values = (supermasks.signed_std_constant(start_r, selection)
                  if w == "signed_constant" else start_r)
        nets.append(masking.apply(values, supermasks.criterion_masks(
            c, start_r, tree.index(trained, r), selection, density=d)))
    stats = jax.device_get(start.batch_stats)
    metrics = executor.evaluate_params(tree.stack(nets), tree.index(stats, np.array(
        [r for *_, r in grid])), "test")
    baseline = {name: executor.evaluate_params(params, stats, "test")
                for name, params in (("init", init), ("trained", trained))}
    rows = [{"method": "zhou", "criterion": c, "density": d, "weight_init": w,
             "replicate": r, "test_accuracy": float(metrics["accuracy"][m]),
             "test_loss": float(metrics["loss"][m])} for m, (c, d, w, r) in enumerate(grid)]
    rows += [{"method": f"dense_{name}", "criterion": None, "density": 1.0,
              "weight_init": name, "replicate": r,
              "test_accuracy": float(baseline[name]["accuracy"][r]),
              "test_loss": float(baseline[name]["loss"][r])}
             for name in ("init", "trained") for r in range(num)]
    table = results.write_table(workdir / "results.csv", rows,
                                by=("method", "criterion", "density", "weight_init"),
                                fields=("test_accuracy", "test_loss"))
    plots.plot_supermask([{**r, "weight_init": f"{r['criterion']}, {r['weight_init']}"}
                          for r in rows if r["method"] == "zhou"],
                         workdir / "plots" / "supermask.png", by=("density", "weight_init"),
                         dense=float(np.mean(baseline["trained"]["accuracy"])),
                         title=f"Zhou et al. supermasks (untrained), {spec.model_name} on "
                               f"{plots.dataset_label(spec.dataset.name)}: {num} replicates")
    return {**table, "num_replicates": num}


#: The weight inits of :func:`run_learned`'s Bernoulli supermask.
BERNOULLI_WEIGHT_INITS = ("init", "signed_constant")


@dataclasses.dataclass(frozen=True)
class LearnedSpec:
    """A learned-supermask study (Zhou et al.'s Bernoulli or DNW), parsed and checked once.

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`).
      method: ``'bernoulli'`` (the default) or ``'dnw'``.
      members: each member's ``(weight init, density)`` but its replicate: DNW's
        ``('dnw', density)`` per density of ``config.densities``, the Bernoulli mask's
        ``(weight init, init_prob)`` per weight init of ``config.bernoulli_weight_inits``.
      prunable: the masked leaves (the model's prunable kernels).
      reparam: the members' reparameterisation (:func:`ltjax.methods.supermasks.dnw` or
        :func:`ltjax.methods.supermasks.bernoulli_supermask` with ``init_prob`` and
        ``dynamic_scaling``).

    Example:
        The spec of the digits config's DNW, before any workdir exists:

        >>> from experiments.configs import supermask_lenet_digits
        >>> from ltjax.studies.supermask import LearnedSpec
        >>> config = supermask_lenet_digits.get_config("quick")
        >>> config.method = "dnw"
        >>> spec = LearnedSpec.from_config(config, progress=False)
        >>> spec.method, spec.members
        ('dnw', (('dnw', 0.1), ('dnw', 0.5)))
    """

    run: RunSpec
    method: str
    members: tuple[tuple[str, float], ...]
    prunable: Any
    reparam: Any

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> LearnedSpec:
        """Parse and check ``config``; nothing is written.

        Raises:
          ValueError: unknown or no weight inits, densities outside (0, 1],
            ``init_prob`` outside (0, 1).
        """
        method = config.get("method", "bernoulli")
        if method == "dnw":
            densities = _check_densities(config)
            members = tuple(("dnw", d) for d in densities)
        else:
            inits = common.names_of(config.get("bernoulli_weight_inits", BERNOULLI_WEIGHT_INITS),
                                    field="bernoulli_weight_inits",
                                    allowed=BERNOULLI_WEIGHT_INITS)
            if not inits:
                raise ValueError("config.bernoulli_weight_inits must name at least one weight "
                                 "init")
            init_prob = config.get("init_prob", 0.5)
            members = tuple((i, init_prob) for i in inits)
        run = RunSpec.from_config(config, progress=progress)
        selection = masking.prunable(run.executor.abstract_params)
        if method == "dnw":
            reparam = supermasks.dnw(selection)
        else:
            reparam = supermasks.bernoulli_supermask(
                selection, init_prob=init_prob,
                dynamic_scaling=config.get("dynamic_scaling", False))
        return cls(run=run, method=method, members=members, prunable=selection,
                   reparam=reparam)


@common.study_entry
def run_learned(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Zhou et al.'s learned Bernoulli supermask or DNW, as ``config.method`` says.

    ``'bernoulli'`` (:func:`ltjax.methods.supermasks.bernoulli_supermask`): one member
    per weight init of ``config.get('bernoulli_weight_inits', ('init',
    'signed_constant'))`` x replicate, logits starting at
    ``config.get('init_prob', 0.5)``, ``config.get('dynamic_scaling', False)``;
    the row's ``density`` is the kept share of the member's evaluation mask.
    ``'dnw'`` (:func:`ltjax.methods.supermasks.dnw`): one member per density of
    ``config.densities`` x replicate, ``weight_init`` ``'dnw'``. Members of a
    replicate share its init and data order. ``results.csv``: ``method,
    density, weight_init, replicate, test_accuracy, test_loss`` (mean and std
    rows); ``plots/supermask.png``. Resumable.

    Raises:
      ValueError: see :meth:`LearnedSpec.from_config` (before any work).
    """
    learned = LearnedSpec.from_config(config, progress=progress)
    spec, method, members, selection = (learned.run, learned.method, learned.members,
                                        learned.prunable)
    run = spec.open(workdir)
    workdir, num = run.workdir, spec.num_replicates
    executor = spec.executor.like(reparam=learned.reparam)
    init_keys, noise_keys = spec.keys()
    grid = [(w, d, r) for w, d in members for r in range(num)]
    replicate_of = np.array([r for *_, r in grid])

    # Each member's DNW density, or the Bernoulli mask's weight init.
    args = tree.stack([
        supermasks.dnw_args(spec.executor.abstract_params, selection, density=density)
        if method == "dnw" else
        supermasks.bernoulli_args(signed_constant=weight_init == "signed_constant")
        for weight_init, density, _ in grid])

    def start() -> Any:
        return executor.init(init_keys[replicate_of], reparam_args=args)

    tags = [{"density": d, "weight_init": w, "replicate": r} for w, d, r in grid]
    final = run.segment(method, state=start, noise_keys=noise_keys[replicate_of],
                        tags={"method": method}, member_tags=common.member_tags_of(tags),
                        densities=np.array([d for _, d, _ in grid]), executor=executor,
                        desc=f"{method}: {len(grid)} members")
    metrics, final = final.curves.final_metrics("test"), final.state
    if method == "bernoulli":  # the kept share of each member's evaluation mask
        host = jax.device_get(final)
        tags = [{**tag, "density": float(masking.density(supermasks.bernoulli_masks(
            tree.index(host.params, m), tree.index(host.frozen, m), selection), selection))}
            for m, tag in enumerate(tags)]
    rows = [{"method": method, **tag, "test_accuracy": float(metrics["accuracy"][m]),
             "test_loss": float(metrics["loss"][m])} for m, tag in enumerate(tags)]
    by = ("method", "density", "weight_init") if method == "dnw" else ("method", "weight_init")
    table = results.write_table(workdir / "results.csv", rows, by=by, fields=(
        "test_accuracy", "test_loss") + (() if method == "dnw" else ("density",)))
    name = "DNW" if method == "dnw" else "Learned Bernoulli supermask"
    plots.plot_supermask(rows, workdir / "plots" / "supermask.png", by=by[1:],
                         title=f"{name}, {spec.model_name} on "
                               f"{plots.dataset_label(spec.dataset.name)}: {num} replicates")
    return {**table, "num_replicates": num}


METHODS = {"edge_popup": run_supermask, "zhou": run_zhou, "bernoulli": run_learned,
           "dnw": run_learned}


def run_supermask(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """The study ``config.method`` names (:data:`METHODS`; default edge-popup).

    Raises:
      ValueError: an unknown ``config.method``.
    """
    method = config.get("method", "edge_popup")
    if method not in METHODS:
        raise ValueError(f"config.method must be one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method](config, workdir, progress=progress)
