"""SupSup on permuted scikit-learn digits (8x8): offline, seconds long.

:mod:`experiments.configs.supsup_lenet_mnist` on ``digits`` (100 outputs
too): 5 tasks, 300 iterations of batch 60, Adam 3e-3 (the digits set is
small: a larger step than MNIST's RMSProp 1e-4). ``:quick``: 3 tasks, 100
iterations. ``:sample``: Conv-4 (one of Ramanujan et al.'s CIFAR networks) on
the 4000-image CIFAR-10 sample, 3 permuted-pixel tasks, 2 epochs
(``:quick,sample``, a smoke run: 2 tasks, 10 steps).

    python -m experiments.supsup \\
        --config=experiments/configs/supsup_lenet_digits.py:quick --workdir=runs/supsup_q
"""

import ml_collections

from experiments import configs
from experiments.configs import supsup_lenet_mnist

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 3 tasks, 100 iterations; ``'sample'``: Conv-4 on CIFAR."""
    chosen = configs.variants(arg, VARIANTS)
    config = supsup_lenet_mnist.get_config()
    config.dataset = "digits"
    config.recipe.batch_size = 60
    config.recipe.optimizer = "adam"
    config.recipe.learning_rate = 3e-3
    config.num_tasks = 5
    config.training_steps = "300it"
    config.eval_every = "100it"
    config.checkpoint_every = "100it"
    if "sample" in chosen:
        configs.use_sample(config)
        config.model = "conv4"
        config.model_kwargs = ml_collections.ConfigDict()
        config.recipe.batch_size = 128
        config.recipe.learning_rate = 1e-3
        epochs = 1 if "quick" in chosen else 2
        config.num_tasks = 2 if "quick" in chosen else 3
        config.training_steps = f"{epochs}ep"
        config.eval_every = f"{epochs}ep"
        config.checkpoint_every = "1ep"
        config.binary = False  # conv gradients in a rolled loop are slow on CPU
        if "quick" in chosen:  # a smoke run: under 2 minutes cold on a 2-core CPU
            configs.smoke_steps(config)
    elif "quick" in chosen:
        config.num_tasks = 3
        config.training_steps = "100it"
        config.eval_every = "50it"
        config.checkpoint_every = "50it"
    return config
