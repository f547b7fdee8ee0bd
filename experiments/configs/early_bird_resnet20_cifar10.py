"""Early-Bird tickets of ResNet-20 on CIFAR-10 (channel masks on every BatchNorm).

The LMC recipe (SGD 0.1, momentum 0.9, weight decay 1e-4, batch 128,
augmentation) with network slimming 1e-4 for 160 epochs, drops at 80 and 120
(the reference's schedule); pruning ratios {0.3, 0.5, 0.7}. Needs
``cifar10/cifar10.npz`` under ``$LTJAX_DATA_DIR`` (or tfds with a network): a
GPU job. ``:sample``: the 4000-image CIFAR-10 sample, 30 epochs, p = 0.3, 1
replicate; ``:quick``: 2 epochs.

    LTJAX_DATA_DIR=../shared/data python -m experiments.early_bird \\
        --config=experiments/configs/early_bird_resnet20_cifar10.py:sample --workdir=runs/eb_r20
"""

import ml_collections

from experiments import configs
from experiments.configs import early_bird_mlp_mnist, resnet20_cifar10

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; variants ``sample`` and ``quick`` (composable: ``sample,quick``)."""
    chosen = configs.variants(arg, VARIANTS)
    config = early_bird_mlp_mnist.get_config()
    base = resnet20_cifar10.get_config()
    config.dataset = base.dataset
    config.model = "resnet20"
    config.model_kwargs = ml_collections.ConfigDict()
    config.recipe = base.recipe
    config.recipe.lr_drops = ("80ep", "120ep")
    config.training_steps = "160ep"
    config.eval_every = "10ep"
    config.checkpoint_every = "1ep"
    if "sample" in chosen:
        configs.sample_resnet(config, epochs=30)
        config.checkpoint_every = "1ep"
        config.ratios = (0.3,)
        config.num_replicates = 1
    if "quick" in chosen:
        config.recipe.lr_drops = ()
        config.training_steps = "2ep"
        config.eval_every = "2ep"
    return config
