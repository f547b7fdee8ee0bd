"""LeNet-300-100 on MNIST with the LTH paper's recipe (Adam 1.2e-3, batch 60).

Needs ``mnist/mnist.npz`` under ``$LTJAX_DATA_DIR`` (or tfds with a network).

    python -m experiments.train --config=experiments/configs/lenet_mnist.py --workdir=runs/mnist
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_digits

VARIANTS = ("quick", "telemetry")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'`` trains 200 iterations; ``'telemetry'`` logs Frankle et al.
    2020's telemetry (``config.telemetry``: every 50 steps to 2000, then every 500)."""
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_digits.get_config()
    config.dataset = "mnist"
    config.validation_size = 5000  # as the LTH paper (Frankle & Carbin 2019)
    config.training_steps = "24000it"  # LMC paper, Table 1 (Frankle et al. 2020)
    config.eval_every = "1000it"
    config.checkpoint_every = "4000it"
    config.eval_train = False
    config.num_replicates = 2
    if "quick" in chosen:
        config.training_steps = "200it"
        config.eval_every = "100it"
        config.checkpoint_every = "100it"
    if "telemetry" in chosen:
        configs.add_telemetry(config)
    return config
