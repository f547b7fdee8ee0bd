"""The studies' configs (one ``get_config(arg)`` per file) and what they share.

Every config file has a module-level ``VARIANTS`` (the names its
``get_config`` accepts) and reads its argument with :func:`variants`:
``--config=<file>.py:quick,sample`` passes ``'quick,sample'`` (ml_collections'
``config_flags`` hands over the text after ``':'``), variants combine in any
order, and an unknown name is refused with the list of valid ones.

``sample`` is the CIFAR-10 sample (:func:`use_sample`: the 4000 training
images of ``$LTJAX_DATA_DIR/cifar10_first4000``, the last 400 as the test
split), sized for a CPU; :func:`sample_resnet` puts ResNet-20 with the LMC
recipe on it.

Every base config carries the data fields :data:`DATA_FIELDS` (those
:func:`ltjax.studies.common.build_dataset` passes to :func:`ltjax.io.data.load`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import ml_collections

#: The data fields of every config: ``ltjax.io.data.load``'s arguments.
DATA_FIELDS: tuple[str, ...] = ("dataset", "data_dir", "validation_size", "validation_seed",
                                "test_size")

#: Where the CIFAR-10 sample lies under ``$LTJAX_DATA_DIR`` (default ``../shared/data``).
SAMPLE_FILE = os.path.join("cifar10_first4000", "cifar10_train_first4000.npz")
#: The sample's examples held out as its test split.
SAMPLE_TEST_SIZE = 400


def variants(arg: str | None, allowed: Iterable[str]) -> frozenset[str]:
    """The variant names in ``arg`` (``'quick,sample'``), checked against ``allowed``.

    Args:
      arg: what follows ``':'`` in ``--config=<file>.py:<arg>``; None or ``''``:
        no variant. Names are comma-separated, spaces ignored.
      allowed: the names the config accepts (its ``VARIANTS``).

    Returns:
      The set of names given (their order never matters).

    Raises:
      ValueError: a name not in ``allowed``; the message lists the valid ones.

    Example:
        >>> sorted(variants("sample, quick", ("quick", "sample")))
        ['quick', 'sample']
    """
    allowed = tuple(allowed)
    names = frozenset(v.strip() for v in (arg or "").split(",") if v.strip())
    unknown = sorted(names - set(allowed))
    if unknown:
        valid = ", ".join(allowed) if allowed else "none (this config has no variants)"
        raise ValueError(f"unknown config variant(s) {unknown}; valid variants: {valid} "
                         "(combine them with commas, e.g. ':quick,sample')")
    return names


def use_sample(config: ml_collections.ConfigDict) -> None:
    """Point ``config`` at the 4000-image CIFAR-10 sample (3600 train / 400 test).

    The file is ``$LTJAX_DATA_DIR/cifar10_first4000/cifar10_train_first4000.npz``
    (``../shared/data`` when the variable is unset), read when the config is built.
    """
    root = os.environ.get("LTJAX_DATA_DIR", "../shared/data")
    config.dataset = os.path.join(root, SAMPLE_FILE)
    config.test_size = SAMPLE_TEST_SIZE


def sample_resnet(config: ml_collections.ConfigDict, *, epochs: int, **model_kwargs) -> None:
    """ResNet-20 on the CIFAR sample, the LMC recipe scaled to ``epochs`` (drops at 50 and 75 %).

    SGD 0.1 with momentum 0.9, weight decay 1e-4, batch 128, augmentation;
    evaluated and checkpointed every third of the run. For the ``:sample``
    variants of the studies' configs.

    Args:
      config: a study's config, changed in place.
      epochs: training length in epochs (28 steps each).
      **model_kwargs: ResNet fields, e.g. ``bn_init='uniform'``.
    """
    use_sample(config)
    config.model = "resnet20"
    config.model_kwargs = ml_collections.ConfigDict(model_kwargs)
    config.recipe.optimizer = "sgd"
    config.recipe.learning_rate = 0.1
    config.recipe.momentum = 0.9
    config.recipe.weight_decay = 1e-4
    config.recipe.batch_size = 128
    config.recipe.augment = True
    config.recipe.schedule = "step"
    config.recipe.total_steps = ""
    config.recipe.lr_drops = (f"{epochs // 2}ep", f"{3 * epochs // 4}ep") if epochs >= 4 else ()
    config.training_steps = f"{epochs}ep"
    config.eval_every = f"{max(1, epochs // 3)}ep"
    config.checkpoint_every = f"{max(1, epochs // 3)}ep"


#: Training steps per segment of the ``:quick,sample`` runs that would take over 2 minutes
#: cold on a 2-core CPU with a whole epoch (ResNet-20 on the sample: ~1 s per member-step;
#: ``benchmarks/smoke_times.py``).
SMOKE_STEPS = "10it"


def schedule(config: ml_collections.ConfigDict, training_steps: str,
             every: str | None = None) -> None:
    """Train for ``training_steps``; evaluate and checkpoint every ``every`` (default: at the end).

    Example:
        >>> config = ml_collections.ConfigDict({"training_steps": "1ep"})
        >>> schedule(config, "30ep", every="10ep")
        >>> config.training_steps, config.eval_every, config.checkpoint_every
        ('30ep', '10ep', '10ep')
    """
    config.training_steps = training_steps
    config.eval_every = config.checkpoint_every = every or training_steps


def smoke_steps(config: ml_collections.ConfigDict, steps: str = SMOKE_STEPS) -> None:
    """Train, evaluate and checkpoint every ``steps``: a smoke run exercises the code, no more.

    Example:
        >>> config = ml_collections.ConfigDict({"training_steps": "1ep"})
        >>> smoke_steps(config)
        >>> config.training_steps, config.eval_every, config.checkpoint_every
        ('10it', '10it', '10it')
    """
    schedule(config, steps)


def add_telemetry(config: ml_collections.ConfigDict) -> None:
    """The ``telemetry`` block of the dense study (the ``:telemetry`` variant).

    Logged every ``dense_every`` steps up to ``dense_until``, then every
    ``every`` (Frankle et al. 2020, Figure 3: dense early); the gradient norm
    on a fixed training batch of ``batch_size``; ``tracked`` random weights
    followed; the weight snapshots for the post-pass against the final weights
    are removed after it unless ``keep_snapshots``. The top Hessian eigenvalue
    of the training loss on the same batch (``hessian_iterations`` power
    iterations) at ``hessian_steps`` (those past the end are skipped).
    """
    config.telemetry = ml_collections.ConfigDict(dict(
        dense_every="50it", dense_until="2000it", every="500it", batch_size=128, tracked=10,
        keep_snapshots=False, hessian_steps=("0it", "100it", "500it", "2000it"),
        hessian_iterations=20))


#: The ``:pretrain_<kind>`` variants of the IMP configs (:func:`add_pretrain`).
PRETRAIN_VARIANTS: tuple[str, ...] = ("pretrain_random_labels", "pretrain_rotation",
                                      "pretrain_blur")


def add_pretrain(config: ml_collections.ConfigDict, chosen: Iterable[str], *,
                 steps: str) -> None:
    """The ``pretrain`` block of the IMP study (Frankle, Schwab & Morcos 2020, Section 5).

    ``kind`` is ``''`` unless a ``:pretrain_<kind>`` variant of ``chosen`` names
    one (at most one); ``steps`` of pretraining on the altered data; ``share``
    of labels redrawn and ``exclude_true`` (random labels); ``blur_factor``
    and ``blur_method`` (blur); ``seed`` of the alteration
    (:func:`ltjax.studies.imp.pretrain_dataset`).

    Raises:
      ValueError: two ``pretrain_*`` variants at once.
    """
    kinds = sorted(v.removeprefix("pretrain_") for v in chosen if v in PRETRAIN_VARIANTS)
    if len(kinds) > 1:
        raise ValueError(f"choose at most one pretrain_* variant, got {kinds}")
    config.pretrain = ml_collections.ConfigDict(dict(
        kind=kinds[0] if kinds else "", steps=steps, share=1.0, exclude_true=False,
        blur_factor=4, blur_method="bilinear", seed=0))
