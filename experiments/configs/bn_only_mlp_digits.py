"""BatchNorm-only training of a BatchNorm MLP on scikit-learn digits: offline, seconds long.

``:sample`` is the CIFAR ResNet version: ResNet-20 with U[0, 1] BatchNorm scales
(OpenLTH's CIFAR ResNets) on the 4000-image CIFAR-10 sample in
``$LTJAX_DATA_DIR``, 15 epochs, arms full / BatchNorm / random, 1 replicate
(``:sample,quick``: 1 epoch).

    python -m experiments.bn_only --config=experiments/configs/bn_only_mlp_digits.py:quick \
        --workdir=runs/bn_q
    LTJAX_DATA_DIR=../shared/data python -m experiments.bn_only \
        --config=experiments/configs/bn_only_mlp_digits.py:sample --workdir=runs/bn_sample
"""

import ml_collections

from experiments import configs
from experiments.configs import bn_only_mlp_mnist

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 4 epochs of a 64-64 MLP; ``'sample'``: ResNet-20 on CIFAR."""
    chosen = configs.variants(arg, VARIANTS)
    config = bn_only_mlp_mnist.get_config()
    config.dataset = "digits"
    config.model_kwargs.widths = (256, 256)
    config.recipe.batch_size = 60
    config.recipe.total_steps = "30ep"
    config.training_steps = "30ep"
    config.eval_every = "10ep"
    config.checkpoint_every = "10ep"
    if "sample" in chosen:
        configs.sample_resnet(config, epochs=1 if "quick" in chosen else 15,
                                       bn_init="uniform")
        config.arms = ("full", "batchnorm", "random")
        config.num_replicates = 1
    elif "quick" in chosen:
        config.model_kwargs.widths = (64, 64)
        config.recipe.total_steps = "4ep"
        config.training_steps = "4ep"
        config.eval_every = "2ep"
        config.checkpoint_every = "2ep"
    return config
