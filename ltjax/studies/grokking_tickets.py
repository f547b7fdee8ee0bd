"""Grokking Tickets (Minegishi et al. 2023): lottery tickets of a grokked network grok faster.

1. The dense network trains on modular arithmetic (:func:`ltjax.io.data.modular_arithmetic`)
   with AdamW and weight decay until it groks: train accuracy reaches 100 %
   early (memorisation) and test accuracy reaches ``config.target_accuracy``
   (95 %) much later (generalisation).
2. At each ``config.densities`` entry, the **generalised** ticket keeps the
   largest-magnitude prunable weights of the dense net's final weights (one-shot,
   ``config.scope``, global by default; the paper also uses IMP, one-shot is
   the variant done here) and trains from the original init.
3. Controls at the same density, from the same init: the **memorised** ticket
   (the mask by magnitude of the weights at the replicate's first eval step
   where train accuracy is 100 %), and **random** pruning with the generalised
   ticket's per-layer counts (``config.random_scope='layerwise'``; ``'global'``:
   only the total count); the **dense** net is the fourth arm.

Every ticket, control and replicate at every density is a member of one
segment (one model; masks differ per member). The memorising weights of
replicate r are the dense run's at step ``m_r``: they are re-trained from the
init to ``m_r`` (one segment per distinct ``m_r``), which gives the dense
run's own step-``m_r`` weights because a member's numbers do not depend on
what trains beside it (invariant 3), and is resumable like every segment.

Model: ``transformer_1l``/``2l`` read the tokens ``[a, b, =]``; the ``mlp``
(``config.input='one_hot'``) reads the one-hot codes of ``a`` and ``b``
concatenated (``2p`` features, Minegishi et al.'s MLP input).

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import grokking_tickets_transformer
    summary = run_grokking_tickets(grokking_tickets_transformer.get_config("quick"),
                                   "/tmp/grok")
    summary["num_replicates"]        # 2
    summary["memorised_steps"], summary["target_accuracy"]
    summary["rows"]                  # results.csv's means, one row per (arm, density)
    ```

    The same run from a shell: ``python -m experiments.grokking_tickets
    --config=experiments/configs/grokking_tickets_transformer.py:quick --workdir=/tmp/grok``.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import numpy as np

from ltjax.core import masking, pruning, rng, tree
from ltjax.io import data, distributed, results
from ltjax.studies import common, plots
from ltjax.studies.spec import RunSpec

ARMS = ("generalised", "memorised", "random")  # the ticket segment's arms; "dense" besides
INPUTS = ("tokens", "one_hot")
SPLITS = ["test", "train"]


def check_config(config: Any) -> dict:
    """The study's own fields, checked before any work: ``densities``, ``target_accuracy``,
    ``scope``, ``random_scope`` (:class:`GrokkingSpec`'s) and the ``input`` encoding."""
    densities = config.densities
    densities = (densities,) if isinstance(densities, int | float) else tuple(densities)
    if not densities or any(isinstance(d, bool) or not isinstance(d, int | float)
                            or not 0.0 < d < 1.0 for d in densities):
        raise ValueError(f"config.densities must be shares in (0, 1) (kept prunable weights), "
                         f"got {config.densities!r}")
    target = config.get("target_accuracy", 0.95)
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1:
        raise ValueError(f"config.target_accuracy must be in (0, 1], got {target!r}")
    scopes = {"scope": config.get("scope", "global"),
              "random_scope": config.get("random_scope", "layerwise")}
    for field, scope in scopes.items():
        if scope not in pruning.SCOPES:
            raise ValueError(f"config.{field} must be one of {pruning.SCOPES}, got {scope!r}")
    encoding = config.get("input", "tokens")
    if encoding not in INPUTS:
        raise ValueError(f"config.input must be one of {INPUTS}, got {encoding!r}")
    return {"densities": tuple(float(d) for d in densities), "target_accuracy": float(target),
            **scopes, "input": encoding}


def one_hot_pairs(dataset: data.Dataset) -> data.Dataset:
    """Tokens ``[a, b, =]`` -> float32 ``[onehot_p(a), onehot_p(b)]`` (``2p`` features).

    Minegishi et al.'s MLP input (the ``'='`` token carries nothing); ``mean``
    and ``std`` stay empty, so :func:`ltjax.io.data.normalize` leaves the codes as
    they are.
    """
    p = dataset.num_classes

    def split(s: data.Split) -> data.Split:
        x = np.asarray(s.x)
        codes = np.concatenate([np.eye(p, dtype=np.float32)[x[:, 0]],
                                np.eye(p, dtype=np.float32)[x[:, 1]]], axis=1)
        return dataclasses.replace(s, x=codes)

    return dataclasses.replace(dataset, train=split(dataset.train), test=split(dataset.test),
                               validation=None if dataset.validation is None
                               else split(dataset.validation))


def first_step(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """The first step of ``(step, accuracy)`` pairs with accuracy >= ``threshold`` (or None).

    Example:
        >>> from ltjax.studies import grokking_tickets
        >>> curve = [(0, 0.1), (200, 0.97), (100, 0.96)]
        >>> grokking_tickets.first_step(curve, 0.95), grokking_tickets.first_step(curve, 0.99)
        (100, None)
    """
    return next((s for s, a in sorted(curve) if a >= threshold), None)


@dataclasses.dataclass(frozen=True)
class GrokkingSpec:
    """A Grokking Tickets study, parsed and checked once at its entry (Minegishi et al. 2023).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`; the dataset is
        modular arithmetic, as one-hot pairs for ``input='one_hot'``).
      densities: the tickets' target densities (kept shares of the prunable weights).
      target_accuracy: the test accuracy that counts as grokked.
      scope: how the tickets' masks rank magnitudes (:data:`ltjax.core.pruning.SCOPES`).
      random_scope: how the random-pruning control draws its masks.
      prunable: the pruned leaves (``pruning.include`` / ``exclude``).

    Example:
        The spec of the MLP's quick config, before any workdir exists:

        >>> from experiments.configs import grokking_tickets_mlp
        >>> from ltjax.studies.grokking_tickets import GrokkingSpec
        >>> spec = GrokkingSpec.from_config(grokking_tickets_mlp.get_config("quick"),
        ...                                 progress=False)
        >>> spec.densities, spec.target_accuracy, spec.scope
        ((0.4,), 0.95, 'global')
    """

    run: RunSpec
    densities: tuple[float, ...]
    target_accuracy: float
    scope: str
    random_scope: str
    prunable: Any

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> GrokkingSpec:
        """Parse and check ``config``; nothing is written.

        Raises:
          ValueError: densities outside (0, 1), a bad target or scope, a dataset
            that is not modular arithmetic (naming the field).
        """
        fields = check_config(config)
        encoding = fields.pop("input")

        def check(dataset: data.Dataset) -> None:
            if not dataset.name.startswith(data.MODULAR_PREFIX):
                raise ValueError(f"grokking tickets train on modular arithmetic "
                                 f"('modular_add:p=97,train_share=0.3'), got {dataset.name!r}")

        run = RunSpec.from_config(
            config, check=check, progress=progress,
            transform=one_hot_pairs if encoding == "one_hot" else None)
        p = config.get("pruning") or {}
        return cls(run=run, **fields,
                   prunable=masking.prunable(run.executor.abstract_params,
                                             include=p.get("include") or None,
                                             exclude=p.get("exclude") or None))


@common.study_entry
def run_grokking_tickets(config: Any, workdir: str | pathlib.Path, *,
                         progress: bool = True) -> dict:
    """Dense grokking run, then its tickets and controls as one segment; resumable.

    Writes into ``workdir``: ``config.json``, ``metrics.jsonl`` (train and test
    accuracy of every member at every eval step), ``results.csv`` (``arm,
    density, replicate, steps_to_train_100, steps_to_test_95,
    final_test_accuracy, source_step``: ``density`` is the target (1 for
    dense), ``actual_density`` the masks' kept share; the steps are the first
    eval steps at 100 % train / ``target_accuracy`` test accuracy, None when
    never reached, and ``reached_test_95`` 1 or 0; ``source_step`` the step of
    the weights the mask was taken from), ``summary.csv`` (mean and std per arm
    and density: the steps' over the members that reached them, and
    ``reached_test_95``'s mean the share that did), ``plots/grokking_tickets.png``
    and ``checkpoints/``.

    Raises:
      ValueError: densities outside (0, 1), a bad target or scope, a dataset
        that is not modular arithmetic (before any work).
    """
    grokking = GrokkingSpec.from_config(config, progress=progress)
    spec, target = grokking.run, grokking.target_accuracy
    run = spec.open(workdir)
    executor, num = spec.executor, spec.num_replicates
    init_keys, noise_keys = spec.keys()
    replicates = [{"replicate": r} for r in range(num)]

    # 1. The dense net, to the end (it should grok).
    dense = run.segment("dense", state=executor.init(init_keys), noise_keys=noise_keys,
                        tags={"arm": "dense"}, splits=SPLITS, desc=f"dense x{num}")
    memorised_at = [first_step(dense.curves.series("train", "accuracy", r), 1.0)
                    for r in range(num)]
    source = _memorised_sources(run, memorised_at, spec.training_steps)
    # 2. The memorising weights: each replicate re-trained from its init to its step m_r.
    memorised_params = _memorising_weights(run, source, replicates)
    # 3. Masks at each density; every arm x density x replicate is a member of one segment.
    member_tags, masks, member_sources = _ticket_members(
        grokking, distributed.host(dense.state.params), memorised_params, source)
    masks = executor.shard(masks)
    kept_counts = np.asarray(distributed.host(jax.vmap(
        lambda m: masking.num_kept(m, grokking.prunable))(masks)))
    total = masking.num_prunable(executor.abstract_params, grokking.prunable)
    actual = [int(k) / total for k in kept_counts]  # exact shares, not float32
    replicate_of = np.array([t["replicate"] for t in member_tags])
    tickets = run.segment(
        "tickets", state=executor.init(init_keys[replicate_of], masks),
        noise_keys=noise_keys[replicate_of], masks=masks, tags={"stage": "tickets"},
        member_tags=member_tags, densities=np.array(actual), splits=SPLITS,
        desc=f"{', '.join(ARMS)} at {len(grokking.densities)} densities x{num}")

    # 4. The table and the figure, from the segments' curves.
    groups = [(dense.curves, replicates, [1.0] * num, [None] * num),
              (tickets.curves, member_tags, list(actual), member_sources)]
    table = results.write_table(
        run.workdir / "results.csv", _rows(groups, target), by=("arm", "density"),
        fields=("steps_to_train_100", "steps_to_test_95", "reached_test_95",
                "final_test_accuracy", "actual_density"))
    plots.plot_grokking_tickets(
        _curve_records(groups), run.workdir / "plots" / "grokking_tickets.png", key="curve",
        target=target, title=f"grokking tickets: {spec.model_name} on "
                             f"{plots.dataset_label(spec.dataset.name)}, {num} replicates")
    return {**table, "num_replicates": num,
            "memorised_steps": memorised_at, "target_accuracy": target}


def _memorised_sources(run: Any, memorised_at: list[int | None], end: int) -> list[int]:
    """Each replicate's memorised ticket step: where its dense net first reached 100 % train
    accuracy, else (warned once) the end."""
    for r, m in enumerate(memorised_at):
        if m is None:
            common.warn(run.workdir, f"replicate {r}: the dense net never reached 100 % train "
                        f"accuracy; its memorised ticket is taken at the end (step {end})",
                        once={"kind": "never_memorised", "replicate": r})
    return [end if m is None else m for m in memorised_at]


def _memorising_weights(run: Any, source: list[int], replicates: list[dict]) -> Any:
    """The replicates' weights ``[S]`` at their ``source`` steps (host arrays): each group of
    replicates that memorised at one step re-trained from its init to that step."""
    executor, num = run.spec.executor, run.spec.num_replicates
    init_keys, noise_keys = run.spec.keys()
    parts, order = [], []
    for m in sorted(set(source)):
        idx = np.array([r for r in range(num) if source[r] == m])
        state = run.segment(
            f"memorised_source_{m}", state=executor.init(init_keys[idx]),
            noise_keys=noise_keys[idx], end=m,
            tags={"arm": "memorised_source", "source_step": m},
            member_tags=[replicates[r] for r in idx], splits=SPLITS,
            desc=f"memorising weights to step {m} x{len(idx)}").state
        parts.append(distributed.host(state.params))
        order += idx.tolist()
    return jax.tree.map(lambda x: x[np.argsort(order)], tree.concat(parts))


def _ticket_members(grokking: GrokkingSpec, dense_params: Any, memorised_params: Any,
                    source: list[int]) -> tuple[list[dict], Any, list[int | None]]:
    """Every arm x density x replicate of the ticket segment: member tags, masks ``[M]``
    and the step each mask was taken from (None: random)."""
    num, end = grokking.run.num_replicates, grokking.run.training_steps
    prunable = tree.Static(grokking.prunable)
    random_keys = rng.stream(grokking.run.replicate_keys(), "random_prune")
    member_tags, member_masks, member_sources = [], [], []
    for i, d in enumerate(grokking.densities):
        general = _oneshot(dense_params, prunable=prunable, density=d, scope=grokking.scope)
        arms = {"generalised": general,
                "memorised": _oneshot(memorised_params, prunable=prunable, density=d,
                                      scope=grokking.scope),
                "random": _randomly(jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(
                    random_keys), general, prunable=prunable, scope=grokking.random_scope)}
        for arm in ARMS:
            member_masks.append(arms[arm])
            member_tags += [{"arm": arm, "target_density": d, "replicate": r}
                            for r in range(num)]
            member_sources += (list(source) if arm == "memorised"
                               else [end] * num if arm == "generalised" else [None] * num)
    return member_tags, tree.concat(member_masks), member_sources


@functools.partial(jax.jit, static_argnames=("prunable", "density", "scope"))
def _oneshot(params: Any, *, prunable: tree.Static, density: float, scope: str) -> Any:
    """One-shot magnitude masks ``[S]`` of the weights ``[S]`` at ``density``."""
    return jax.vmap(lambda w: pruning.prune_to_density(
        pruning.magnitude_scores(w), prunable.value, density=density, scope=scope))(params)


@functools.partial(jax.jit, static_argnames=("prunable", "scope"))
def _randomly(keys: jax.Array, masks: Any, *, prunable: tree.Static, scope: str) -> Any:
    """Random masks ``[S]`` with the counts of ``masks`` ``[S]`` (per layer or in all)."""
    return jax.vmap(lambda k, m: pruning.random_prune_like(
        k, m, prunable.value, scope=scope))(keys, masks)


def _rows(groups: list[tuple], target: float) -> list[dict]:
    """``results.csv``'s rows: per member of each ``(curves, member tags, kept shares,
    source steps)``, the steps to 100 % train and to ``target`` test accuracy, and the
    final test accuracy (the segment's last evaluation)."""
    rows = []
    for curves, mtags, kept, sources in groups:
        final = curves.final("test", "accuracy")
        for i, t in enumerate(mtags):
            to_target = first_step(curves.series("test", "accuracy", i), target)
            rows.append({"arm": t.get("arm", "dense"), "density": t.get("target_density", 1.0),
                         "replicate": t["replicate"],
                         "steps_to_train_100": first_step(
                             curves.series("train", "accuracy", i), 1.0),
                         "steps_to_test_95": to_target,
                         "reached_test_95": int(to_target is not None),
                         "final_test_accuracy": float(final[i]), "actual_density": float(kept[i]),
                         "source_step": sources[i]})
    return rows


def _curve_records(groups: list[tuple]) -> list[dict]:
    """The figure's accuracy records, one curve per arm and density (as :func:`_rows`)."""
    records = []
    for curves, mtags, _, _ in groups:
        for i, t in enumerate(mtags):
            name = t.get("arm", "dense") + (
                f" {100 * t['target_density']:g} %" if "target_density" in t else "")
            records += [{"curve": name, "replicate": t["replicate"], "split": split,
                         "step": s, "accuracy": a}
                        for split in SPLITS for s, a in curves.series(split, "accuracy", i)]
    return records
