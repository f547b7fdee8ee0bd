"""BatchNorm-only training of an MLP 784-512-512-10 with BatchNorm on MNIST, and controls.

SGD 0.1 with momentum 0.9 and a cosine decay, weight decay 1e-4 (frozen
parameters get none), batch 128, 10 epochs, 2 replicates; arms full,
BatchNorm only, BatchNorm + output layer, output layer only, and as many
random non-BatchNorm parameters as BatchNorm has (``random_control``:
``'per_channel'``, the paper's 2 per output channel of each hidden layer, or
``'global'``, drawn over all non-BatchNorm entries).

    python -m experiments.bn_only --config=experiments/configs/bn_only_mlp_mnist.py \
        --workdir=runs/bn_only
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_mnist

VARIANTS = ("quick",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 300 iterations of a 256-256 MLP."""
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_mnist.get_config()
    config.model = "mlp_bn"
    config.model_kwargs = ml_collections.ConfigDict(dict(widths=(512, 512), bn_init="ones"))
    config.validation_size = 0
    config.eval_train = False
    config.num_replicates = 2
    config.recipe.optimizer = "sgd"
    config.recipe.learning_rate = 0.1
    config.recipe.momentum = 0.9
    config.recipe.weight_decay = 1e-4
    config.recipe.batch_size = 128
    config.recipe.schedule = "cosine"
    config.recipe.total_steps = "10ep"
    config.training_steps = "10ep"
    config.eval_every = "5ep"
    config.checkpoint_every = "5ep"
    config.max_checkpoints = 1
    config.arms = ("full", "batchnorm", "batchnorm_output", "output", "random")
    config.random_control = "per_channel"
    if "quick" in chosen:
        config.model_kwargs.widths = (256, 256)
        config.recipe.total_steps = "300it"
        config.training_steps = "300it"
        config.eval_every = "300it"
        config.checkpoint_every = "100it"
    return config
