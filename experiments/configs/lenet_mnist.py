"""LeNet-300-100 on MNIST with the LTH paper's recipe (Frankle & Carbin 2019, Figure 2).

Adam 1.2e-3, batch 60, 50K iterations, Gaussian Glorot kernels, zero biases,
5000 training images held out for validation. ``:lmc``: the recipe of the LMC
paper's Table 1 (Frankle et al. 2020) as OpenLTH runs it: He-normal kernels,
24K iterations (the default before 1 December 2026).

Needs ``mnist/mnist.npz`` under ``$LTJAX_DATA_DIR`` (or tfds with a network).

    python -m experiments.train --config=experiments/configs/lenet_mnist.py --workdir=runs/mnist
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_digits

VARIANTS = ("quick", "telemetry", "lmc")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'`` trains 200 iterations; ``'telemetry'`` logs Frankle et al.
    2020's telemetry (``config.telemetry``: every 50 steps to 2000, then every 500);
    ``'lmc'``: He-normal kernels and 24K iterations (LMC paper, Table 1; OpenLTH's init)."""
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_digits.get_config()
    config.dataset = "mnist"
    config.validation_size = 5000  # as the LTH paper (Frankle & Carbin 2019)
    config.training_steps = "50000it"  # LTH paper, Figure 2 (Frankle & Carbin 2019)
    config.eval_every = "1000it"
    config.checkpoint_every = "5000it"
    config.eval_train = False
    config.num_replicates = 2
    # ltjax.models.common.KERNEL_INITS / BIAS_INITS: 'glorot_normal' (the LTH paper's
    # Gaussian Glorot), 'he_normal' (OpenLTH's kaiming_normal); 'zeros' (the LTH paper's
    # code) or 'torch_uniform' biases (OpenLTH keeps torch's default).
    config.model_kwargs = ml_collections.ConfigDict(dict(kernel_init="glorot_normal",
                                                         bias_init="zeros"))
    if "lmc" in chosen:
        config.model_kwargs.kernel_init = "he_normal"
        config.training_steps = "24000it"  # LMC paper, Table 1 (Frankle et al. 2020)
        config.checkpoint_every = "4000it"
    if "quick" in chosen:
        config.training_steps = "200it"
        config.eval_every = "100it"
        config.checkpoint_every = "100it"
    if "telemetry" in chosen:
        configs.add_telemetry(config)
    return config
