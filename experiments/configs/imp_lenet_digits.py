"""IMP on LeNet-300-100 / scikit-learn digits: offline, seconds long, every control.

    python -m experiments.imp --config=experiments/configs/imp_lenet_digits.py --workdir=runs/imp
"""

import ml_collections

from experiments.configs import imp_lenet_mnist


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 2 levels of 2 epochs."""
    config = imp_lenet_mnist.get_config()
    config.dataset = "digits"
    config.validation_size = 300
    config.training_steps = "20ep"
    config.eval_every = "5ep"
    config.checkpoint_every = "5ep"
    config.levels = 6
    config.controls = ("reinit", "random_layerwise", "random_global", "oneshot", "small_dense")
    if arg == "quick":
        config.training_steps = "4ep"
        config.eval_every = "2ep"
        config.checkpoint_every = "2ep"
        config.levels = 2
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; expected 'quick' or nothing")
    return config
