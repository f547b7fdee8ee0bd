"""Early-Bird tickets of a BatchNorm MLP 784-512-512-10 on MNIST (neuron masks).

The reference's recipe scaled to MNIST (GATECH-EIC/Early-Bird-Tickets
``scripts/standard-train/search.sh``: SGD 0.1, momentum 0.9, weight decay
1e-4, learning rate x0.1 at 50 % and 75 % of training, slimming L1 1e-4; batch
128 here), 20 epochs, pruning ratios {0.3, 0.5, 0.7}, a window of 5 masks and
distance threshold 0.1, 2 replicates; the tickets retrain from a fresh init for
the full schedule (``--config.retrain=resume_schedule``: from their Early-Bird
epoch on, as the paper's EB Train).

    LTJAX_DATA_DIR=../shared/data python -m experiments.early_bird \\
        --config=experiments/configs/early_bird_mlp_mnist.py --workdir=runs/early_bird
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_mnist

VARIANTS = ("quick",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 6 epochs of a 128-128 MLP."""
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_mnist.get_config()
    config.model = "mlp_bn"
    config.model_kwargs = ml_collections.ConfigDict(dict(widths=(512, 512), bn_init="ones"))
    config.validation_size = 0
    config.num_replicates = 2
    config.recipe.optimizer = "sgd"
    config.recipe.learning_rate = 0.1
    config.recipe.momentum = 0.9
    config.recipe.weight_decay = 1e-4
    config.recipe.batch_size = 128
    config.recipe.augment = False
    config.recipe.lr_drops = ("10ep", "15ep")
    config.training_steps = "20ep"
    config.eval_every = "5ep"
    config.checkpoint_every = "1ep"
    config.max_checkpoints = 1
    config.slimming = 1e-4
    config.ratios = (0.3, 0.5, 0.7)
    config.window = 5
    config.threshold = 0.1
    # 'scratch': the tickets retrain for the full schedule (main_scratch.py);
    # 'resume_schedule': from their Early-Bird epoch on (main_c.py, the paper's EB Train).
    config.retrain = "scratch"
    if "quick" in chosen:
        config.model_kwargs.widths = (128, 128)
        config.recipe.lr_drops = ("3ep", "4ep")
        config.training_steps = "6ep"
        config.eval_every = "6ep"
    return config
