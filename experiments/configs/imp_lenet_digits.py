"""IMP on LeNet-300-100 / scikit-learn digits: offline, seconds long, every control.

``:sample``: ResNet-20 on the 4000-image CIFAR-10 sample in ``$LTJAX_DATA_DIR``,
3 levels of 6 epochs, the reinit control, 1 replicate, the output layer ``fc``
at half rate (``:quick,sample``: 2 levels of 1 epoch).

``:pretrain_random_labels``, ``:pretrain_rotation``, ``:pretrain_blur``: the dense
net first trains ``pretrain.steps`` (10 epochs; ``:quick``: 1) on altered data
(Frankle, Schwab & Morcos 2020, Section 5), and IMP rewinds to that state
(:mod:`ltjax.studies.imp`).

    python -m experiments.imp --config=experiments/configs/imp_lenet_digits.py --workdir=runs/imp
    python -m experiments.imp --config=experiments/configs/imp_lenet_digits.py:pretrain_rotation \\
        --workdir=runs/imp_rotation
"""

import ml_collections

from experiments import configs
from experiments.configs import imp_lenet_mnist

VARIANTS = ("quick", "sample", "imp_only") + configs.PRETRAIN_VARIANTS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 2 levels of 4 epochs; ``'sample'``: ResNet-20 on CIFAR."""
    chosen = configs.variants(arg, VARIANTS)
    config = imp_lenet_mnist.get_config()
    config.dataset = "digits"
    config.validation_size = 300
    config.training_steps = "20ep"
    config.eval_every = "5ep"
    config.checkpoint_every = "5ep"
    config.levels = 6
    config.controls = ("reinit", "random_layerwise", "random_global", "oneshot", "small_dense")
    if "sample" in chosen:
        configs.sample_resnet(config, epochs=1 if "quick" in chosen else 6)
        config.levels = 2 if "quick" in chosen else 3
        config.controls = ("reinit",)
        config.num_replicates = 1
    elif "quick" in chosen:
        config.training_steps = "4ep"
        config.eval_every = "2ep"
        config.checkpoint_every = "2ep"
        config.levels = 2
    if "imp_only" in chosen:
        config.controls = ()
    configs.add_pretrain(config, chosen, steps="1ep" if "quick" in chosen else "10ep")
    return config
