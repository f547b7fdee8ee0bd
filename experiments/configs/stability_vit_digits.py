"""Instability (Frankle et al. 2020) of a small ViT (``vit_tiny``) on digits / MNIST.

Two copies of each initialisation trained from k = 0 with different SGD noise
(data order), interpolated linearly; the instability is the error barrier
along the path (stable below 2 %). The ViT has no BatchNorm, so nothing is
recomputed along the path (its LayerNorms normalise each token on its own).
The :mod:`~experiments.configs.imp_vit_digits` recipe: Adam 1e-3, batch
128, patches of 2 on digits (30 epochs, 2 initialisations x 2 copies, 30
alphas). ``:quick``: 1 initialisation x 2 copies, 2 epochs of a one-block
ViT, 5 alphas (a smoke run for the tests). ``:mnist``: MNIST, patches of 7, 2
epochs, 2 initialisations x 2 copies, 15 alphas on the 10,000 test images.

    python -m experiments.stability --config=experiments/configs/stability_vit_digits.py \\
        --workdir=runs/lmc_vit
    python -m experiments.stability --config=experiments/configs/stability_vit_digits.py:mnist \\
        --workdir=runs/lmc_vit_mnist
"""

import ml_collections

from experiments import configs
from experiments.configs import imp_vit_digits, stability_lenet_digits

VARIANTS = ("quick", "mnist")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: a one-block ViT, 2 epochs, 5 alphas; ``'mnist'``: MNIST."""
    chosen = configs.variants(arg, VARIANTS)
    config = stability_lenet_digits.get_config()
    imp_vit_digits.use_vit(config, mnist="mnist" in chosen, quick="quick" in chosen)
    config.recompute_batch_stats = False  # no BatchNorm
    config.num_replicates = 2
    config.num_copies = 2
    config.rewind_steps = ("0it",)
    configs.schedule(config, "30ep", every="10ep")
    config.num_alphas = config.alpha_chunk = 30
    if "mnist" in chosen:
        config.validation_size = 0
        configs.schedule(config, "2ep", every="1ep")
        config.num_alphas = config.alpha_chunk = 15
        config.path_splits = ("test",)
    if "quick" in chosen:
        config.num_replicates = 1
        configs.schedule(config, "2ep", every="1ep")
        config.num_alphas = config.alpha_chunk = 5
    return config
