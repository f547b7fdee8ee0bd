"""Learning subspaces with an MLP on scikit-learn digits: offline, seconds long.

    python -m experiments.subspaces --config=experiments/configs/subspaces_mlp_digits.py:quick \
        --workdir=runs/subspaces_q
"""

import ml_collections

from experiments.configs import subspaces_mlp_mnist


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 4 epochs of a 64-64 MLP, 5 alphas."""
    config = subspaces_mlp_mnist.get_config()
    config.dataset = "digits"
    config.model_kwargs.widths = (256, 256)
    config.recipe.batch_size = 60
    config.training_steps = "30ep"
    config.eval_every = "10ep"
    config.checkpoint_every = "10ep"
    if arg == "quick":
        config.model_kwargs.widths = (64, 64)
        config.training_steps = "4ep"
        config.eval_every = "2ep"
        config.checkpoint_every = "2ep"
        config.num_alphas = 5
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; expected 'quick' or nothing")
    return config
