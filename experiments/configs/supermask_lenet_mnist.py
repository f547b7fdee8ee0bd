"""Edge-popup on a bias-free LeNet-300-100 / MNIST (Ramanujan et al. 2020's FC network).

The reference recipe (allenai/hidden-networks: SGD 0.1, momentum 0.9, cosine,
weight decay 1e-4 on the scores, batch 128) for 5 epochs instead of 100;
densities {0.1, 0.3, 0.5, 0.7, 0.9} x {signed constant, Kaiming normal}, 2
replicates, all 20 members in one program.

    LTJAX_DATA_DIR=../shared/data python -m experiments.supermask \\
        --config=experiments/configs/supermask_lenet_mnist.py --workdir=runs/supermask
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_mnist

VARIANTS = ("quick", "bernoulli", "dnw")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 300 iterations.

    ``'bernoulli'``: Zhou et al. 2019's learned Bernoulli supermask
    (``method='bernoulli'``) over the init and its signed constant, trained by
    Adam at 0.1 without weight decay (our calibration: the logits' gradients are
    ``W g sigma'(m)`` with ``|W| ~ 0.05``, and the edge-popup recipe's SGD at 0.1
    leaves them near 0, at 18-21 % accuracy after 5 epochs; SGD at 100 with
    momentum 0.9 reached 95.3-95.6 %). ``'dnw'``: Wortsman et al. 2019's
    Discovering Neural Wirings at ``config.densities`` with the edge-popup recipe.
    """
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_mnist.get_config()
    config.model_kwargs = ml_collections.ConfigDict(dict(use_bias=False))
    config.validation_size = 0
    config.num_replicates = 2
    config.recipe.optimizer = "sgd"
    config.recipe.learning_rate = 0.1
    config.recipe.momentum = 0.9
    config.recipe.weight_decay = 1e-4
    config.recipe.batch_size = 128
    config.recipe.augment = False
    config.recipe.schedule = "cosine"
    config.recipe.total_steps = "5ep"
    config.training_steps = "5ep"
    config.eval_every = "1ep"
    config.checkpoint_every = "1ep"
    config.max_checkpoints = 1
    config.method = "edge_popup"  # or 'zhou' (supermask_zhou_lenet_mnist.py)
    config.densities = (0.1, 0.3, 0.5, 0.7, 0.9)
    config.weight_inits = ("signed_constant", "kaiming_normal")
    if {"bernoulli", "dnw"} <= chosen:
        raise ValueError("the variants 'bernoulli' and 'dnw' are two methods: choose one")
    if "bernoulli" in chosen:
        config.method = "bernoulli"
        config.recipe.optimizer = "adam"
        config.recipe.momentum = 0.0
        config.recipe.learning_rate = 0.1
        config.recipe.weight_decay = 0.0
    if "dnw" in chosen:
        config.method = "dnw"
    if "quick" in chosen:
        config.recipe.total_steps = "300it"
        config.training_steps = "300it"
        config.eval_every = "300it"
        config.checkpoint_every = "100it"
    return config
