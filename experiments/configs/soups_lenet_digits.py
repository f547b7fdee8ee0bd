"""Model soups and WiSE-FT on scikit-learn's digits: offline, under a minute on 2 CPU cores.

    python -m experiments.soups --config=experiments/configs/soups_lenet_digits.py \
        --workdir=runs/soups_digits
    python -m experiments.soups --config=experiments/configs/soups_lenet_digits.py:quick \
        --workdir=runs/soups_q
"""

import ml_collections

from experiments.configs import soups_lenet_mnist


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config (16 ingredients); ``'quick'``: 2 recipes x 2 epochs x 2 orders, 8 ingredients."""
    config = soups_lenet_mnist.get_config()
    config.dataset = "digits"
    config.validation_size = 300
    config.eval_every = "5ep"
    config.checkpoint_every = "5ep"
    config.pretrain.steps = "20ep"
    config.pretrain.rotation = 30.0
    config.finetune.learning_rate = (3e-4, 1e-3)
    config.finetune.weight_decay = (1e-4,)
    config.finetune.warmup = "5it"  # 18 steps make an epoch
    config.finetune.label_smoothing = (0.0, 0.1)
    config.finetune.epochs = ("5ep", "10ep")
    config.shift.amount = 20.0
    config.learned_soup.num_steps = 100
    if arg == "quick":
        config.finetune.learning_rate = (1e-3,)
        config.pretrain.steps = "2ep"
        config.finetune.epochs = ("1ep", "2ep")
        config.eval_every = "1ep"
        config.checkpoint_every = "1ep"
        config.learned_soup.num_steps = 10
        config.wise_ft.num_alphas = 3
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; expected 'quick' or nothing")
    return config
