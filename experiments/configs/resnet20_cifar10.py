"""ResNet-20 on CIFAR-10 with the LMC paper's recipe (Frankle et al. 2020, Table 1).

SGD momentum 0.9, lr 0.1 dropped 10x at 32K and 48K of 63K iterations, batch
128, weight decay 1e-4, augmentation (pad-4 crop, flip). Needs
``cifar10/cifar10.npz`` under ``$LTJAX_DATA_DIR`` or tfds with a network.
``:sample`` trains on the 4000-image sample in ../shared/data (3600/400 split).

    python -m experiments.train --config=experiments/configs/resnet20_cifar10.py --workdir=runs/r20
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_digits

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 20 iterations; ``'sample'``: the 4000-image CIFAR sample."""
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_digits.get_config()
    config.dataset = "cifar10"
    config.model = "resnet20"
    config.num_replicates = 2
    config.training_steps = "63000it"
    config.eval_every = "2000it"
    config.checkpoint_every = "2000it"
    config.eval_train = False
    config.recipe = ml_collections.ConfigDict(dict(
        optimizer="sgd", learning_rate=0.1, momentum=0.9, batch_size=128, weight_decay=1e-4,
        warmup=0, lr_drops=("32000it", "48000it"), lr_drop_factor=0.1, label_smoothing=0.0,
        augment=True,
        # optim.Recipe: nesterov SGD; weight_decay_mode 'coupled' | 'decoupled' ('' = the
        # optimizer's default); schedule 'step' | 'cosine' (cosine decays to 0 at total_steps).
        nesterov=False, weight_decay_mode="", schedule="step", total_steps="",
    ))
    if "sample" in chosen:
        configs.use_sample(config)
        config.training_steps = "20ep"
        config.eval_every = "2ep"
        config.checkpoint_every = "2ep"
        config.recipe.lr_drops = ("10ep", "15ep")
    if "quick" in chosen:
        config.training_steps = "20it"
        config.eval_every = "10it"
        config.checkpoint_every = "10it"
    return config
