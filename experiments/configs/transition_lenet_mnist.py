"""The instability transition on a CPU: LeNet-300-100 on MNIST with a large SGD step.

Frankle et al. 2020 (Figures 3-6) find ResNet-20 and VGG-16 on CIFAR-10
unstable to SGD noise at initialisation and stable after ~3 % of training;
LeNet with Adam is stable at k = 0 (docs/studies/stability.md's LMC reproduction). SGD with
momentum 0.9 at learning rate 0.08, close to where LeNet-300-100 diverges
(0.1 does), makes it unstable at k = 0 on MNIST (the search of issue #14,
docs/studies/stability.md, "Reproduce the instability transition"). 10 epochs (9160 iterations),
batch 60, the rate dropped 10x at epochs 5 and 8 (the paper's step schedule,
scaled), He-normal init; 2 initialisations x 2 copies. The dense k-sweep
covers 0 to ~10 % of training; IMP rewinds to each k of ``imp_rewind_steps``
and prunes 20 % per level (the output layer 10 %) for ``levels`` levels; the
random-pruning control keeps each layer's count.

    python -m experiments.transition --config=experiments/configs/transition_lenet_mnist.py \\
        --workdir=runs/transition
"""

import ml_collections

from experiments import configs
from experiments.configs import imp_lenet_mnist, stability_lenet_mnist

VARIANTS = ("quick",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 300 iterations, 2 levels, k in {0, 50it}."""
    chosen = configs.variants(arg, VARIANTS)
    config = stability_lenet_mnist.get_config()
    imp_config = imp_lenet_mnist.get_config("imp_only,lmc")
    for field in ("levels", "rewind_step", "rewind_optimizer", "sgd_noise", "pruning",
                  "controls", "max_checkpoints", "ticket_learning_rates", "ticket_masks",
                  "ticket_similar",
                  "correlation_p"):
        config[field] = imp_config[field]
    config.recipe.optimizer = "sgd"
    config.recipe.learning_rate = 0.08
    config.recipe.momentum = 0.9
    config.recipe.lr_drops = ("5ep", "8ep")
    config.training_steps = "10ep"
    config.eval_every = "2ep"
    config.checkpoint_every = "5ep"
    config.num_replicates = 2
    config.num_copies = 2
    config.num_alphas = 11
    config.alpha_chunk = 11
    config.path_splits = ("test",)
    config.rewind_steps = ("0it", "10it", "25it", "50it", "100it", "250it", "500it", "1000it")
    config.imp_rewind_steps = ("0it", "25it", "250it")
    config.levels = 12  # 0.8^12 = 6.9 % of the hidden weights
    config.matching_within = 0.005  # matching: within 0.5 pp of the dense accuracy
    if "quick" in chosen:
        config.training_steps = "300it"
        config.eval_every = "100it"
        config.checkpoint_every = "100it"
        config.rewind_steps = ("0it", "50it")
        config.imp_rewind_steps = ("0it", "50it")
        config.recipe.lr_drops = ("150it", "240it")
        config.levels = 2
    return config
