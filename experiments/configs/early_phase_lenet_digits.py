"""Perturbations at the rewind point on scikit-learn digits: offline, seconds long.

    python -m experiments.early_phase \\
        --config=experiments/configs/early_phase_lenet_digits.py:quick --workdir=runs/early_q
"""

import ml_collections

from experiments.configs import early_phase_lenet_mnist


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 3 epochs, IMP level 2 made by the study, k in {0, 10it}."""
    config = early_phase_lenet_mnist.get_config()
    config.dataset = "digits"
    config.validation_size = 0
    config.training_steps = "20ep"
    config.eval_every = "10ep"
    config.checkpoint_every = "10ep"
    config.imp_level = 4
    config.rewind_steps = ("0it", "50it")
    if arg == "quick":
        config.training_steps = "3ep"
        config.eval_every = "3ep"
        config.checkpoint_every = "1ep"
        config.imp_level = 2
        config.rewind_steps = ("0it", "10it")
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; expected 'quick' or nothing")
    return config
