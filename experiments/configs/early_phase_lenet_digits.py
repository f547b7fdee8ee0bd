"""Perturbations at the rewind point on scikit-learn digits: offline, seconds long.

``:sample``: ResNet-20 on the 4000-image CIFAR-10 sample in ``$LTJAX_DATA_DIR``,
IMP to level 2 (64 % density) run by the study, 6 epochs, k in {0, 1 epoch},
four perturbations, 1 replicate (``:quick,sample``, a smoke run: level 1, 6 steps,
k = 3it only, so one IMP run, two perturbations).

    python -m experiments.early_phase \\
        --config=experiments/configs/early_phase_lenet_digits.py:quick --workdir=runs/early_q
"""

import ml_collections

from experiments import configs
from experiments.configs import early_phase_lenet_mnist

VARIANTS = ("quick", "sample", "telemetry")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 3 epochs, IMP level 2 made by the study, k in {0, 10it};
    ``'telemetry'``: Frankle et al. 2020's telemetry (dense early phase, perturbed members)."""
    chosen = configs.variants(arg, VARIANTS)
    config = early_phase_lenet_mnist.get_config()
    config.dataset = "digits"
    config.validation_size = 0
    config.training_steps = "20ep"
    config.eval_every = "10ep"
    config.checkpoint_every = "10ep"
    config.imp_level = 4
    config.rewind_steps = ("0it", "50it")
    if "sample" in chosen:
        quick = "quick" in chosen
        configs.sample_resnet(config, epochs=1 if quick else 6)
        config.num_replicates = 1
        config.imp_level = 1 if quick else 2
        config.rewind_steps = ("0it", "10it") if quick else ("0it", "1ep")
        config.perturbations = ("none", "reinit", "shuffle_layer", "signs_k_magnitudes_fresh")
        if quick:  # a smoke run: under 2 minutes cold on a 2-core CPU
            configs.smoke_steps(config, "6it")
            config.rewind_steps = ("3it",)  # one k: one IMP run
            config.perturbations = ("none", "reinit")
    elif "quick" in chosen:
        config.training_steps = "3ep"
        config.eval_every = "3ep"
        config.checkpoint_every = "1ep"
        config.imp_level = 2
        config.rewind_steps = ("0it", "10it")
    if "telemetry" in chosen:
        configs.add_telemetry(config)
        config.telemetry.update(dense_every="5it", dense_until="20it", every="20it")
    return config
