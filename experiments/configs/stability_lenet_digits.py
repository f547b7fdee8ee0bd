"""Instability on scikit-learn digits: offline and seconds long.

    python -m experiments.stability --config=experiments/configs/stability_lenet_digits.py \
        --workdir=runs/lmc_digits
"""

import ml_collections

from experiments.configs import stability_lenet_mnist


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 2 replicates x 2 copies, 4 epochs, 5 alphas."""
    config = stability_lenet_mnist.get_config()
    config.dataset = "digits"
    config.validation_size = 300
    config.training_steps = "20ep"
    config.eval_every = "5ep"
    config.checkpoint_every = "5ep"
    config.rewind_steps = ("0it", "1ep", "5ep")
    if arg == "quick":
        config.num_replicates = 2
        config.num_copies = 2
        config.training_steps = "4ep"
        config.eval_every = "2ep"
        config.checkpoint_every = "2ep"
        config.rewind_steps = ("0it", "1ep")
        config.num_alphas = 5
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; expected 'quick' or nothing")
    return config
