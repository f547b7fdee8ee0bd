"""Instability of LeNet-300-100 on MNIST (Frankle et al. 2020, Figure 3/5 setting).

3 initialisations x 3 data orders at rewind step k = 0, interpolated at 30
alphas on train and test. For the IMP ticket, point it at an IMP workdir of the
same seed, replicate count, recipe and length, rewound to the same k
(``imp_lenet_mnist.py`` with ``--config.num_replicates=3``), level 15 = 3.5 %;
for several k, one IMP run per k: ``--config.imp_workdir=0it=runs/a,500it=runs/b``:

    python -m experiments.stability --config=experiments/configs/stability_lenet_mnist.py \
        --workdir=runs/lmc_dense
    python -m experiments.stability --config=experiments/configs/stability_lenet_mnist.py \
        --workdir=runs/lmc_ticket --config.imp_workdir=runs/lth3 --config.imp_level=15
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_mnist

VARIANTS = ("quick",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 300 iterations, k in (0, 100), 5 alphas."""
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_mnist.get_config("lmc")  # the LMC paper's LeNet: He init, 24K (Table 1)
    config.num_replicates = 3
    config.num_copies = 3
    config.rewind_steps = ("0it",)
    config.num_alphas = 30
    config.path_splits = ("train", "test")
    config.alpha_chunk = 30
    config.recompute_batch_stats = True
    config.reset_batches = "20"  # BatchNorm statistics: a number of batches, or 'epoch'
    config.reset_augment = False  # with 'epoch': the REPAIR notebooks' augmented pass
    config.imp_workdir = ""
    config.imp_level = 0
    # Whose masks train: 'imp' (the ticket) or a control of the IMP run at its density
    # ('random_layerwise': Frankle et al. 2020's random pruning; 'random_global', 'oneshot').
    config.imp_branch = "imp"
    # One IMP run's mask at every k (not the paper's protocol: there, the run rewound to k).
    config.imp_mask_at_any_k = False
    config.checkpoint_every = "8000it"
    config.eval_every = "2000it"
    if "quick" in chosen:
        config.training_steps = "300it"
        config.eval_every = "100it"
        config.checkpoint_every = "100it"
        config.rewind_steps = ("0it", "100it")
        config.num_alphas = config.alpha_chunk = 5  # 30 points on 60K training images: minutes
    return config
