"""Pruning at initialisation on LeNet-300-100 / scikit-learn digits: offline, about a minute.

``:sample``: ResNet-20 on the 4000-image CIFAR-10 sample in ``$LTJAX_DATA_DIR``,
6 epochs, density 10 %, every method, 10 SynFlow rounds, the ablations none and
reinit, 1 replicate (``:quick,sample``, a smoke run: 10 steps, methods magnitude, SNIP, random).

    python -m experiments.prune_at_init \
        --config=experiments/configs/prune_at_init_lenet_digits.py:quick --workdir=runs/pai
"""

import ml_collections

from experiments import configs
from experiments.configs import prune_at_init_lenet_mnist

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 4 epochs, one density, 10 SynFlow rounds, 2 replicates."""
    chosen = configs.variants(arg, VARIANTS)
    config = prune_at_init_lenet_mnist.get_config()
    config.dataset = "digits"
    config.recipe.batch_size = 60
    config.training_steps = "20ep"
    config.eval_every = "20ep"
    config.checkpoint_every = "5ep"
    config.densities = (0.1, 0.032)
    if "sample" in chosen:
        quick = "quick" in chosen
        configs.sample_resnet(config, epochs=1 if quick else 6)
        config.num_replicates = 1
        config.densities = (0.1,)
        config.synflow_rounds = 10
        config.ablations = ("none", "reinit")
        if quick:  # a smoke run: under 2 minutes cold on a 2-core CPU
            config.methods = ("magnitude", "snip", "random")
            configs.smoke_steps(config)
    elif "quick" in chosen:
        config.training_steps = "4ep"
        config.eval_every = "4ep"
        config.checkpoint_every = "2ep"
        config.densities = (0.1,)
        config.synflow_rounds = 10
    return config
