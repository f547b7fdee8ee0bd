"""Early-Bird tickets of a BatchNorm MLP on scikit-learn digits: offline, seconds long.

    python -m experiments.early_bird \\
        --config=experiments/configs/early_bird_mlp_digits.py:quick --workdir=runs/early_bird_q
"""

import ml_collections

from experiments.configs import early_bird_mlp_mnist


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 8 epochs of a 64-64 MLP."""
    config = early_bird_mlp_mnist.get_config()
    config.dataset = "digits"
    config.model_kwargs.widths = (128, 128)
    config.recipe.batch_size = 60
    config.recipe.lr_drops = ("15ep", "22ep")
    config.training_steps = "30ep"
    config.eval_every = "10ep"
    if arg == "quick":
        config.model_kwargs.widths = (64, 64)
        config.recipe.lr_drops = ("4ep", "6ep")
        config.training_steps = "8ep"
        config.eval_every = "8ep"
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; expected 'quick' or nothing")
    return config
