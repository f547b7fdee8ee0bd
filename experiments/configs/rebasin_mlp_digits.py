"""Git Re-Basin on scikit-learn digits: offline, seconds long.

    python -m experiments.rebasin --config=experiments/configs/rebasin_mlp_digits.py \\
        --workdir=runs/rebasin_digits
    python -m experiments.rebasin --config=experiments/configs/rebasin_mlp_digits.py:quick \\
        --workdir=runs/rebasin_q --config.method=ste
"""

import ml_collections

from experiments.configs import rebasin_mlp_mnist


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: MLP 64-64, 3 models, 5 epochs, 9 alphas, sparse at 20 %."""
    config = rebasin_mlp_mnist.get_config()
    config.dataset = "digits"
    config.model_kwargs = ml_collections.ConfigDict({"widths": (128, 128)})
    config.training_steps = "30ep"
    config.eval_every = "10ep"
    config.checkpoint_every = "10ep"
    config.recipe.batch_size = 60
    config.matching.num_examples = 1000
    config.matching.ste_steps = 50
    config.matching.ste_batch_size = 60
    config.repair.num_examples = 1000
    config.matching.restarts = 2
    config.sparse.density = 0.2
    config.sparse.ticket = True
    if arg == "quick":
        config.model_kwargs = ml_collections.ConfigDict({"widths": (64, 64)})
        config.num_replicates = 3
        config.training_steps = "5ep"
        config.eval_every = "5ep"
        config.checkpoint_every = "5ep"
        config.num_alphas = 9
        config.alpha_chunk = 9
        config.matching.ste_steps = 5
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; expected 'quick' or nothing")
    return config
