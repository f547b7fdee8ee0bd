"""The data diet on LeNet-300-100 / scikit-learn's digits: offline, seconds long.

``:sample``: ResNet-20 on the 4000-image CIFAR-10 sample in ``$LTJAX_DATA_DIR``, EL2N
after 2 epochs of 2 runs, 50 % kept, 6 epochs of steps, 1 replicate (``:quick,sample``,
a smoke run: scores after 5 steps, 10 steps of training).

    python -m experiments.data_diet --config=experiments/configs/data_diet_lenet_digits.py:quick \\
        --workdir=runs/data_diet_q
"""

import ml_collections

from experiments import configs
from experiments.configs import data_diet_lenet_mnist

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 2 score seeds, one kept share, a few epochs; ``'sample'``."""
    chosen = configs.variants(arg, VARIANTS)
    config = data_diet_lenet_mnist.get_config()
    config.dataset = "digits"
    config.training_steps = "16ep"
    config.eval_every = "4ep"
    config.checkpoint_every = "4ep"
    config.score_step = "2ep"
    if "sample" in chosen:
        configs.sample_resnet(config, epochs=2 if "quick" in chosen else 6)
        config.num_replicates = 1
        config.score_seeds = 2
        config.score_step = "1ep" if "quick" in chosen else "2ep"
        config.kept = (0.5,)
        if "quick" in chosen:  # a smoke run: under 2 minutes cold on a 2-core CPU
            configs.smoke_steps(config)
            config.score_step = "5it"
    elif "quick" in chosen:
        config.training_steps = "4ep"
        config.eval_every = "2ep"
        config.checkpoint_every = "2ep"
        config.score_step = "1ep"
        config.score_seeds = 2
        config.kept = (0.5,)
    return config
