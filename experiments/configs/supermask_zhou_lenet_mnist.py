"""Zhou et al. 2019's untrained supermasks of LeNet-300-100 / MNIST from an IMP run.

The masks come from the init and the trained dense weights (level 0) of an
IMP run with this seed, model and data (``imp_lenet_mnist.py:imp_only,lmc``,
given as ``--config.imp_workdir``); each layer keeps the density's share of
the highest criterion scores, and the masked *init* is evaluated untrained.

    LTJAX_DATA_DIR=../shared/data python -m experiments.supermask \\
        --config=experiments/configs/supermask_zhou_lenet_mnist.py --workdir=runs/zhou \\
        --config.imp_workdir=runs/lth_imp
"""

import ml_collections

from experiments import configs
from experiments.configs import imp_lenet_mnist

VARIANTS: tuple[str, ...] = ()  # nothing is trained; the IMP run's config sets the scale


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config (no variants: nothing is trained)."""
    configs.variants(arg, VARIANTS)
    config = imp_lenet_mnist.get_config("imp_only,lmc")  # He init, 24K: docs/studies/supermasks.md
    config.method = "zhou"
    config.imp_workdir = ""
    config.criteria = ("large_final_same_sign", "large_final", "large_init", "movement",
                       "magnitude_increase", "small_final")
    config.densities = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
    config.weight_inits = ("init", "signed_constant")  # the kept weights' values
    return config
