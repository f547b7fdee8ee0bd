"""Edge-popup on a bias-free LeNet-300-100 / scikit-learn digits: offline, seconds long.

    python -m experiments.supermask \\
        --config=experiments/configs/supermask_lenet_digits.py:quick --workdir=runs/supermask_q
"""

import ml_collections

from experiments.configs import supermask_lenet_mnist


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 4 epochs, densities {0.1, 0.5}."""
    config = supermask_lenet_mnist.get_config()
    config.dataset = "digits"
    config.recipe.batch_size = 60
    config.recipe.total_steps = "30ep"
    config.training_steps = "30ep"
    config.eval_every = "10ep"
    config.checkpoint_every = "10ep"
    if arg == "quick":
        config.recipe.total_steps = "4ep"
        config.training_steps = "4ep"
        config.eval_every = "2ep"
        config.checkpoint_every = "2ep"
        config.densities = (0.1, 0.5)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; expected 'quick' or nothing")
    return config
