"""Early-Bird tickets of a BatchNorm MLP on scikit-learn digits: offline, seconds long.

``:sample`` is ``early_bird_resnet20_cifar10.py:sample`` (ResNet-20's channels
on the 4000-image CIFAR-10 sample, 30 epochs, p = 0.3; ``:quick,sample``: 2 epochs).

    python -m experiments.early_bird \\
        --config=experiments/configs/early_bird_mlp_digits.py:quick --workdir=runs/early_bird_q
"""

import ml_collections

from experiments import configs
from experiments.configs import early_bird_mlp_mnist, early_bird_resnet20_cifar10

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 8 epochs of a 64-64 MLP; ``'sample'``: ResNet-20 on CIFAR."""
    chosen = configs.variants(arg, VARIANTS)
    if "sample" in chosen:
        return early_bird_resnet20_cifar10.get_config(",".join(sorted(chosen)))
    config = early_bird_mlp_mnist.get_config()
    config.dataset = "digits"
    config.model_kwargs.widths = (128, 128)
    config.recipe.batch_size = 60
    config.recipe.lr_drops = ("15ep", "22ep")
    config.training_steps = "30ep"
    config.eval_every = "10ep"
    if "quick" in chosen:
        config.model_kwargs.widths = (64, 64)
        config.recipe.lr_drops = ("4ep", "6ep")
        config.training_steps = "8ep"
        config.eval_every = "8ep"
    return config
