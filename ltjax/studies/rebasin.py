"""Git Re-Basin: match independently trained networks, then interpolate them.

Ainsworth, Hayase & Srinivasa, "Git Re-Basin: Merging Models modulo
Permutation Symmetries" (ICLR 2023). S networks are trained from different
initialisations (and data orders) as one program; model 0 is the reference
and every other model ``j`` is permuted onto it by ``config.method``
(:mod:`ltjax.core.matching`):

- ``'weight'``: weight matching (Algorithm 1, coordinate descent over the
  permutations, each a linear assignment);
- ``'activation'``: activation matching on training inputs (section 3.1);
- ``'ste'``: the straight-through estimator (Algorithm 3), learning the
  permutation that minimises the midpoint's training loss.

Each pair is then evaluated along the linear path between model 0 and model
``j``, unpermuted (``naive``) and permuted (``matched``), at
``config.num_alphas`` alphas on the train and test sets, with the loss
barrier of Git Re-Basin and the error barrier of Frankle et al. (2020)
(:mod:`ltjax.core.soups`). ``config.corrections`` lists how every point of a
path is evaluated: as interpolated (``'none'``); with its BatchNorm
statistics recomputed on training data (``'reset'``); or REPAIRed
(``'repair'``: Jordan et al., "REPAIR: REnormalizing Permuted Activations for
Interpolation Repair", ICLR 2023; :mod:`ltjax.core.repair`, :func:`ltjax.models.repair`).

Sparse re-basin (the question of Adnan et al., "Sparse Training from Random
Initialization: Aligning Lottery Ticket Masks using Weight Symmetry",
calgaryml/sparse-rebasin), when ``config.sparse.density > 0``: model 0 is
pruned one-shot by magnitude to that density; its mask, moved into model
``j``'s basin by the inverse of the matching permutations, trains model
``j``'s initialisation (``permuted``), against the same mask unpermuted
(``naive``) and, if ``config.sparse.ticket``, model 0's own initialisation
with its mask (``ticket``, the lottery-ticket reference); all of them as one
masked program.

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import rebasin_mlp_digits
    summary = run_rebasin(rebasin_mlp_digits.get_config("quick"), "/tmp/rebasin")
    sorted(summary)                  # ['rows', 'sparse']
    summary["rows"][0]["error_barrier"]
    ```

    The same run from a shell: ``python -m experiments.rebasin
    --config=experiments/configs/rebasin_mlp_digits.py:quick --workdir=/tmp/rebasin``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from ltjax import models
from ltjax.core import interpolation, masking, matching, pruning, rng
from ltjax.core import tree as tree_lib
from ltjax.engine import executor as executor_lib
from ltjax.engine import train
from ltjax.io import data, results
from ltjax.studies import common, plots
from ltjax.studies.spec import RunSpec

METHODS = ("weight", "activation", "ste")
CORRECTIONS = ("none", "reset", "repair")
VARIANTS = ("naive", "matched")
SPARSE_BRANCHES = ("ticket", "permuted", "naive")


def corrections_of(config: Any) -> tuple[str, ...]:
    """``config.corrections`` as a tuple (comma-separated strings are split), checked.

    Raises:
      ValueError: an empty list or an unknown correction (naming it).

    Example:
        >>> import ml_collections
        >>> from ltjax.studies import rebasin
        >>> rebasin.corrections_of(ml_collections.ConfigDict({"corrections": ("none,repair",)}))
        ('none', 'repair')
    """
    value = common.names_of(config.get("corrections", ("none",)), field="corrections",
                            allowed=CORRECTIONS)
    if not value:
        raise ValueError(f"config.corrections must be a non-empty list among {CORRECTIONS}")
    return value


def check_config(config: Any) -> MatchingSpec:
    """Check the study's own fields before anything is written.

    Raises:
      ValueError: an unknown ``config.method`` or correction, fewer than 2
        replicates or alphas, a sparse density outside [0, 1), or a bad
        ``reset_batches`` / ``reset_augment``.

    Example:
        >>> from experiments.configs import rebasin_mlp_digits
        >>> from ltjax.studies import rebasin
        >>> rebasin.check_config(rebasin_mlp_digits.get_config("quick")).method
        'weight'
    """
    matching_spec = MatchingSpec.from_config(config)
    corrections_of(config)
    common.batch_stats_reset(config)
    if config.num_replicates < 2:
        raise ValueError(f"config.num_replicates must be >= 2 (model 0 and one to match), "
                         f"got {config.num_replicates}")
    if config.num_alphas < 2:
        raise ValueError(f"config.num_alphas must be >= 2, got {config.num_alphas}")
    density = sparse_density(config)
    if not 0.0 <= density < 1.0:
        raise ValueError(f"config.sparse.density must be in [0, 1) (0: off), got {density}")
    return matching_spec


@dataclasses.dataclass(frozen=True)
class MatchingSpec:
    """How model ``j`` is permuted onto model 0 (:func:`match`): ``config.method`` and the
    fields of ``config.matching`` it reads (``max_iter``, ``restarts`` and the ``ste_*``
    counts are None for a method that does not read them; ``num_examples``,
    ``similarity`` and ``ste_optimizer`` are always checked and set).

    Attributes:
      method: ``'weight'``, ``'activation'`` or ``'ste'`` (:data:`METHODS`).
      seed: the matching's seed (the config's).
      max_iter: weight matching's (and STE's projections') sweeps.
      restarts: weight matching's random restarts (the best one kept).
      num_examples: activation matching's training inputs (0: all).
      similarity: activation matching's ``'inner'`` or ``'pearson'``.
      ste_steps: STE's training batches.
      ste_batch_size: STE's batch size.
      ste_learning_rate: STE's learning rate.
      ste_optimizer: STE's ``'adam'`` or ``'sgd'`` (momentum 0.9).

    Example:
        >>> from experiments.configs import rebasin_mlp_digits
        >>> from ltjax.studies.rebasin import MatchingSpec
        >>> m = MatchingSpec.from_config(rebasin_mlp_digits.get_config("quick"))
        >>> m.method, m.max_iter, m.restarts, m.ste_steps      # weight matching: no STE
        ('weight', 100, 2, None)
    """

    method: str
    seed: int
    max_iter: int | None = None
    restarts: int | None = None
    num_examples: int = 0
    similarity: str = "inner"
    ste_steps: int | None = None
    ste_batch_size: int | None = None
    ste_learning_rate: float | None = None
    ste_optimizer: str = "adam"

    @classmethod
    def from_config(cls, config: Any) -> MatchingSpec:
        """``config.method`` and ``config.matching``, checked.

        Raises:
          ValueError: an unknown method, similarity or STE optimiser, or
            ``num_examples`` not an int >= 0 (naming the field).
        """
        method = config.method
        if method not in METHODS:
            raise ValueError(f"config.method must be one of {METHODS}, got {method!r}")
        m = config.matching
        similarity = m.get("similarity", cls.similarity)
        if similarity not in matching.SIMILARITIES:
            raise ValueError(f"config.matching.similarity must be one of "
                             f"{matching.SIMILARITIES}, got {similarity!r}")
        ste_optimizer = m.get("ste_optimizer", cls.ste_optimizer)
        if ste_optimizer not in ("adam", "sgd"):
            raise ValueError(f"config.matching.ste_optimizer must be 'adam' or 'sgd', "
                             f"got {ste_optimizer!r}")
        num_examples = m.get("num_examples", cls.num_examples)
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or (
                num_examples < 0):
            raise ValueError(f"config.matching.num_examples must be an int >= 0 (0: the whole "
                             f"training set), got {num_examples!r}")
        ste = method == "ste"
        return cls(method=method, seed=config.seed,
                   max_iter=m.max_iter if method in ("weight", "ste") else None,
                   restarts=m.restarts if method == "weight" else None,
                   num_examples=num_examples, similarity=similarity,
                   ste_steps=m.ste_steps if ste else None,
                   ste_batch_size=m.ste_batch_size if ste else None,
                   ste_learning_rate=m.ste_learning_rate if ste else None,
                   ste_optimizer=ste_optimizer)


def sparse_density(config: Any) -> float:
    """``config.sparse.density`` (0, sparse re-basin off, when the config has no ``sparse``)."""
    sparse = config.get("sparse")
    return float(sparse.get("density", 0.0)) if sparse is not None else 0.0


def train_sample(dataset: data.Dataset, num_examples: int, *, seed: int) -> jax.Array:
    """``num_examples`` normalised training inputs (all if fewer), in an order drawn from ``seed``.

    Example:
        >>> from ltjax.io import data
        >>> from ltjax.studies import rebasin
        >>> x = rebasin.train_sample(data.load("digits"), 500, seed=0)
        >>> x.shape, x.dtype
        ((500, 8, 8, 1), dtype('float32'))
    """
    count = min(int(num_examples), len(dataset.train))
    order = np.asarray(jax.random.permutation(rng.stream(jax.random.key(seed), "sample"),
                                              len(dataset.train)))[:count]
    return data.normalize(jnp.asarray(dataset.train.x[np.sort(order)]), dataset.mean,
                          dataset.std)


def _variables(params: Any, batch_stats: Any) -> dict:
    return {"params": params, **({"batch_stats": batch_stats} if jax.tree.leaves(batch_stats)
                                 else {})}


def activation_moments(executor: executor_lib.Executor, spec: matching.PermutationSpec,
                       a: tuple, b: tuple, *, num_examples: int, seed: int,
                       chunk_size: int = 1000) -> dict:
    """Activation moments of nets ``a`` and ``b`` on training inputs, accumulated in chunks.

    ``num_examples=0``: the whole training set (the Git Re-Basin reference
    scripts' default); otherwise that many examples drawn by
    :func:`train_sample`'s rule. Post-ReLU activations
    (:func:`ltjax.models.activations`), ``chunk_size`` examples at a time.
    """
    dataset, model = executor.dataset, executor.model
    total = len(dataset.train)
    count = total if not num_examples else min(int(num_examples), total)
    order = np.sort(np.asarray(jax.random.permutation(
        rng.stream(jax.random.key(seed), "sample"), total))[:count])
    variables_a, variables_b = _variables(*a), _variables(*b)

    @jax.jit
    def moments_of(x):
        return matching.activation_moments(models.activations(model, spec, variables_a, x),
                                           models.activations(model, spec, variables_b, x))

    moments = None
    for start in range(0, count, chunk_size):
        x = data.normalize(jnp.asarray(dataset.train.x[order[start:start + chunk_size]]),
                           dataset.mean, dataset.std)
        part = moments_of(x)
        moments = part if moments is None else matching.add_moments(moments, part)
    return moments


@dataclasses.dataclass(frozen=True)
class SparseSpec:
    """``config.sparse``: sparse re-basin (a ticket's mask moved into each model's basin)."""

    density: float  # the kept share of model 0's magnitude mask
    scope: str  # how it ranks magnitudes (ltjax.core.pruning.SCOPES)
    ticket: bool  # also train model 0's own ticket
    end: int  # the sparse networks' training steps


@dataclasses.dataclass(frozen=True)
class RebasinSpec:
    """A re-basin study, parsed and checked once at its entry (Ainsworth et al. 2023).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`).
      matching: the matching's method and settings (:class:`MatchingSpec`).
      corrections: the paths' corrections (:data:`CORRECTIONS`).
      reset: BatchNorm statistics along the path for ``'reset'``
        (:func:`ltjax.studies.common.batch_stats_reset`).
      repair_examples: training inputs of REPAIR's statistics.
      repair_eps: REPAIR's epsilon.
      alphas: the paths' points.
      path_splits: the splits each path is evaluated on.
      alpha_chunk: points evaluated per program call.
      sparse: sparse re-basin (:class:`SparseSpec`), or None (off).

    Example:
        The spec of the digits config, before any workdir exists:

        >>> from experiments.configs import rebasin_mlp_digits
        >>> from ltjax.studies.rebasin import RebasinSpec
        >>> spec = RebasinSpec.from_config(rebasin_mlp_digits.get_config("quick"),
        ...                                progress=False)
        >>> spec.matching.method, spec.corrections, len(spec.alphas), spec.sparse is None
        ('weight', ('none', 'repair'), 9, False)
    """

    run: RunSpec
    matching: MatchingSpec
    corrections: tuple[str, ...]
    reset: dict
    repair_examples: int
    repair_eps: float
    alphas: tuple[float, ...]
    path_splits: tuple[str, ...]
    alpha_chunk: int
    sparse: SparseSpec | None

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> RebasinSpec:
        """Parse and check ``config`` (:func:`check_config`, and ``'reset'`` against the
        model's BatchNorm); nothing is written.

        Raises:
          ValueError: see :func:`check_config`; ``'reset'`` for a model without BatchNorm.
        """
        matching_spec = check_config(config)
        corrections = corrections_of(config)
        run = RunSpec.from_config(config, progress=progress)
        if "reset" in corrections and not models.has_batch_norm(
                run.executor.abstract_state.batch_stats):
            raise ValueError(f"config.corrections has 'reset' but {config.model} has no "
                             "BatchNorm statistics to recompute")
        sparse = None
        if sparse_density(config) > 0:
            block = config.sparse
            sparse = SparseSpec(
                density=float(block.density), scope=block.scope,
                ticket=bool(block.get("ticket", True)),
                end=common.steps(block.get("training_steps") or config.training_steps,
                                 run.steps_per_epoch))
        alphas = np.linspace(0.0, 1.0, config.num_alphas)
        return cls(run=run, matching=matching_spec, corrections=corrections,
                   reset=common.batch_stats_reset(config),
                   repair_examples=int(config.repair.num_examples),
                   repair_eps=float(config.repair.eps),
                   alphas=tuple(float(a) for a in alphas),
                   path_splits=tuple(config.path_splits),
                   alpha_chunk=int(config.get("alpha_chunk") or len(alphas)), sparse=sparse)


def match(settings: MatchingSpec, executor: executor_lib.Executor,
          spec: matching.PermutationSpec, a: tuple, b: tuple) -> matching.MatchResult:
    """Permutations of network ``b = (params, batch_stats)`` onto ``a`` by ``settings.method``.

    ``'weight'``: :func:`ltjax.core.matching.weight_matching` (``max_iter``,
    ``restarts``); ``'activation'``:
    :func:`ltjax.core.matching.activation_matching` on post-ReLU activations over
    ``matching.num_examples`` training inputs (0: all, the reference's
    default), by ``matching.similarity`` (``'inner'``: ``E[A^T B]``;
    ``'pearson'``); ``'ste'``: :func:`ltjax.core.matching.ste_matching` on
    ``ste_steps`` training batches of ``ste_batch_size`` with
    ``ste_optimizer`` (``'sgd'``, momentum 0.9, the reference's; or
    ``'adam'``), keeping the projection of the lowest batch loss (Git
    Re-Basin, Ainsworth et al. 2023, sections 3.1-3.3).

    Args:
      settings: the method and its settings (:class:`MatchingSpec`).
      executor: the executor (its model and dataset).
      spec: the model's :class:`ltjax.core.matching.PermutationSpec`.
      a: the reference ``(params, batch_stats)``.
      b: the network to permute.

    Raises:
      ValueError: an unknown ``settings.method``.

    Example:
        Not run here (it needs the study's executor; :mod:`ltjax.core.matching` runs the matchers
        on small nets):

        ```python
        result = match(MatchingSpec.from_config(config), executor, spec, (params_0, {}),
                       (params_1, {}))
        aligned = matching.apply_permutation(spec, result.perms, params_1)
        ```
    """
    m = settings
    if m.method == "weight":
        return matching.weight_matching(spec, a[0], b[0], seed=m.seed,
                                        max_iter=m.max_iter, restarts=m.restarts)
    if m.method == "activation":
        moments = activation_moments(executor, spec, a, b, num_examples=m.num_examples,
                                     seed=m.seed)
        return matching.activation_matching(spec, moments=moments,
                                            similarity=m.similarity)
    if m.method == "ste":
        dataset = executor.dataset
        has_bn = bool(jax.tree.leaves(a[1]))
        model = executor.model

        def loss_fn(params, batch):
            logits = train.logits(model, params, a[1], batch[0], train=has_bn)
            return train.cross_entropy(logits, batch[1]).mean()

        index = data.batch_indices(rng.stream(jax.random.key(m.seed), "ste"), 0,
                                   num_steps=m.ste_steps, num_examples=len(dataset.train),
                                   batch_size=m.ste_batch_size)
        batches = ((data.normalize(jnp.asarray(dataset.train.x[np.asarray(i)]), dataset.mean,
                                   dataset.std), jnp.asarray(dataset.train.y[np.asarray(i)]))
                   for i in index)
        return matching.ste_matching(spec, a[0], b[0], loss_fn, batches,
                                     learning_rate=m.ste_learning_rate, seed=m.seed,
                                     max_iter=m.max_iter,
                                     optimizer=m.ste_optimizer)
    raise ValueError(f"settings.method must be one of {METHODS}, got {m.method!r}")


def _load_or_match(rebasin, run, spec, a, b, *, pair: str) -> dict:
    """The pair's permutations: matched once (a checkpoint, restored on a rerun).

    ``perms/pair_<pair>.json`` is written from it on every run (an output, never read):
    what the matching found, nothing of the machine (no wall time), so the same command
    writes the same bytes.
    """
    def compute() -> list[dict]:
        result = match(rebasin.matching, run.spec.executor, spec, a, b)
        return [{"method": rebasin.matching.method, "objective": result.objective,
                 "iterations": result.iterations,
                 "perms": {k: np.asarray(v).tolist() for k, v in result.perms.items()}}]

    (found,) = common.records_once(run.workdir, None, f"matching/pair_{pair}", compute)
    results.write_json(run.workdir / "perms" / f"pair_{pair}.json", found)
    return {"perms": {k: jnp.asarray(v, jnp.int32) for k, v in found["perms"].items()},
            "objective": found["objective"]}


@common.study_entry
def run_rebasin(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Train, match, interpolate (and sparse re-basin); resumable. See the module docstring.

    Writes into ``workdir``: ``config.json``; ``metrics.jsonl`` (training
    records of the ``dense`` and ``sparse`` branches, and one ``path`` record
    per pair, variant, correction, split and alpha); ``perms/pair_0-j.json``
    (the permutations of model j, with the matching objective and time);
    ``results.csv`` (per pair, variant, correction and split: loss and error
    barriers with the alphas of their peaks, endpoint and midpoint loss and
    accuracy; their means over pairs in ``summary.csv``); ``sparse_results.csv``
    (final test accuracy per sparse branch, if on); ``plots/interpolation.png``
    (loss and accuracy vs alpha, naive vs matched, train and test, as in the
    paper's figures),
    ``plots/learning_curves.png`` and ``plots/sparse_rebasin.png``; and
    ``checkpoints/``. Re-running resumes: finished training, matchings and
    paths are read back, not recomputed.

    Args:
      config: a ConfigDict as in ``experiments/configs/rebasin_mlp_digits.py``.
      workdir: the output folder.
      progress: show progress bars.

    Returns:
      ``{'rows': [...], 'sparse': [...]}``: the rows of ``results.csv`` (of
      ``summary.csv``, ``pair='mean'``, when there are several pairs) and of
      ``sparse_results.csv``.

    Raises:
      ValueError: see :func:`check_config`; ``'reset'`` for a model without BatchNorm.

    Example:
        Not run here (it trains the models and writes ``workdir``):

        ```python
        summary = run_rebasin(rebasin_mlp_digits.get_config("quick"), "/tmp/rebasin")
        [(r["variant"], r["error_barrier"]) for r in summary["rows"]][:2]
        ```
    """
    rebasin = RebasinSpec.from_config(config, progress=progress)
    run_spec = rebasin.run
    run = run_spec.open(workdir)
    workdir, executor = run.workdir, run_spec.executor
    num = run_spec.num_replicates
    init_keys, noise_keys = run_spec.keys()

    # 1. S networks from S initialisations, as one program.
    initial = executor.init(init_keys)
    dense = run.segment("dense", state=initial, noise_keys=noise_keys, tags={"branch": "dense"},
                        desc=f"train {run_spec.model_name} x{num}")
    final = dense.state
    nets = [(tree_lib.index(final.params, r), tree_lib.index(final.batch_stats, r))
            for r in range(num)]
    spec = models.permutation_spec(executor.model, nets[0][0], nets[0][1] or None)

    # 2. Match every model j to model 0.
    matched = _matched(rebasin, run, spec, nets, progress)
    # 3. Naive and matched paths, with each correction.
    rows, path_records = _paths(rebasin, run, nets, matched, progress)
    means = results.write_table(
        workdir / "results.csv", rows, by=("variant", "correction", "split"), stats=("mean",),
        constants={"method": rebasin.matching.method},
        fields=[k for k in rows[0] if isinstance(rows[0][k], float | np.floating)])["rows"]
    summary = [{"pair": "mean", **r} for r in means] if num > 2 else rows

    # 4. Sparse re-basin.
    sparse_rows, sparse_records = [], []
    if rebasin.sparse is not None:
        sparse_rows, sparse_records = _sparse_rebasin(rebasin.sparse, run, spec, nets, matched,
                                                      initial, noise_keys)
        results.write_csv(workdir / "sparse_results.csv", sparse_rows)

    name = f"{run_spec.model_name} on {plots.dataset_label(run_spec.config['dataset'])}"
    plots.plot_interpolation(
        path_records, workdir / "plots" / "interpolation.png",
        title=f"{name}: model 0 to model j, {rebasin.matching.method} matching", rows=rows)
    plots.plot_branch_curves(
        dense.curves.records([{"replicate": r} for r in range(num)], {"branch": "dense"}),
        workdir / "plots" / "learning_curves.png", key="branch",
        title=f"{name}: {num} initialisations")
    if sparse_rows:
        plots.plot_branch_curves(
            [{**r, "member": _member_names(num, rebasin.sparse.ticket)[
                r["replicate"]]} for r in sparse_records if r["split"] == "test"],
            workdir / "plots" / "sparse_rebasin.png", key="member",
            title=f"{name}: sparse re-basin at density {rebasin.sparse.density:g}")
    return {"rows": summary, "sparse": sparse_rows}


def _matched(rebasin: RebasinSpec, run: Any, spec: Any, nets: list[tuple],
             progress: bool) -> dict[int, dict]:
    """Every model j >= 1 matched to model 0 (loaded when a run already matched it): the
    matching's outputs and the permuted ``net`` (params, batch stats)."""
    matched = {}
    for j in range(1, len(nets)):
        common.say(f"matching model {j} to model 0 ({rebasin.matching.method} matching)", progress)
        found = _load_or_match(rebasin, run, spec, nets[0], nets[j], pair=f"0-{j}")
        perms = found["perms"]
        matched[j] = {**found, "net": (matching.apply_permutation(spec, perms, nets[j][0]),
                                       matching.apply_permutation(spec, perms, nets[j][1]))}
    return matched


def _paths(rebasin: RebasinSpec, run: Any, nets: list[tuple], matched: dict[int, dict],
           progress: bool) -> tuple[list[dict], list[dict]]:
    """``results.csv``'s rows and the figure's records of every naive and matched path from
    model 0 to model j, with each correction."""
    x_repair = train_sample(run.spec.dataset, rebasin.repair_examples,
                            seed=rebasin.matching.seed + 1)
    alphas = np.asarray(rebasin.alphas)
    splits = list(rebasin.path_splits)
    rows, path_records = [], []
    paths = [(j, variant, correction) for j in range(1, len(nets)) for variant in VARIANTS
             for correction in rebasin.corrections]
    for j, variant, correction in tqdm.tqdm(
            paths, desc=f"interpolation paths ({len(alphas)} points each)", unit="path",
            disable=not progress):
        b = nets[j] if variant == "naive" else matched[j]["net"]
        tags = {"branch": "path", "pair": f"0-{j}", "variant": variant, "correction": correction}
        curves, records = _evaluate_path(run, rebasin, tags, nets[0], b, alphas=alphas,
                                         splits=splits, correction=correction,
                                         x_repair=x_repair)
        path_records += records
        rows += [_path_row(*curves[split], tags, split, method=rebasin.matching.method)
                 for split in splits]
    return rows, path_records


def _evaluate_path(run, rebasin, tags, a, b, *, alphas, splits, correction,
                   x_repair) -> tuple[dict, list[dict]]:
    """One path on ``splits``, evaluated once (:func:`ltjax.studies.common.path_once`).

    Returns:
      ``({split: (alphas, accuracy, loss)}, records)``: float64 arrays and the
      path's records.
    """
    executor = run.spec.executor

    def evaluate(t):
        out = {}
        for split in splits:
            for key, value in executor.evaluate_params(t[0], t[1], split).items():
                out[f"{split}/{key}"] = value
        return out

    def path():
        recompute = None
        tree_a, tree_b = a, b
        if correction == "reset":
            def recompute(t):
                return (t[0], executor.recomputed_batch_stats(t[0], t[1], **rebasin.reset))
        elif correction == "repair":
            model, eps = executor.model, rebasin.repair_eps
            tree_a = (*a, models.output_stats(model, _variables(*a), x_repair))
            tree_b = (*b, models.output_stats(model, _variables(*b), x_repair))
            recompute = models.repair_fn(model, x_repair, eps=eps)
        curve = interpolation.evaluate_path(evaluate, tree_a, tree_b, alphas,
                                            chunk_size=rebasin.alpha_chunk,
                                            recompute_fn=recompute)
        return {split: {k: curve[f"{split}/{k}"] for k in ("accuracy", "loss")}
                for split in splits}

    return common.path_once(
        run.workdir, run.log,
        f"paths/{tags['variant']}_{tags['correction']}_pair_{tags['pair']}", tags, alphas,
        splits, path)


def _path_row(alphas, acc, loss, tags, split, *, method) -> dict:
    error_barrier, error_at = interpolation.error_barrier(alphas, 1.0 - acc)
    chord, chord_at = interpolation.loss_barrier(alphas, loss, baseline="chord")
    mean_ends, mean_ends_at = interpolation.loss_barrier(alphas, loss, baseline="mean_ends")
    mid = int(np.argmin(np.abs(alphas - 0.5)))
    return {"pair": tags["pair"], "method": method, "variant": tags["variant"],
            "correction": tags["correction"], "split": split,
            "loss_barrier_chord": float(chord), "loss_barrier_chord_alpha": float(chord_at),
            "loss_barrier_mean_ends": float(mean_ends),
            "loss_barrier_mean_ends_alpha": float(mean_ends_at),
            "error_barrier": float(error_barrier), "error_barrier_alpha": float(error_at),
            "loss_a": loss[0], "loss_b": loss[-1], "accuracy_a": acc[0], "accuracy_b": acc[-1],
            "midpoint_alpha": alphas[mid], "midpoint_loss": loss[mid],
            "midpoint_accuracy": acc[mid]}


def _member_names(num: int, ticket: bool) -> list[str]:
    """Sparse members: the ticket of model 0 (if on), then (permuted, naive) for each model j."""
    names = ["ticket (model 0)"] if ticket else []
    for j in range(1, num):
        names += [f"permuted mask, model {j}", f"naive mask, model {j}"]
    return names


def _sparse_rebasin(sparse, run, spec, nets, matched, initial, noise_keys,
                    ) -> tuple[list[dict], list[dict]]:
    """Train the ticket, permuted-mask and naive-mask networks as one masked program.

    Returns the table's rows (one per member) and the segment's records (for the figure).
    """
    num, executor, end = len(nets), run.spec.executor, sparse.end
    selection = masking.prunable(executor.abstract_state.params)
    mask_0 = pruning.prune_to_density(pruning.magnitude_scores(nets[0][0]), selection,
                                      density=sparse.density, scope=sparse.scope)
    members = [("ticket", "0", 0, mask_0)] if sparse.ticket else []
    for j in range(1, num):
        # perms map model j onto model 0 (unit perm[i] of j faces unit i of 0), so
        # model 0's mask lands in model j's basin by the inverse permutation.
        moved = matching.apply_permutation(spec, matching.inverse(matched[j]["perms"]), mask_0)
        members += [("permuted", f"0-{j}", j, moved), ("naive", f"0-{j}", j, mask_0)]
    index = np.array([m[2] for m in members])
    masks = executor.shard(tree_lib.stack([m[3] for m in members]))
    densities = np.asarray(jax.vmap(lambda m: masking.density(m, selection))(masks))
    # The members' initialisations: rows of the dense run's initial states.
    state = executor.shard(jax.tree.map(lambda leaf: leaf[index], initial))
    state = state.replace(params=masking.apply(state.params, masks))
    tags = {"branch": "sparse"}
    curves = run.segment("sparse", state=state, masks=masks, noise_keys=noise_keys[index],
                         end=end, tags=tags, densities=densities,
                         desc=f"sparse re-basin x{len(members)}").curves
    rows = [{"branch": branch, "pair": pair, "init": f"model {model_index}", "replicate": m,
             "density": float(curves.density[m]), "step": end,
             "test_accuracy": float(curves.final("test", "accuracy")[m]),
             "test_loss": float(curves.final("test", "loss")[m])}
            for m, (branch, pair, model_index, _) in enumerate(members)]
    return rows, curves.records([{"replicate": m} for m in range(len(members))], tags)
