"""STR on LeNet-300-100 / MNIST: a grid of s_init x weight decay, with baselines.

SGD with momentum 0.9, learning rate 0.1 with a cosine decay over 15 epochs,
batch 128, 2 replicates; s_init in {-10, -5} x weight decay in
{2e-4, 1e-3, 2e-3} (the thresholds decay with the member's weight decay).
Baselines: the dense net (weight decay 1e-4) and one-shot global magnitude
pruning of it to each STR member's sparsity, retrained 15 epochs.

    python -m experiments.str --config=experiments/configs/str_lenet_mnist.py --workdir=runs/str
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_mnist

VARIANTS = ("quick",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 300 iterations, one s_init, two decays."""
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_mnist.get_config("lmc")  # He init, as in docs/studies/str.md
    config.validation_size = 0
    config.eval_train = False
    config.num_replicates = 2
    config.recipe.optimizer = "sgd"
    config.recipe.learning_rate = 0.1
    config.recipe.momentum = 0.9
    config.recipe.weight_decay = 1e-4
    config.recipe.batch_size = 128
    config.recipe.schedule = "cosine"
    config.recipe.total_steps = "15ep"
    config.training_steps = "15ep"
    config.eval_every = "15ep"
    config.checkpoint_every = "5ep"
    config.max_checkpoints = 1
    config.s_inits = (-10.0, -5.0)
    config.weight_decays = (2e-4, 1e-3, 2e-3)
    config.oneshot_baseline = True
    config.scope = "global"
    if "quick" in chosen:
        config.recipe.total_steps = "300it"
        config.training_steps = "300it"
        config.eval_every = "300it"
        config.checkpoint_every = "100it"
        config.s_inits = (-5.0,)
        config.weight_decays = (1e-4, 1e-3)
    return config
