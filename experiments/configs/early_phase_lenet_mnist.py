"""Perturbations at the rewind point (Frankle, Schwab & Morcos 2020) on LeNet-300-100 / MNIST.

The LTH recipe (Adam 1.2e-3, batch 60, 24K iterations; 5000 validation images),
at each k the masks of IMP level 15 (3.6 % of the hidden weights; layerwise,
output layer at half rate) of the IMP run rewinding to k (run by the study,
or ``imp_workdir='0it=runs/imp_k0,500it=runs/imp_k500'``: runs of
``experiments/configs/imp_lenet_mnist.py:imp_only,lmc`` with the same seed,
replicates and validation split), k in {0, 500} iterations, 2 replicates,
10 perturbations. ``:telemetry`` logs
Frankle et al. 2020's telemetry (:func:`experiments.configs.add_telemetry`) for
the dense network to the last k and for every perturbed member from k on.

    LTJAX_DATA_DIR=../shared/data python -m experiments.early_phase \\
        --config=experiments/configs/early_phase_lenet_mnist.py --workdir=runs/early_phase
"""

import ml_collections

from experiments import configs
from experiments.configs import imp_lenet_mnist

VARIANTS = ("quick", "telemetry")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 300 iterations, IMP level 2 run by the study itself;
    ``'telemetry'``: the telemetry block (dense early phase and perturbed members)."""
    chosen = configs.variants(arg, VARIANTS)
    config = imp_lenet_mnist.get_config("imp_only,lmc")  # He init, 24K: docs/studies/early-phase.md
    config.eval_every = "4000it"
    config.checkpoint_every = "4000it"
    config.imp_workdir = ""  # empty: the study runs IMP rewinding to each k, <workdir>/imp_<k>
    config.imp_mask_at_any_k = False  # True: one IMP run's mask at every k (not the paper's)
    config.imp_level = 15
    config.rewind_steps = ("0it", "500it")
    config.perturbations = (
        "none", "reinit", "shuffle_layer", "shuffle_layer_same_sign",
        "signs_k_magnitudes_fresh", "signs_fresh_magnitudes_k", "signs_init_magnitudes_k",
        "flip_signs@0.5", "gaussian@1", "gaussian@2",
    )
    if "quick" in chosen:
        config.training_steps = "300it"
        config.eval_every = "300it"
        config.checkpoint_every = "100it"
        config.imp_level = 2
        config.rewind_steps = ("0it", "50it")
    if "telemetry" in chosen:
        configs.add_telemetry(config)
    return config
