"""The early phase of training: perturb the rewound subnetwork at k, train, and compare.

Frankle, Schwab & Morcos 2020 ("The Early Phase of Neural Network Training",
ICLR 2020), Section 4: at each rewind step k take the ticket IMP found rewinding to k
(level ``config.imp_level``: the masks of an IMP run with ``rewind_step`` k),
the dense network's weights at k (each replicate trained to k with its own SGD
noise, as the stability study), apply every perturbation of
``config.perturbations`` to the kept weights (:mod:`ltjax.methods.perturbations`), and
train all perturbations x replicates of a k as one program under k's masks
from step k to the end, with a fresh optimiser state (IMP's default) and the
replicate's own data order (so ``none``, the unperturbed member, is IMP's
ticket rewound to k, and every perturbation is compared on the same batches).

The IMP runs: without ``config.imp_workdir`` the study runs IMP rewinding to
each k itself, into ``workdir/imp_<k as written>`` (this config's model, data,
recipe and ``pruning``); ``config.imp_workdir='0it=runs/imp_k0,500it=runs/
imp_k500'`` gives one finished run per k (:func:`ltjax.studies.imp_runs.
imp_workdirs`). One IMP workdir used at every k (its mask found rewinding to
one step) is another experiment: it needs ``config.imp_mask_at_any_k=True``.

Perturbation names:

================================= =============================================
``none``                          the rewound ticket ``m * W_k``
``reinit``                        a fresh init under the mask (all leaves)
``signs_<a>_magnitudes_<b>``      ``sign(a) * |b|``, a, b in k / init / fresh
``flip_signs@<q>``                flip ``round(q * kept)`` signs per layer
``shuffle_<layer|channel>``       permute kept values within a layer / channel
``shuffle_<...>_same_sign``       ... among same-sign values only
``gaussian@<n>``                  ``W_k + n * sigma_l * eps``, sigma_l the init std
                                  of layer l (:func:`perturbations.init_stds`)
================================= =============================================

``k`` / ``init`` / ``fresh`` signs and magnitudes: ``signs_k_magnitudes_fresh``
is the paper's sign-preserving magnitude randomisation; ``signs_fresh_
magnitudes_k`` random signs with the learned magnitudes. A member's
perturbation key is ``fold_in(stream(stream(replicate_key, 'perturb'),
name), k)``, so adding perturbations or replicates changes no other member.

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import early_phase_lenet_digits
    summary = run_early_phase(early_phase_lenet_digits.get_config("quick"), "/tmp/early")
    summary["num_replicates"]        # 2
    summary["rows"][0]["test_accuracy_drop"]   # means per (k, perturbation)
    ```

    The same run from a shell: ``python -m experiments.early_phase
    --config=experiments/configs/early_phase_lenet_digits.py:quick --workdir=/tmp/early``.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from typing import Any

import jax
import numpy as np

from ltjax import models
from ltjax.core import masking, rewinding, rng, tree
from ltjax.io import distributed, results
from ltjax.methods import perturbations
from ltjax.studies import common, dense, imp, imp_runs, plots
from ltjax.studies.spec import RunSpec

SOURCES = ("k", "init", "fresh")
_RECOMBINE = re.compile(r"^signs_(k|init|fresh)_magnitudes_(k|init|fresh)$")
_SHUFFLE = re.compile(r"^shuffle_(layer|channel)(_same_sign)?$")


def parse_perturbation(name: str) -> tuple[str, dict]:
    """A perturbation name -> ``(kind, options)``; see the module doc for the names.

    Raises:
      ValueError: an unknown name, or a share / scale out of range (naming
        ``config.perturbations``).

    Example:
        >>> from ltjax.studies import early_phase
        >>> early_phase.parse_perturbation("gaussian@0.5")
        ('gaussian', {'scale': 0.5})
        >>> early_phase.parse_perturbation("signs_k_magnitudes_fresh")
        ('recombine', {'signs': 'k', 'magnitudes': 'fresh'})
    """
    if name in ("none", "reinit"):
        return name, {}
    if match := _RECOMBINE.match(name):
        return "recombine", {"signs": match[1], "magnitudes": match[2]}
    if match := _SHUFFLE.match(name):
        return "shuffle", {"within": match[1], "same_sign": bool(match[2])}
    kind, _, value = name.partition("@")
    if kind in ("flip_signs", "gaussian") and value:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if kind == "flip_signs" and not 0.0 <= number <= 1.0:
            raise ValueError(f"config.perturbations: {name!r} needs a share in [0, 1]")
        if kind == "gaussian" and not (math.isfinite(number) and number >= 0):
            raise ValueError(f"config.perturbations: {name!r} needs a scale >= 0")
        return kind, {"share": number} if kind == "flip_signs" else {"scale": number}
    raise ValueError(
        f"config.perturbations: unknown perturbation {name!r}; expected none, reinit, "
        "signs_<k|init|fresh>_magnitudes_<k|init|fresh>, flip_signs@<q>, "
        "shuffle_<layer|channel>[_same_sign] or gaussian@<n>")


def perturb(name: str, key: jax.Array, params_k: Any, masks: Any, *, params_0: Any, fresh: Any,
            prunable: Any, stds: Any = None) -> Any:
    """One member's start: ``params_k`` perturbed by ``name`` (pure; jittable per name).

    Args:
      name: a perturbation name (module doc).
      key: the member's perturbation key.
      params_k: the dense weights at step k.
      masks: the subnetwork's masks.
      params_0: the weights at init (``init`` signs or magnitudes).
      fresh: a fresh init (``reinit``, ``fresh`` signs or magnitudes).
      prunable: static bools of the perturbed leaves.
      stds: each layer's init std (:func:`ltjax.methods.perturbations.init_stds`;
        needed by ``gaussian@<n>``).

    Returns:
      The perturbed params, masked.
    """
    kind, options = parse_perturbation(name)
    rewound = masking.apply(params_k, masks)
    if kind == "none":
        return rewound
    if kind == "reinit":
        return rewinding.rewind(fresh, masks)
    if kind == "recombine":
        source = {"k": rewound, "init": params_0, "fresh": fresh}
        return perturbations.recombine(rewound, masks, signs=source[options["signs"]],
                                       magnitudes=source[options["magnitudes"]],
                                       prunable=prunable)
    if kind == "shuffle":
        return perturbations.shuffle_weights(key, rewound, masks, prunable=prunable, **options)
    if kind == "flip_signs":
        return perturbations.flip_signs(key, rewound, masks, prunable=prunable, **options)
    if stds is None:
        raise ValueError(f"perturb({name!r}): give stds, each layer's init std "
                         "(ltjax.methods.perturbations.init_stds)")
    return perturbations.gaussian_noise(key, rewound, masks, prunable=prunable, stds=stds,
                                        **options)


def _check_config(config: Any) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(
        v.strip() for item in ([config.perturbations] if isinstance(config.perturbations, str)
                               else list(config.perturbations or ()))
        for v in str(item).split(",") if v.strip()))
    if config.get("pretrain") is not None and config.pretrain.get("kind"):
        raise ValueError(
            f"config.pretrain.kind={config.pretrain.kind!r}: the early-phase study rewinds to the "
            "dense run's own step k; pretraining on altered data is an option of the IMP study "
            "(experiments.imp with a :pretrain_* variant)")
    if "none" not in names:
        raise ValueError("config.perturbations must include 'none' (the unperturbed ticket the "
                         f"drops are measured from), got {list(names)}")
    for name in names:
        parse_perturbation(name)
    if isinstance(config.imp_level, bool) or not isinstance(config.imp_level, int) or (
            config.imp_level < 1):
        raise ValueError(f"config.imp_level must be an integer >= 1, got {config.imp_level!r}")
    return names


def _imp_config(config: Any, rewind_step: str) -> Any:
    """The IMP run this study makes for k = ``rewind_step``: its model, data, recipe;
    ``imp_level`` levels, rewinding to k."""
    imp_config = common.without(config, ("perturbations", "rewind_steps", "imp_workdir",
                                         "imp_level", "imp_mask_at_any_k", "telemetry"))
    with imp_config.unlocked():
        imp_config.levels = config.imp_level
        imp_config.rewind_step = rewind_step
        imp_config.controls = ()
        imp_config.ticket_learning_rates = ()
    return imp_config


@dataclasses.dataclass(frozen=True)
class OwnImpRun:
    """An IMP run the study makes itself, into ``<workdir>/imp_<rewind_step>``."""

    rewind_step: str  # k as written in config.rewind_steps
    config: Any  # its config (:func:`_imp_config`), checked (:func:`imp.check_config`)


@dataclasses.dataclass(frozen=True)
class EarlyPhaseSpec:
    """An early-phase study, parsed and checked once at its entry (Frankle et al. 2020).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`).
      perturbations: the perturbation names (module doc), ``none`` among them.
      imp_level: the IMP level whose masks are the tickets.
      rewind_steps: the steps k, distinct and sorted.
      imp_workdirs: per k, the finished IMP run ``config.imp_workdir`` gives; empty when
        the study runs its own.
      own_imp_runs: per k, the IMP run the study makes (:class:`OwnImpRun`); empty when
        ``config.imp_workdir`` gives them.
      prunable: the perturbed leaves (the model's prunable kernels).
      telemetry: the telemetry block (:class:`ltjax.studies.dense.TelemetrySpec`), or None.

    Example:
        The spec of the digits config, before any workdir exists:

        >>> from experiments.configs import early_phase_lenet_digits
        >>> from ltjax.studies.early_phase import EarlyPhaseSpec
        >>> spec = EarlyPhaseSpec.from_config(early_phase_lenet_digits.get_config("quick"),
        ...                                   "/tmp/never_written", progress=False)
        >>> spec.rewind_steps, spec.imp_level, spec.perturbations[:2]
        ((0, 10), 2, ('none', 'reinit'))
        >>> {k: run.rewind_step for k, run in spec.own_imp_runs.items()}, spec.imp_workdirs
        ({0: '0it', 10: '10it'}, {})
    """

    run: RunSpec
    perturbations: tuple[str, ...]
    imp_level: int
    rewind_steps: tuple[int, ...]
    imp_workdirs: dict[int, str]
    own_imp_runs: dict[int, OwnImpRun]
    prunable: Any
    telemetry: dense.TelemetrySpec | None

    @classmethod
    def from_config(cls, config: Any, workdir: str | pathlib.Path, *,
                    progress: bool = True) -> EarlyPhaseSpec:
        """Parse and check ``config`` (and the IMP runs it names or makes); nothing is written.

        ``workdir`` resolves ``{workdir}`` in ``config.imp_workdir``.

        Raises:
          ValueError: an unknown perturbation or one out of range, no ``none``, a
            rewind step outside ``[0, training_steps)``, a bad telemetry block, an IMP
            workdir of other inits, rewound to another k (without ``imp_mask_at_any_k``)
            or without ``imp_level`` (naming the field).
        """
        names = _check_config(config)
        imp_workdirs: dict[int, str] = {}  # k -> the given IMP run of its ticket
        own_runs: dict[int, OwnImpRun] = {}  # k -> the study's own IMP run
        parsed: dict = {}

        def check(dataset) -> None:
            per_epoch = len(dataset.train) // config.recipe.batch_size
            end = common.steps(config.training_steps, per_epoch)
            ks = [common.steps(k, per_epoch) for k in config.rewind_steps]
            if not ks or min(ks) < 0 or max(ks) >= end:
                raise ValueError(f"config.rewind_steps {list(config.rewind_steps)} must be "
                                 f"steps in [0, training_steps = {end}) (as steps: {ks})")
            parsed["telemetry"] = dense.TelemetrySpec.from_config(config, dataset)
            if not config.get("imp_workdir"):  # its own IMP runs, checked before any writing
                for k, text in zip(ks, config.rewind_steps, strict=True):
                    if k not in own_runs:
                        imp_config = _imp_config(config, text)
                        imp.check_config(imp_config, dataset)
                        own_runs[k] = OwnImpRun(rewind_step=text, config=imp_config)
                return
            for k, run in imp_runs.imp_workdirs(config, sorted(set(ks)), per_epoch,
                                                workdir).items():
                imp_runs.check_imp_compatible(config, run, dataset=dataset, rewind_step=k)
                imp_runs.check_imp_level(run, config.imp_level)
                imp_workdirs[k] = run

        run = RunSpec.from_config(config, check=check, progress=progress)
        return cls(run=run, perturbations=names, imp_level=config.imp_level,
                   rewind_steps=tuple(sorted({**imp_workdirs, **own_runs})),
                   imp_workdirs=imp_workdirs, own_imp_runs=own_runs,
                   prunable=masking.prunable(run.executor.abstract_params),
                   telemetry=parsed["telemetry"])


@common.study_entry
def run_early_phase(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Train every perturbation at every k; write tables and a plot; resumable.

    Writes into ``workdir``: ``config.json``, ``metrics.jsonl``, ``results.csv``
    (``k, perturbation, replicate, density, effective_std, test_accuracy,
    test_accuracy_drop``; mean and std rows), ``plots/perturbations.png``,
    ``checkpoints/`` and, without ``config.imp_workdir``, the IMP run of each k
    in ``imp_<k>/``.
    With a ``config.telemetry`` block (:func:`experiments.configs.add_telemetry`),
    Frankle et al. 2020's telemetry (:func:`ltjax.studies.dense.telemetry_observer`)
    on its schedule: ``telemetry.csv`` (``branch, k, perturbation, step,
    replicate, layer, quantity, value``) holds the dense network's early phase
    (branch ``parent``, from init to the last k; its ``*_init`` quantities
    against the init) and every perturbed member from its k to the end
    (branch ``perturbed``; its ``*_init`` quantities against the member's
    start at k, its ``*_final`` ones against its own final weights), and
    ``plots/telemetry.png`` draws the dense early phase (the paper's Figure 3
    panels).

    Raises:
      ValueError: see :meth:`EarlyPhaseSpec.from_config` (before any work).
    """
    early = EarlyPhaseSpec.from_config(config, workdir, progress=progress)
    run = early.run.open(workdir)
    imp_workdirs = dict(early.imp_workdirs)  # k -> the IMP run of its ticket: given, or made here
    for k, own in early.own_imp_runs.items():
        imp_workdirs[k] = run.workdir / f"imp_{own.rewind_step}"
        imp.run_imp(own.config, imp_workdirs[k], progress=progress)
    members = _Members(early, run)
    state, rows = members.init, []
    for k in early.rewind_steps:
        state = members.parent(k, state)
        masks = imp_runs.load_imp_masks(imp_workdirs[k], early.imp_level, members.like)
        density = np.asarray(members.densities(masks))
        start, member_masks, effective = members.start(k, state, masks)
        trained = members.train(k, start, member_masks, density)
        rows += _rows(k, members.member_tags, density, effective,
                      trained.curves.final_metrics("test")["accuracy"])
    return _write_outputs(early, members, rows, density)  # the plot names the last k's density


class _Members:
    """The study's members k by k: the dense parent (one run, continued from k to k), and
    at each k every perturbation x replicate (perturbation-major) started from the
    parent under k's ticket masks and trained to the end as one program, each with
    the telemetry a ``config.telemetry`` block asks for."""

    def __init__(self, early: EarlyPhaseSpec, run: Any):
        spec, selection = early.run, early.prunable
        self.early, self.run, self.executor = early, run, spec.executor
        self.names, self.num = early.perturbations, spec.num_replicates
        self.member_tags = [{"perturbation": name, "replicate": r}
                            for name in self.names for r in range(self.num)]
        self.replicate_of = np.array([t["replicate"] for t in self.member_tags])
        init_keys, self.noise_keys = spec.keys()
        self.perturb_keys = rng.stream(spec.replicate_keys(), "perturb")
        self.init = self.executor.init(init_keys)  # the parent at step 0
        self.like = self.executor.shard(masking.ones_like(self.init.params))
        self.densities = jax.jit(jax.vmap(lambda m: masking.density(m, selection)))  # one program
        stds = perturbations.init_stds(
            lambda key: models.init(self.executor.model, key, spec.dataset.input_shape)[0],
            rng.stream(jax.random.key(spec.seed), "init_stds"), prunable=selection)
        self.starts = {name: _starter(name, self.executor, spec.dataset, selection, stds)
                       for name in self.names}
        self.telemetry_log = results.MetricsLog(run.workdir / "telemetry.jsonl")
        self.snapshots = run.workdir / "telemetry_snapshots"
        self.parent_observer = self.observer(self.init.params, "parent")

    def observer(self, params_0: Any, folder: str,
                 masks: Any = None) -> common.TelemetryObserver | None:
        """The telemetry of a segment against ``params_0`` (None without telemetry)."""
        if self.early.telemetry is None:
            return None
        spec = self.early.run
        return dense.telemetry_observer(self.early.telemetry, self.executor, params_0,
                                        spec.training_steps, spec.dataset,
                                        log=self.telemetry_log,
                                        snapshot_dir=self.snapshots / folder, masks=masks)

    def parent(self, k: int, state: Any) -> Any:
        """The dense parent ``state`` (at the previous k) trained on to step ``k``."""
        return self.run.segment(f"parent_{k}", state=state, noise_keys=self.noise_keys, end=k,
                                tags={"k": k, "branch": "parent"}, desc=f"dense to step {k}",
                                observer=self.parent_observer).state

    def start(self, k: int, state_k: Any, masks: Any) -> tuple[Any, Any, np.ndarray]:
        """The members' start state ``[P * S]`` (each perturbation of its replicate's parent
        ``state_k`` ``[S]``, at k, with a fresh optimiser state), masks and effective stds."""
        executor, started, effective = self.executor, [], []
        for name in self.names:
            name_keys = jax.vmap(lambda key, n=name: jax.random.fold_in(
                rng.stream(key, n), k))(self.perturb_keys)
            params, eff = self.starts[name](name_keys, state_k.params, masks, self.init.params)
            started.append(params)
            effective.append(np.asarray(eff))
        params = tree.concat(started)
        start = tree.index(state_k, self.replicate_of).replace(
            params=params, opt_state=executor.fresh_opt_state(params))
        return (executor.shard(start), executor.shard(tree.index(masks, self.replicate_of)),
                np.concatenate(effective))

    def train(self, k: int, start: Any, member_masks: Any, density: np.ndarray) -> Any:
        """The members of k trained from k to the end as one program, each on its
        replicate's data order; then their telemetry against their final weights."""
        tags = {"k": k, "branch": "perturbed"}
        observer = self.observer(start.params, f"perturbed_{k}", member_masks)
        trained = self.run.segment(f"perturbed_{k}", state=start, masks=member_masks,
                                   noise_keys=self.noise_keys[self.replicate_of], tags=tags,
                                   member_tags=self.member_tags,
                                   densities=density[self.replicate_of],
                                   desc=f"k={k}: {len(self.names)} perturbations x{self.num}",
                                   observer=observer)
        if observer is not None:
            observer.versus_final(trained.state.params, tags=tags, member_tags=self.member_tags,
                                  keep_snapshots=self.early.telemetry.keep_snapshots)
        return trained


def _rows(k: int, member_tags: list[dict], density: np.ndarray, effective: np.ndarray,
          accuracy: np.ndarray) -> list[dict]:
    """The rows of k in ``results.csv``: each member's drop from its replicate's ``none``."""
    by_member = {(t["perturbation"], t["replicate"]): float(accuracy[m])
                 for m, t in enumerate(member_tags)}
    return [{"k": k, **t, "density": float(density[t["replicate"]]),
             "effective_std": float(effective[m]),
             "test_accuracy": by_member[(t["perturbation"], t["replicate"])],
             "test_accuracy_drop": by_member[("none", t["replicate"])]
             - by_member[(t["perturbation"], t["replicate"])]}
            for m, t in enumerate(member_tags)]


def _write_outputs(early: EarlyPhaseSpec, members: _Members, rows: list[dict],
                   density: np.ndarray) -> dict:
    """``results.csv`` (mean/std), the telemetry table and plot, the perturbations plot."""
    spec, workdir, num = early.run, members.run.workdir, early.run.num_replicates
    table = results.write_table(workdir / "results.csv", rows, by=("k", "perturbation"), fields=(
        "density", "effective_std", "test_accuracy", "test_accuracy_drop"))
    label = f"{spec.model_name} on {plots.dataset_label(spec.dataset.name)}"
    if early.telemetry is not None:
        _write_telemetry(workdir, members.telemetry_log, members.snapshots / "parent",
                         keep_snapshots=early.telemetry.keep_snapshots,
                         title=f"{label}: the dense early phase, mean over {num} seeds")
    plots.plot_perturbations(rows, workdir / "plots" / "perturbations.png",
                             title=f"Perturbations at k, {label} "
                                   f"at {100 * float(np.mean(density)):.1f} % density")
    return {**table, "num_replicates": num}


def _write_telemetry(workdir: pathlib.Path, log: results.MetricsLog,
                     parent_snapshots: pathlib.Path, *, keep_snapshots: bool,
                     title: str) -> None:
    """``telemetry.csv`` and ``plots/telemetry.png`` (the dense early phase, Figure 3 panels).

    The dense parent stops at the last k, so it has no final weights to
    compare with: its snapshots are removed (unless ``keep_snapshots``).
    """
    columns = ("branch", "k", "perturbation", "step", "replicate", "layer", "quantity", "value")
    rows, seen = [], set()
    for record in log.read():
        row = {c: record.get(c, "") for c in columns}
        if row["branch"] == "parent":  # one trajectory in segments that share their ends
            row["k"] = ""
            key = tuple(row[c] for c in ("step", "replicate", "layer", "quantity"))
            if key in seen:
                continue
            seen.add(key)
        rows.append(row)
    results.write_csv(workdir / "telemetry.csv", rows)
    if not keep_snapshots:
        stale = list(parent_snapshots.glob("step_*.npz"))
        distributed.write(f"remove {parent_snapshots}", lambda: [p.unlink() for p in stale])
    plots.plot_telemetry([r for r in rows if r["branch"] == "parent"],
                         workdir / "plots" / "telemetry.png", title=title)


def _starter(name: str, executor: Any, dataset: Any, selection: Any, stds: Any):
    """A jitted ``(keys [S], params_k [S], masks [S], params_0 [S]) -> (params [S], std [S])``."""

    def one(key, params_k, masks, params_0):
        fresh = models.init(executor.model, rng.stream(key, "fresh"), dataset.input_shape)[0]
        started = perturb(name, key, params_k, masks, params_0=params_0, fresh=fresh,
                          prunable=selection, stds=stds)
        return started, perturbations.effective_std(started, masking.apply(params_k, masks),
                                                    masks, selection)

    return jax.jit(jax.vmap(one))
