"""Reading IMP runs from other studies: compatibility, finished levels, masks, paths.

The studies that train an IMP run's subnetworks (stability, the instability
transition, the early phase, pruning at initialisation, Zhou's supermasks)
read an IMP workdir (:func:`ltjax.studies.imp.run_imp`) through these
functions, and nothing else of it: its config must fit the reading study's
(:func:`check_imp_compatible`), its levels must exist and be finished
(:func:`check_imp_level`, :func:`check_imp_finished`), and a level's masks
come per branch, the ticket or a control (:func:`load_imp_masks`).
:func:`check_compatible` is the one comparison of two workdirs' configs that
every reader of another workdir uses (the soups study's pretrained run too).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ltjax.io import checkpoint, results
from ltjax.studies import common


def check_compatible(config: Any, workdir: str | pathlib.Path, *, field: str,
                     must_match: tuple[str, ...], what: str = "run") -> dict:
    """The config of the run in ``workdir``; ``ValueError`` unless it agrees with ``config``.

    Args:
      config: the reading study's config.
      workdir: the other run's workdir (it holds ``config.json``).
      field: the config field that named ``workdir`` (for the messages).
      must_match: the top-level fields that must be equal in both configs.
      what: what the other run is, for the messages (``'IMP run'``).

    Returns:
      The other run's config, as a dict.

    Example:
        A workdir without ``config.json`` holds no run:

        >>> import ml_collections
        >>> from ltjax.studies import imp_runs
        >>> config = ml_collections.ConfigDict({"dataset": "digits", "model": "lenet_300_100"})
        >>> imp_runs.check_compatible(config, "runs/no_such_imp", field="imp_workdir",
        ...                           must_match=("dataset", "model"), what="IMP run")
        Traceback (most recent call last):
        ...
        ValueError: imp_workdir='runs/no_such_imp' holds no IMP run (no config.json)

        An IMP run's workdir gives its config (not run here: it needs a finished run):

        ```python
        theirs = imp_runs.check_compatible(config, "runs/imp", field="imp_workdir",
                                           must_match=("dataset", "model"), what="IMP run")
        theirs["levels"]        # the IMP run's config, as a dict
        ```
    """
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        raise ValueError(f"{field}={str(workdir)!r} holds no {what} (no config.json)")
    theirs = results.read_json(path)
    ours = common.to_dict(config)
    differ = [key for key in must_match if theirs.get(key) != ours.get(key)]
    if differ:
        raise ValueError(
            f"the {what} in {field}={str(workdir)!r} differs in {differ}: "
            + ", ".join(f"{k}={theirs.get(k)!r} there vs {ours.get(k)!r} here" for k in differ))
    return theirs


def check_imp_level(imp_workdir: str | pathlib.Path, level: int) -> pathlib.Path:
    """The checkpoint folder of an IMP workdir's level; ``ValueError`` if it does not exist."""
    root = pathlib.Path(imp_workdir) / "checkpoints"
    folder = root / f"level_{level:02d}"
    if not folder.is_dir():
        levels = sorted(p.name for p in root.glob("level_*")) if root.is_dir() else []
        raise ValueError(
            f"imp_level={level} does not exist in imp_workdir={str(imp_workdir)!r} "
            f"(found {levels or 'no levels'})"
        )
    return folder


def check_imp_finished(imp_workdir: str | pathlib.Path, dataset: Any) -> None:
    """Raise ``ValueError`` unless every level of the IMP run in ``imp_workdir`` finished.

    A finished level's checkpoint folder holds the step at the end of training
    (``training_steps`` of the IMP run's config, on ``dataset``); a run killed
    in the middle has levels missing or short, and its masks would stand in for
    the levels it never reached.
    """
    theirs = results.read_json(pathlib.Path(imp_workdir) / "config.json")
    end = common.steps(theirs["training_steps"],
                       len(dataset.train) // theirs["recipe"]["batch_size"])
    for level in range(int(theirs.get("levels", 0)) + 1):
        folder = pathlib.Path(imp_workdir) / "checkpoints" / f"level_{level:02d}"
        last = None
        if folder.is_dir():
            with checkpoint.Checkpointer(folder) as ckpt:
                last = ckpt.steps()[-1] if ckpt.steps() else None
        if last != end:
            raise ValueError(
                f"the IMP run in imp_workdir={str(imp_workdir)!r} has not finished: level "
                f"{level} of {theirs.get('levels', 0)} is "
                + ("missing" if last is None else f"at step {last} of {end}")
                + "; rerun its command to finish it first")


#: ``config.imp_branch``: the IMP run's members whose masks the study trains, each from
#: the step-k weights under its mask (the ticket, or a pruning control at its density).
IMP_BRANCHES = ("imp", "random_layerwise", "random_global", "oneshot")


def load_imp_masks(imp_workdir: str | pathlib.Path, level: int, like_masks: Any,
                   branch: str = "imp", *, learning_rate: float | None = None) -> Any:
    """The masks ``[S, ...]`` (host arrays) of an IMP workdir's level, of one branch.

    A level's checkpoint holds every member of that level's program (the
    ticket and its controls); its metadata lists them, and the members of
    ``branch`` (``'imp'``, the ticket, or a control such as
    ``'random_layerwise'``) are returned in replicate order. A run with a
    learning-rate sweep (``ticket_learning_rates``) holds a ticket per rate:
    those of ``learning_rate`` are returned (default: the run's recipe rate).

    Raises:
      ValueError: the level does not exist in the workdir, has no finished
        checkpoint, or has no member of ``branch``.
    """
    folder = check_imp_level(imp_workdir, level)
    with checkpoint.Checkpointer(folder) as ckpt:
        steps = ckpt.steps()
        if not steps:
            raise ValueError(f"imp_level={level} of {str(imp_workdir)!r} has no checkpoint yet")
        _, _, meta = ckpt.restore(steps[-1], like_state=None)
        members = meta.get("members") or []
        swept = any("learning_rate" in m for m in members if m["branch"] == branch)
        if swept and learning_rate is None:
            run_config = results.read_json(pathlib.Path(imp_workdir) / "config.json")
            learning_rate = float(run_config["recipe"]["learning_rate"])
        imp = sorted((m["replicate"], i) for i, m in enumerate(members) if m["branch"] == branch
                     and (not swept or m.get("learning_rate") == learning_rate))
        if not imp:
            found = sorted({m["branch"] for m in members})
            raise ValueError(f"imp_level={level} of {str(imp_workdir)!r} has no {branch!r} "
                             f"members" + (f" at learning_rate={learning_rate}" if swept else "")
                             + f" (imp_branch; it has {found})")
        like_all = jax.tree.map(lambda x: jnp.ones((len(members), *x.shape[1:]), x.dtype),
                                like_masks)
        _, masks, _ = ckpt.restore(steps[-1], like_state=None, like_masks=like_all)
    index = np.array([i for _, i in imp])
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x))[index], masks)


_MUST_MATCH = ("dataset", "validation_size", "validation_seed", "test_size", "model",
               "model_kwargs", "seed", "num_replicates")


def check_imp_compatible(config: Any, imp_workdir: str | pathlib.Path, *,
                         dataset: Any = None, rewind_step: int | None = None) -> dict:
    """Raise ``ValueError`` unless the IMP run in ``imp_workdir`` fits this study.

    Replicate r's mask only fits initialisation r when dataset, model, seed
    and replicate count are the same. With ``dataset`` (this study's), the
    recipe (as built: optimiser, learning rate, schedule, batch size,
    augmentation...) and the training length must be the IMP run's too; with
    ``rewind_step`` (steps), the IMP run must have rewound to that step, unless
    ``config.imp_mask_at_any_k`` (a mask found by rewinding to r used at
    another k is a different experiment from the paper's). An IMP run that
    pretrained on altered data (``config.pretrain``) is refused unless this
    config pretrains alike (no study reading an IMP run pretrains today).

    Returns:
      The IMP run's config (a dict), e.g. for its ``pruning`` selection and
      ``rewind_optimizer``.
    """
    theirs = check_compatible(config, imp_workdir, field="imp_workdir",
                              must_match=_MUST_MATCH, what="IMP run")
    ours = common.to_dict(config)
    pretrained = (theirs.get("pretrain") or {}).get("kind", "")
    if pretrained and (ours.get("pretrain") or {}) != theirs.get("pretrain"):
        raise ValueError(
            f"the IMP run in imp_workdir={str(imp_workdir)!r} pretrained on altered data "
            f"(pretrain.kind={pretrained!r}); this study starts from weights that were not: "
            "its masks do not belong to these weights (use an IMP run without config.pretrain)")
    if dataset is None:
        return theirs
    per_epoch = len(dataset.train) // config.recipe.batch_size
    their_config = ml_collections.ConfigDict(theirs)
    recipe_ours = common.build_recipe(config, dataset)
    recipe_theirs = common.build_recipe(their_config, dataset)
    if recipe_ours != recipe_theirs:
        fields = [f.name for f in dataclasses.fields(recipe_ours)
                  if getattr(recipe_ours, f.name) != getattr(recipe_theirs, f.name)]
        raise ValueError(
            f"the IMP run in imp_workdir={str(imp_workdir)!r} trained with another recipe: "
            + ", ".join(f"{k}={getattr(recipe_theirs, k)!r} there vs "
                        f"{getattr(recipe_ours, k)!r} here" for k in fields))
    end_theirs = common.steps(theirs["training_steps"], per_epoch)
    end_ours = common.steps(config.training_steps, per_epoch)
    if end_theirs != end_ours:
        raise ValueError(
            f"the IMP run in imp_workdir={str(imp_workdir)!r} trained {end_theirs} steps "
            f"(training_steps={theirs['training_steps']!r}), this study {end_ours} "
            f"(training_steps={config.training_steps!r})")
    if rewind_step is not None and not config.get("imp_mask_at_any_k", False):
        theirs_k = common.steps(theirs.get("rewind_step", 0), per_epoch)
        if theirs_k != rewind_step:
            raise ValueError(
                f"the IMP run in imp_workdir={str(imp_workdir)!r} rewound to step {theirs_k} "
                f"(rewind_step={theirs.get('rewind_step')!r}) but is used at k = {rewind_step}: "
                "give one IMP run per k (imp_workdir='<k>=<workdir>,...', Frankle et al. "
                "2020's protocol) or set imp_mask_at_any_k=True")
    return theirs


def imp_workdirs(config: Any, ks: list[int], per_epoch: int,
                 workdir: str | pathlib.Path | None = None) -> dict[int, str]:
    """The IMP run whose masks each rewind step uses: ``{k: imp_workdir}`` (empty: dense).

    ``config.imp_workdir`` is one IMP workdir, used at every k, or
    comma-separated ``<k>=<workdir>`` entries, exactly one per rewind step:
    Frankle et al. 2020's protocol (Section 4), where the subnetwork studied
    at k is the one IMP found when rewinding to k. ``{workdir}`` in a path
    stands for this study's own workdir (given as ``workdir``), so a study
    whose IMP runs live beside it (the transition study's) can be moved or
    copied with them: ``'0it={workdir}/../imp_k0'``.

    Raises:
      ValueError: a malformed entry, a k given twice, or entries that do not
        cover exactly ``config.rewind_steps``.

    Example:
        >>> import ml_collections
        >>> from ltjax.studies import imp_runs
        >>> config = ml_collections.ConfigDict(
        ...     {"imp_workdir": "0it=runs/imp_k0,500it=runs/imp_k500"})
        >>> imp_runs.imp_workdirs(config, [0, 500], per_epoch=916)
        {0: 'runs/imp_k0', 500: 'runs/imp_k500'}
        >>> config.imp_workdir = "runs/imp"                   # one IMP run at every k
        >>> imp_runs.imp_workdirs(config, [0, 500], per_epoch=916)
        {0: 'runs/imp', 500: 'runs/imp'}
        >>> config.imp_workdir = "0it={workdir}/../imp_k0,1ep={workdir}/../imp_k1ep"
        >>> imp_runs.imp_workdirs(config, [0, 916], per_epoch=916, workdir="runs/transition")
        {0: 'runs/imp_k0', 916: 'runs/imp_k1ep'}
    """
    spec = str(config.get("imp_workdir") or "").strip()
    if not spec:
        return {}
    spec_as_given = spec
    if "{workdir}" in spec:  # its folder may not exist yet: '..' is resolved as text
        if workdir is None:
            raise ValueError(f"config.imp_workdir={spec!r} uses {{workdir}}: give the workdir")
        spec = spec.replace("{workdir}", str(workdir))
    if "=" not in spec:
        return {k: os.path.normpath(spec) if spec != spec_as_given else spec for k in ks}
    out: dict[int, str] = {}
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        k_text, _, path = (x.strip() for x in entry.partition("="))
        try:
            k = common.steps(k_text, per_epoch)
        except ValueError as error:
            raise ValueError(f"config.imp_workdir entry {entry!r} must be '<k>=<workdir>' with "
                             f"a step k such as '500it' or '2ep': {error}") from None
        if not path or k in out:
            raise ValueError(f"config.imp_workdir entry {entry!r}: "
                             + ("no workdir" if not path else f"k = {k} is given twice"))
        out[k] = os.path.normpath(path) if "{workdir}" in spec_as_given else path
    if sorted(out) != ks:
        raise ValueError(f"config.imp_workdir gives IMP runs for k = {sorted(out)} (steps) but "
                         f"config.rewind_steps are {ks}: one IMP run per rewind step")
    return out
