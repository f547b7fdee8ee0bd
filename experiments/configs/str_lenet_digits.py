"""STR on LeNet-300-100 / scikit-learn digits: offline, about a minute.

``:sample``: ResNet-20 on the 4000-image CIFAR-10 sample in ``$LTJAX_DATA_DIR``,
15 epochs with a cosine decay, ``s_init=-5``, weight decay 5e-4, 1 replicate
(``:sample,quick``: 1 epoch).

    python -m experiments.str --config=experiments/configs/str_lenet_digits.py:quick \
        --workdir=runs/str_q
"""

import ml_collections

from experiments import configs
from experiments.configs import str_lenet_mnist

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 4 epochs, one s_init, two decays; ``'sample'``: ResNet-20."""
    chosen = configs.variants(arg, VARIANTS)
    config = str_lenet_mnist.get_config()
    config.dataset = "digits"
    config.recipe.batch_size = 60
    config.recipe.total_steps = "40ep"
    config.training_steps = "40ep"
    config.eval_every = "40ep"
    config.checkpoint_every = "10ep"
    config.weight_decays = (1e-4, 1e-3, 5e-3)
    if "sample" in chosen:
        epochs = 1 if "quick" in chosen else 15
        configs.sample_resnet(config, epochs=epochs)
        config.recipe.schedule = "cosine"
        config.recipe.lr_drops = ()
        config.recipe.total_steps = f"{epochs}ep"
        config.s_inits = (-5.0,)
        config.weight_decays = (5e-4,)
        config.num_replicates = 1
    elif "quick" in chosen:
        config.recipe.total_steps = "4ep"
        config.training_steps = "4ep"
        config.eval_every = "4ep"
        config.checkpoint_every = "2ep"
        config.s_inits = (-5.0,)
        config.weight_decays = (1e-4, 5e-3)
    return config
