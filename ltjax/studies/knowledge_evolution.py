"""Knowledge Evolution: generations of training, each re-initialising the reset hypothesis.

Taha, Shrivastava & Davis 2021 (CVPR; :mod:`ltjax.methods.knowledge_evolution`). The
replicates are the members of one program. Generation ``g`` (1 ..
``config.generations``):

1. trains every member's dense network (no mask in the forward pass) for
   ``config.training_steps`` with a fresh optimiser state and the schedule
   from step 0; the data order of generation 1 is the replicate's noise
   stream, later ones draw ``fold_in(stream(noise, 'knowledge_evolution'), g)``;
2. evaluates the dense network and the fit hypothesis on the test split:
   with KELS the slim net (:func:`ltjax.methods.knowledge_evolution.extract_slim`,
   a smaller registry model: its own program), with WELS the dense network
   with the reset weights zeroed;
3. re-initialises the reset part for generation ``g + 1``:
   ``where(M, W, W_fresh)`` with ``W_fresh`` the reference's draw
   (:func:`ltjax.methods.knowledge_evolution.reset_draw`: kernels
   ``U[-1/sqrt(fan_in), 1/sqrt(fan_in)]``, biases 0) from
   ``fold_in(stream(init, 'ke_reinit'), g + 1)``; BatchNorm (params and
   statistics) carries over unchanged.

The split masks ``M`` (one per replicate; WELS draws them from
``stream(key, 'wels')``) are saved once in ``checkpoints/split_masks`` and
restored from there by every later run on the workdir, so a WELS mask is
kept across generations and checkpoints. Each generation is a resumable
segment with its own checkpoint folder; a finished generation is restored,
not retrained, so a run killed at any point and re-run gives the same files.

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import knowledge_evolution_lenet_digits
    config = knowledge_evolution_lenet_digits.get_config("quick")
    summary = run_knowledge_evolution(config, "/tmp/ke")
    summary["num_replicates"]        # 2
    [r["generation"] for r in summary["rows"]]   # one mean row of results.csv per generation
    ```

    The same run from a shell: ``python -m experiments.knowledge_evolution
    --config=experiments/configs/knowledge_evolution_lenet_digits.py:quick --workdir=/tmp/ke``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ltjax import models
from ltjax.core import masking, rng, tree
from ltjax.io import checkpoint, distributed, results
from ltjax.methods import knowledge_evolution as ke
from ltjax.studies import common, plots
from ltjax.studies.spec import RunSpec

#: The columns of ``results.csv`` (plus the mean and std rows per generation).
FIELDS = ("dense_test_accuracy", "slim_test_accuracy", "slim_params")


def check_config(config: Any) -> tuple[str, float, int]:
    """``(split, split_rate, generations)`` of ``config``, checked before any work.

    Raises:
      ValueError: naming the field: ``split`` not 'kels' or 'wels',
        ``split_rate`` outside (0, 1], ``generations`` not an int >= 1.
    """
    split = config.get("split")
    if split not in ke.SPLITS:
        raise ValueError(f"config.split must be one of {ke.SPLITS}, got {split!r}")
    try:
        split_rate = ke.check_split_rate(config.get("split_rate"))
    except ValueError:
        raise ValueError(f"config.split_rate must be a number in (0, 1] (the fit share), "
                         f"got {config.get('split_rate')!r}") from None
    generations = config.get("generations")
    if isinstance(generations, bool) or not isinstance(generations, int) or generations < 1:
        raise ValueError(f"config.generations must be an int >= 1, got {generations!r}")
    return split, split_rate, generations


def _check_model(config: Any, dataset: Any, split: str, split_rate: float) -> None:
    model = common.build_model(config, dataset)
    abstract = jax.eval_shape(lambda k: models.init(model, k, dataset.input_shape)[0],
                              jax.random.key(0))
    try:
        ke.kels_masks(model, abstract, split_rate=split_rate)
        if split == "kels":
            ke.slim_model(model, split_rate=split_rate)
    except ValueError as err:
        raise ValueError(f"config.model={config.model!r} with config.split={split!r}, "
                         f"split_rate={split_rate}: {err}") from None


def load_split_masks(directory: str | pathlib.Path, like: Any) -> Any | None:
    """The split masks ``[S, ...]`` saved in ``directory`` (restored onto ``like``), or None.

    Example:
        Nothing saved yet:

        >>> from ltjax.studies import knowledge_evolution
        >>> print(knowledge_evolution.load_split_masks("runs/none/checkpoints/split_masks", None))
        None

        A run's saved masks (not run here: it reads a workdir's checkpoint):

        ```python
        masks = load_split_masks(workdir / "checkpoints" / "split_masks", like_masks)
        ```
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return None
    with checkpoint.Checkpointer(directory) as ckpt:
        found = ckpt.restore_latest(like_state=like)
    return None if found is None else found[1]


def _split_masks(executor: Any, keys: jax.Array, split: str, split_rate: float,
                 directory: pathlib.Path, fingerprint: str | None) -> Any:
    """Every replicate's split masks: restored when saved, else drawn and saved (step 0)."""
    num = int(keys.shape[0])
    like = executor.abstract_members(num)[1]
    saved = load_split_masks(directory, like)
    if saved is not None:
        return saved
    abstract = executor.abstract_params
    if split == "kels":
        one = ke.kels_masks(executor.model, abstract, split_rate=split_rate)
        masks = tree.stack([one] * num)
    else:
        masks = jax.jit(jax.vmap(lambda k: ke.wels_masks(abstract, k, split_rate=split_rate)))(
            rng.stream(keys, "wels"))
    masks = executor.shard(jax.tree.map(np.asarray, distributed.host(masks)))
    with checkpoint.Checkpointer(directory) as ckpt:
        ckpt.save(0, state=masks, meta={"split": split, "split_rate": split_rate,
                                        "config": fingerprint})
    return masks


@dataclasses.dataclass(frozen=True)
class KnowledgeEvolutionSpec:
    """A Knowledge Evolution study, parsed and checked once at its entry (Taha et al. 2021).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`; the model
        supports the split).
      split: ``'kels'`` or ``'wels'`` (:data:`ltjax.methods.knowledge_evolution.SPLITS`).
      split_rate: the fit share, in (0, 1].
      generations: how many generations train (at least 1).

    Example:
        The spec of the digits quick config, before any workdir exists:

        >>> from experiments.configs import knowledge_evolution_lenet_digits
        >>> from ltjax.studies.knowledge_evolution import KnowledgeEvolutionSpec
        >>> spec = KnowledgeEvolutionSpec.from_config(
        ...     knowledge_evolution_lenet_digits.get_config("quick"), progress=False)
        >>> spec.split, spec.split_rate, spec.generations, spec.run.training_steps
        ('kels', 0.5, 2, 176)
    """

    run: RunSpec
    split: str
    split_rate: float
    generations: int

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> KnowledgeEvolutionSpec:
        """Parse and check ``config``; nothing is written.

        Raises:
          ValueError: a bad ``split``, ``split_rate`` or ``generations``, or a model the
            split does not support (naming the field).
        """
        split, split_rate, generations = check_config(config)
        run = RunSpec.from_config(
            config, check=lambda dataset: _check_model(config, dataset, split, split_rate),
            progress=progress)
        return cls(run=run, split=split, split_rate=split_rate, generations=generations)


@common.study_entry
def run_knowledge_evolution(config: Any, workdir: str | pathlib.Path, *,
                            progress: bool = True) -> dict:
    """Run ``config.generations`` generations of Knowledge Evolution; resumable.

    Writes into ``workdir``: ``config.json``, ``metrics.jsonl`` (the dense
    training records, tagged with ``generation``), ``results.csv``
    (``generation, replicate, dense_test_accuracy, slim_test_accuracy,
    slim_params``; mean and std rows per generation; ``slim_params`` is the
    slim net's parameter count under KELS and the number of fit parameters
    under WELS), ``plots/knowledge_evolution.png`` and ``checkpoints/``
    (``split_masks``, ``generation_<g>``).

    Args:
      config: a ConfigDict as ``experiments/configs/knowledge_evolution_lenet_digits.py``.
      workdir: the output folder.
      progress: show progress bars.

    Returns:
      ``{'rows', 'std', 'num_replicates'}``: the mean rows of ``results.csv``
      (one per generation), the std rows, the number of replicates.

    Raises:
      ValueError: a bad ``split``, ``split_rate`` or ``generations``, or a
        model the split does not support (before the workdir is written).
    """
    spec = KnowledgeEvolutionSpec.from_config(config, progress=progress)
    run = spec.run.open(workdir)
    executor, dataset, num = spec.run.executor, spec.run.dataset, spec.run.num_replicates
    split, split_rate, generations = spec.split, spec.split_rate, spec.generations
    keys = spec.run.replicate_keys()
    init_keys, noise_keys = spec.run.keys()
    masks = _split_masks(executor, keys, split, split_rate,
                         run.workdir / "checkpoints" / "split_masks",
                         common.config_fingerprint(run.workdir))

    slim_count, evaluate_slim = _fit_hypothesis(spec, masks)
    next_start = _next_generation(executor, masks, init_keys)
    rows, previous = [], None
    for generation in range(1, generations + 1):
        done = run.segment(
            f"generation_{generation:02d}",
            state=(lambda: executor.init(init_keys)) if generation == 1 else (
                lambda g=generation, p=previous: next_start(p, g)),
            noise_keys=noise_keys if generation == 1 else ke.generation_keys(
                noise_keys, "knowledge_evolution", generation),
            tags={"generation": generation}, desc=f"generation {generation} of {generations}")
        final, dense = done.state, done.curves.final_metrics("test")["accuracy"]
        fit = evaluate_slim(final)
        rows += [{"generation": generation, "replicate": r,
                  "dense_test_accuracy": float(dense[r]), "slim_test_accuracy": float(fit[r]),
                  "slim_params": int(slim_count[r])} for r in range(num)]
        previous = final

    table = results.write_table(run.workdir / "results.csv", rows, by=("generation",),
                                fields=FIELDS)
    plots.plot_knowledge_evolution(
        rows, run.workdir / "plots" / "knowledge_evolution.png",
        title=f"Knowledge Evolution ({split.upper()}, sr={split_rate:g}), {spec.run.model_name} on "
              f"{plots.dataset_label(dataset.name)}: {num} replicates")
    return {**table, "num_replicates": num}


def _fit_hypothesis(spec: KnowledgeEvolutionSpec,
                    masks: Any) -> tuple[np.ndarray, Callable[[Any], np.ndarray]]:
    """The fit hypothesis's parameter count per replicate, and its test accuracy ``[S]`` of
    trained states: KELS's slim net extracted, or WELS's dense net under the split masks."""
    executor, num, split_rate = spec.run.executor, spec.run.num_replicates, spec.split_rate
    if spec.split == "kels":
        slim = ke.slim_model(executor.model, split_rate=split_rate)
        slim_executor = executor.like(model=slim)
        slim_count = np.full(num, tree.count(slim_executor.abstract_params))
    else:
        host_masks = distributed.host(masks)
        slim_count = np.array([sum(int(np.sum(m[r])) for m in jax.tree.leaves(host_masks))
                               for r in range(num)])

    def evaluate_slim(state: Any) -> np.ndarray:
        if spec.split == "kels":
            _, params, stats = ke.extract_slim(executor.model, state.params, state.batch_stats,
                                               split_rate=split_rate,
                                               input_shape=spec.run.dataset.input_shape,
                                               leading_axes=1)
            return slim_executor.evaluate_params(params, stats, "test")["accuracy"]
        return executor.evaluate_params(masking.apply(state.params, masks), state.batch_stats,
                                        "test")["accuracy"]

    return slim_count, evaluate_slim


def _next_generation(executor: Any, masks: Any,
                     init_keys: jax.Array) -> Callable[[Any, int], Any]:
    """``(previous generation's trained state, generation) -> its start``: the fit
    hypothesis kept, the rest re-drawn (:func:`ltjax.methods.knowledge_evolution.ke_reinit`),
    BatchNorm statistics carried, a fresh optimiser at step 0."""
    abstract = executor.abstract_params
    reinit = jax.jit(jax.vmap(ke.ke_reinit))
    draw = jax.jit(jax.vmap(lambda k: ke.reset_draw(k, abstract)))

    def next_start(previous: Any, generation: int) -> Any:
        keys = ke.generation_keys(init_keys, "ke_reinit", generation)
        fresh = executor.init(keys)  # step 0 and the state's layout; its params are not used
        params = reinit(previous.params, masks, draw(keys))
        state = fresh.replace(params=params, batch_stats=previous.batch_stats,
                              opt_state=executor.fresh_opt_state(params))
        return executor.shard(state)

    return next_start
