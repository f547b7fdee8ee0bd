"""Instability on scikit-learn digits: offline and seconds long.

``:sample``: ResNet-20 on the 4000-image CIFAR-10 sample in ``$LTJAX_DATA_DIR``,
1 initialisation x 2 copies, 6 epochs, k in {0, 1 epoch}, 5 alphas, BatchNorm
statistics recomputed at each alpha (``:quick,sample``, a smoke run: 10 steps,
k in {0, 5it}, 3 alphas, BatchNorm statistics from 2 batches, the path on test only).

    python -m experiments.stability --config=experiments/configs/stability_lenet_digits.py \
        --workdir=runs/lmc_digits
"""

import ml_collections

from experiments import configs
from experiments.configs import stability_lenet_mnist

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 2 replicates x 2 copies, 4 epochs, 5 alphas; ``'sample'``: CIFAR."""
    chosen = configs.variants(arg, VARIANTS)
    config = stability_lenet_mnist.get_config()
    config.dataset = "digits"
    config.validation_size = 300
    config.training_steps = "20ep"
    config.eval_every = "5ep"
    config.checkpoint_every = "5ep"
    config.rewind_steps = ("0it", "1ep", "5ep")
    if "sample" in chosen:
        quick = "quick" in chosen
        configs.sample_resnet(config, epochs=1 if quick else 6)
        config.validation_size = 0
        config.num_replicates = 1
        config.num_copies = 2
        config.rewind_steps = ("0it", "10it") if quick else ("0it", "1ep")
        config.num_alphas = 5
        config.alpha_chunk = 5
        if quick:  # a smoke run: under 2 minutes cold on a 2-core CPU
            configs.smoke_steps(config)
            config.rewind_steps = ("0it", "5it")
            config.num_alphas = config.alpha_chunk = 3
            config.reset_batches = "2"  # BatchNorm statistics at each alpha from 2 batches
            config.path_splits = ("test",)  # the path on 3600 training images: a minute
    elif "quick" in chosen:
        config.num_replicates = 2
        config.num_copies = 2
        config.training_steps = "4ep"
        config.eval_every = "2ep"
        config.checkpoint_every = "2ep"
        config.rewind_steps = ("0it", "1ep")
        config.num_alphas = 5
    return config
