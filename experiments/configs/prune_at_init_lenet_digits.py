"""Pruning at initialisation on LeNet-300-100 / scikit-learn digits: offline, about a minute.

    python -m experiments.prune_at_init \
        --config=experiments/configs/prune_at_init_lenet_digits.py:quick --workdir=runs/pai
"""

import ml_collections

from experiments.configs import prune_at_init_lenet_mnist


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 4 epochs, one density, 10 SynFlow rounds, 2 replicates."""
    config = prune_at_init_lenet_mnist.get_config()
    config.dataset = "digits"
    config.recipe.batch_size = 60
    config.training_steps = "20ep"
    config.eval_every = "20ep"
    config.checkpoint_every = "5ep"
    config.densities = (0.1, 0.032)
    if arg == "quick":
        config.training_steps = "4ep"
        config.eval_every = "4ep"
        config.checkpoint_every = "2ep"
        config.densities = (0.1,)
        config.synflow_rounds = 10
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; expected 'quick' or nothing")
    return config
