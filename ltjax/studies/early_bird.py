"""Early-Bird tickets: search with network slimming, detect emergence, retrain the ticket.

You et al. 2020 ("Drawing Early-Bird Tickets", ICLR 2020; :mod:`ltjax.methods.early_bird`).
The search trains the replicates (members of one program) with the slimming
L1 penalty on the BatchNorm scales for ``config.training_steps``; at the start
of every epoch (epoch 0: the init) each replicate's |gamma| vector is
checkpointed (``checkpoints/gammas_<epoch>``: a resumed run has every epoch's
masks without training again) and
a global channel mask is drawn for every pruning ratio ``p``. The ticket of a
ratio emerges at the first epoch whose mask is within distance
``config.threshold`` (inclusive, as the reference) of each of the
``config.window - 1`` masks before it.
Each ticket (every ratio x replicate, members of one program) is retrained
from a fresh init under its channel masks with the same recipe and penalty,
as ``config.retrain`` says (:data:`RETRAIN_MODES`):

- ``'scratch'`` (the default): for the full length with the full schedule,
  the reference's ``main_scratch.py`` (the paper's "EB Train (re-init)");
- ``'resume_schedule'``: from the ticket's Early-Bird epoch ``e`` to the end,
  the reference's ``main_c.py --start-epoch e`` (``scripts/standard-train/
  retrain_continue.sh``), the paper's headline EB Train. The fresh init's step
  counter is set to ``e * steps_per_epoch``, so only the remaining steps are
  trained, at the schedule's learning rates from that step on (and on the
  batches the search drew there), with a fresh optimiser state: ``main_c.py``
  also re-initialises (it copies only the channel selection) and builds a
  new SGD. Where ``e`` lies past a learning-rate drop, ``main_c.py`` starts
  at the base rate (it only multiplies at the drop epochs it passes); we take
  the schedule's rate at the step, the same whenever ``e`` precedes the first
  drop, as in the paper's runs. Tickets of one Early-Bird epoch train as one
  segment (``checkpoints/retrain_resumed/epoch_<e>``).

A ticket that never emerges is reported without an epoch and retrained from
the final epoch's mask, from step 0 in both modes (there is no epoch to
resume at).

Example (Colab):
    Not run here (a study trains for tens of seconds and writes its workdir):

    ```python
    from experiments.configs import early_bird_mlp_digits
    summary = run_early_bird(early_bird_mlp_digits.get_config("quick"), "/tmp/eb")
    summary["num_replicates"]        # 2
    [r["p"] for r in summary["rows"]]     # one mean row of results.csv per pruning ratio
    ```

    The same run from a shell: ``python -m experiments.early_bird
    --config=experiments/configs/early_bird_mlp_digits.py:quick --workdir=/tmp/eb``.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import jax
import numpy as np

from ltjax.core import rng, tree
from ltjax.io import results
from ltjax.methods import early_bird
from ltjax.studies import common, plots
from ltjax.studies.spec import RunSpec

#: How the tickets are retrained: ``'scratch'`` (full schedule) or ``'resume_schedule'``.
RETRAIN_MODES = ("scratch", "resume_schedule")


def retrain_start_epoch(eb_epoch: int | None, mode: str) -> int:
    """The epoch a ticket's retraining starts at: its Early-Bird epoch when resuming, else 0.

    Args:
      eb_epoch: the epoch the ticket emerged at (None: it never did).
      mode: one of :data:`RETRAIN_MODES`.

    Raises:
      ValueError: ``mode`` not one of :data:`RETRAIN_MODES`.

    Example:
        >>> from ltjax.studies import early_bird
        >>> early_bird.retrain_start_epoch(6, "resume_schedule"), early_bird.retrain_start_epoch(
        ...     6, "scratch")
        (6, 0)
        >>> early_bird.retrain_start_epoch(None, "resume_schedule")    # no ticket emerged
        0
    """
    if mode not in RETRAIN_MODES:
        raise ValueError(f"mode must be one of {RETRAIN_MODES}, got {mode!r}")
    return eb_epoch if mode == "resume_schedule" and eb_epoch is not None else 0


@dataclasses.dataclass(frozen=True)
class EarlyBirdSpec:
    """An Early-Bird study, parsed and checked once at its entry (You et al. 2020).

    Attributes:
      run: what every study shares (:class:`ltjax.studies.spec.RunSpec`; the model has
        BatchNorm).
      ratios: the pruning ratios p (distinct shares of channels pruned, in (0, 1)).
      window: the masks a ticket's emergence compares (the newest and ``window - 1``
        before it).
      threshold: the largest mask distance of an emerged ticket.
      slimming: the slimming L1 strength on the BatchNorm scales (as the config gives it).
      retrain: how the tickets are retrained (:data:`RETRAIN_MODES`).

    Example:
        The spec of the digits quick config, before any workdir exists:

        >>> from experiments.configs import early_bird_mlp_digits
        >>> from ltjax.studies.early_bird import EarlyBirdSpec
        >>> spec = EarlyBirdSpec.from_config(early_bird_mlp_digits.get_config("quick"),
        ...                                  progress=False)
        >>> spec.ratios, spec.window, spec.threshold, spec.retrain
        ((0.3, 0.5, 0.7), 5, 0.1, 'scratch')
    """

    run: RunSpec
    ratios: tuple[float, ...]
    window: int
    threshold: float
    slimming: float
    retrain: str

    @classmethod
    def from_config(cls, config: Any, *, progress: bool = True) -> EarlyBirdSpec:
        """Parse and check ``config``; nothing is written.

        Raises:
          ValueError: ratios outside (0, 1) or repeated, a bad window or threshold, a
            negative slimming strength, an unknown ``config.retrain``, a model without
            BatchNorm (naming the field).
        """
        try:
            ratios = tuple(float(p) for p in config.ratios)
        except (TypeError, ValueError):
            raise ValueError(f"config.ratios must be numbers, got {config.ratios!r}") from None
        if (not ratios or any(not 0.0 < p < 1.0 for p in ratios)
                or len(set(ratios)) != len(ratios)):
            raise ValueError(f"config.ratios must be distinct shares of channels pruned in "
                             f"(0, 1), got {config.ratios!r}")
        if not (isinstance(config.window, int) and config.window >= 2):
            raise ValueError(f"config.window must be an integer >= 2, got {config.window!r}")
        if not 0.0 <= config.threshold <= 1.0:
            raise ValueError(f"config.threshold must be in [0, 1] (the largest mask distance "
                             f"of an emerged ticket), got {config.threshold!r}")
        early_bird.slimming(config.slimming)  # validates the strength
        retrain = config.get("retrain", "scratch")
        if retrain not in RETRAIN_MODES:
            raise ValueError(f"config.retrain must be one of {RETRAIN_MODES} ('scratch': the "
                             f"full schedule; 'resume_schedule': from the Early-Bird epoch on), "
                             f"got {config.retrain!r}")

        run = RunSpec.from_config(config, progress=progress)
        run.require_batch_norm()
        return cls(run=run, ratios=ratios, window=config.window,
                   threshold=float(config.threshold), slimming=config.slimming, retrain=retrain)


@common.study_entry
def run_early_bird(config: Any, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Search, detect and retrain Early-Bird tickets; write tables and a plot; resumable.

    Writes into ``workdir``: ``config.json``, ``metrics.jsonl`` (training
    records), ``checkpoints/gammas_<epoch>`` (|gamma| per replicate), ``mask_distance.csv``
    (``p, epoch, replicate, distance_to_previous_1 ... _{window-1}``),
    ``results.csv`` (``p, replicate, eb_epoch, kept_channels, eb_test_accuracy,
    full_test_accuracy, overlap_with_final_mask``; mean and std rows; the
    retraining of ``config.retrain='resume_schedule'`` starts at ``eb_epoch``),
    ``plots/early_bird.png`` and ``checkpoints/``.

    Raises:
      ValueError: ratios outside (0, 1), a bad window or threshold, a
        negative slimming strength, an unknown ``config.retrain``, a model
        without BatchNorm (before any work).
    """
    spec = EarlyBirdSpec.from_config(config, progress=progress)
    run = spec.run.open(workdir)
    executor = spec.run.executor.like(reparam=early_bird.slimming(spec.slimming))
    # 1. The search: |gamma| at the start of every epoch, computed once per epoch.
    stored, full = _search(spec, run, executor)
    # 2. Masks, distances and the emergence epoch per ratio and replicate.
    epochs = spec.run.training_steps // spec.run.steps_per_epoch
    distance_rows, tickets = _tickets(spec, stored, spec.run.num_replicates, epochs)
    # 3. Retrain every ticket from a fresh init under its channel masks.
    kept, accuracy = _retrain(spec, run, executor, tickets)
    rows = [{"p": t["p"], "replicate": t["replicate"], "eb_epoch": t["eb_epoch"],
             "kept_channels": float(kept[m]), "eb_test_accuracy": float(accuracy[m]),
             "full_test_accuracy": float(full["accuracy"][t["replicate"]]),
             "overlap_with_final_mask": t["overlap"]} for m, t in enumerate(tickets)]
    results.write_csv(run.workdir / "mask_distance.csv", distance_rows)
    table = results.write_table(run.workdir / "results.csv", rows, by=("p",), fields=(
        "eb_epoch", "kept_channels", "eb_test_accuracy", "full_test_accuracy",
        "overlap_with_final_mask"))
    plots.plot_early_bird(distance_rows, run.workdir / "plots" / "early_bird.png",
                          threshold=spec.threshold,
                          title=f"Early-Bird mask distance, {spec.run.model_name} on "
                                f"{plots.dataset_label(spec.run.dataset.name)}")
    return {**table, "num_replicates": spec.run.num_replicates}


def _search(spec: EarlyBirdSpec, run: Any, executor: Any) -> tuple[dict, dict]:
    """The search run: ``|gamma|`` per replicate at the start of every epoch (checkpointed
    once computed: ``stored[(epoch, replicate)]``) and the run's final test metrics."""
    per_epoch, end = spec.run.steps_per_epoch, spec.run.training_steps
    num, epochs = spec.run.num_replicates, end // per_epoch
    init_keys, noise_keys = spec.run.keys()
    state = executor.init(init_keys)
    shapes = dict(zip(tree.names(executor.abstract_params),
                      (x.shape for x in jax.tree.leaves(executor.abstract_params)), strict=True))
    num_channels = sum(math.prod(shapes[n])
                       for n in early_bird.bn_scale_names(executor.abstract_params))
    stored: dict[tuple[int, int], np.ndarray] = {}
    for epoch in range(epochs + 1):
        def gammas(epoch: int = epoch) -> np.ndarray:
            nonlocal state
            if epoch > 0:  # resumes from the search's newest checkpoint
                state = run.segment("search", state=state, noise_keys=noise_keys,
                                    end=min(epoch * per_epoch, end), tags={"branch": "search"},
                                    executor=executor, desc=f"search to epoch {epoch}").state
            params = jax.device_get(state.params)
            return np.stack([early_bird.mask_vector(tree.index(params, rep))
                             for rep in range(num)]).astype(np.float32)

        found = common.computed_once(
            run.workdir, f"gammas_{epoch:04d}", gammas,
            like=jax.ShapeDtypeStruct((num, num_channels), np.float32))
        stored.update({(epoch, rep): found[rep] for rep in range(num)})
    # To the end (a partial last epoch), or restored when the loop already got there.
    full = run.segment("search", state=state, noise_keys=noise_keys, end=end,
                       tags={"branch": "search"}, executor=executor,
                       desc="search").curves.final_metrics("test")
    return stored, full


def _retrain(spec: EarlyBirdSpec, run: Any, executor: Any,
             tickets: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Every ticket retrained from a fresh init under its channel masks: from step 0, or
    (``resume_schedule``) from its Early-Bird epoch's step, one segment per start epoch.
    Returns each ticket's kept channel share and final test accuracy."""
    per_epoch = spec.run.steps_per_epoch
    init_keys, noise_keys = spec.run.keys()
    like = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), executor.abstract_params)
    member_masks = [early_bird.masks_from_channels(like, t["keep"]) for t in tickets]
    replicate_of = np.array([t["replicate"] for t in tickets])
    retrain_keys = rng.stream(init_keys, "early_bird_retrain")
    tags = [{"p": t["p"], "replicate": t["replicate"]} for t in tickets]
    kept = np.array([float(np.mean(t["keep"])) for t in tickets])
    groups: dict[int, list[int]] = {}
    for m, t in enumerate(tickets):
        groups.setdefault(retrain_start_epoch(t["eb_epoch"], spec.retrain), []).append(m)
    accuracy = np.zeros(len(tickets))
    for start_epoch, members in sorted(groups.items()):
        index = np.array(members)
        masks = executor.shard(tree.stack([member_masks[m] for m in members]))
        start = executor.init(retrain_keys[replicate_of[index]], masks)
        if spec.retrain == "scratch":
            name, segment_tags, desc = "retrain", {"branch": "retrain"}, (
                f"retrain {len(members)} tickets")
        else:  # the schedule (and the batch order) resume at the Early-Bird epoch
            start = executor.shard(start.replace(
                step=np.full(len(members), start_epoch * per_epoch, np.int32)))
            name = f"retrain_resumed/epoch_{start_epoch:04d}"
            segment_tags = {"branch": "retrain_resumed", "start_epoch": start_epoch}
            desc = f"retrain {len(members)} tickets from epoch {start_epoch}"
        final = run.segment(name, state=start, masks=masks,
                            noise_keys=noise_keys[replicate_of[index]], tags=segment_tags,
                            member_tags=[tags[m] for m in members], densities=kept[index],
                            executor=executor, desc=desc)
        accuracy[index] = final.curves.final_metrics("test")["accuracy"]
    return kept, accuracy


def _tickets(spec: EarlyBirdSpec, stored: dict[tuple[int, int], np.ndarray], num: int,
             epochs: int) -> tuple[list[dict], list[dict]]:
    """``mask_distance.csv``'s rows and the tickets, per ratio and replicate, from the
    ``|gamma|`` vectors ``stored[(epoch, replicate)]``: each epoch's distances to the
    previous ``window - 1`` masks, the emergence epoch, its channel mask (the last
    epoch's if none) and the mask's overlap with the last epoch's."""
    window, distance_rows, tickets = spec.window, [], []
    for p in spec.ratios:
        for rep in range(num):
            history = [early_bird.channel_keep(stored[(e, rep)], p) for e in range(epochs + 1)]
            for e in range(epochs + 1):
                distances = early_bird.window_distances(history[: e + 1], window)
                distance_rows.append({"p": p, "epoch": e, "replicate": rep, **{
                    f"distance_to_previous_{i + 1}": (distances[::-1][i] if i < len(distances)
                                                      else None)
                    for i in range(window - 1)}})
            eb = early_bird.emergence_epoch(history, window=window, threshold=spec.threshold)
            chosen = history[eb if eb is not None else epochs]
            tickets.append({"p": p, "replicate": rep, "eb_epoch": eb, "keep": chosen,
                            "overlap": 1.0 - early_bird.mask_distance(chosen, history[-1])})
    return distance_rows, tickets

