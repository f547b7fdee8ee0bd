"""STR on LeNet-300-100 / scikit-learn digits: offline, about a minute.

    python -m experiments.str --config=experiments/configs/str_lenet_digits.py:quick \
        --workdir=runs/str_q
"""

import ml_collections

from experiments.configs import str_lenet_mnist


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 4 epochs, one s_init, two decays."""
    config = str_lenet_mnist.get_config()
    config.dataset = "digits"
    config.recipe.batch_size = 60
    config.recipe.total_steps = "40ep"
    config.training_steps = "40ep"
    config.eval_every = "40ep"
    config.checkpoint_every = "10ep"
    config.weight_decays = (1e-4, 1e-3, 5e-3)
    if arg == "quick":
        config.recipe.total_steps = "4ep"
        config.training_steps = "4ep"
        config.eval_every = "4ep"
        config.checkpoint_every = "2ep"
        config.s_inits = (-5.0,)
        config.weight_decays = (1e-4, 5e-3)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; expected 'quick' or nothing")
    return config
