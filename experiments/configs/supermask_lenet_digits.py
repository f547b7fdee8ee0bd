"""Edge-popup on a bias-free LeNet-300-100 / scikit-learn digits: offline, seconds long.

``:sample``: Conv-4 on the 4000-image CIFAR-10 sample in ``$LTJAX_DATA_DIR``
(one of Ramanujan et al.'s CIFAR networks), SGD 0.1 with a cosine decay over
6 epochs, densities {0.3, 0.5}, 1 replicate (``:quick,sample``, a smoke run: 10 steps).

    python -m experiments.supermask \\
        --config=experiments/configs/supermask_lenet_digits.py:quick --workdir=runs/supermask_q
"""

import ml_collections

from experiments import configs
from experiments.configs import supermask_lenet_mnist

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 4 epochs, densities {0.1, 0.5}; ``'sample'``: Conv-4 on CIFAR."""
    chosen = configs.variants(arg, VARIANTS)
    config = supermask_lenet_mnist.get_config()
    config.dataset = "digits"
    config.recipe.batch_size = 60
    config.recipe.total_steps = "30ep"
    config.training_steps = "30ep"
    config.eval_every = "10ep"
    config.checkpoint_every = "10ep"
    if "sample" in chosen:
        epochs = 1 if "quick" in chosen else 6
        configs.use_sample(config)
        config.model = "conv4"
        config.model_kwargs = ml_collections.ConfigDict()
        config.recipe.batch_size = 128
        config.recipe.total_steps = f"{epochs}ep"
        config.training_steps = f"{epochs}ep"
        config.eval_every = f"{epochs}ep"
        config.checkpoint_every = f"{max(1, epochs // 3)}ep"
        config.densities = (0.3, 0.5)
        config.num_replicates = 1
        if "quick" in chosen:  # a smoke run: under 2 minutes cold on a 2-core CPU
            configs.smoke_steps(config)
    elif "quick" in chosen:
        config.recipe.total_steps = "4ep"
        config.training_steps = "4ep"
        config.eval_every = "2ep"
        config.checkpoint_every = "2ep"
        config.densities = (0.1, 0.5)
    return config
