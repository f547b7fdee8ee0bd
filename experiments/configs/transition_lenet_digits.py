"""The instability transition's mechanics on scikit-learn digits: offline, seconds long.

The MNIST config (:mod:`experiments.configs.transition_lenet_mnist`) on
digits, 20 epochs (``:quick``: 4 epochs, 2 levels, k in {0, 1 epoch}).
``:sample``: ResNet-20 on the 4000-image CIFAR-10 sample in ``$LTJAX_DATA_DIR``
with the LMC recipe scaled to 6 epochs, 1 initialisation x 2 copies, IMP to
level 1 at k in {0, 1 epoch}, 5 alphas (``:quick,sample``, a smoke run: 4 steps, k = 2it
only, 3 alphas, BatchNorm statistics from 2 batches); the paper's setting needs full
CIFAR-10 and a GPU (docs/studies/stability.md).

    python -m experiments.transition \\
        --config=experiments/configs/transition_lenet_digits.py:quick --workdir=runs/transition_q
"""

import ml_collections

from experiments import configs
from experiments.configs import transition_lenet_mnist

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 4 epochs, IMP to level 2, k in {0, 1 epoch}; ``'sample'``:
    ResNet-20 on the CIFAR sample."""
    chosen = configs.variants(arg, VARIANTS)
    config = transition_lenet_mnist.get_config()
    config.dataset = "digits"
    config.validation_size = 0
    config.recipe.learning_rate = 0.02
    config.recipe.lr_drops = ("10ep", "16ep")
    config.training_steps = "20ep"
    config.eval_every = "10ep"
    config.checkpoint_every = "10ep"
    config.rewind_steps = ("0it", "1ep", "5ep")
    config.imp_rewind_steps = ("0it", "1ep")
    config.levels = 4
    if "sample" in chosen:
        quick = "quick" in chosen
        configs.sample_resnet(config, epochs=1 if quick else 6)
        config.validation_size = 0
        config.num_replicates = 1
        config.num_copies = 2
        config.rewind_steps = ("0it", "10it") if quick else ("0it", "1ep")
        config.imp_rewind_steps = config.rewind_steps
        config.levels = 1
        config.num_alphas = 5
        config.alpha_chunk = 5
        if quick:  # a smoke run of five studies' parts: under 2 minutes cold on a 2-core CPU
            configs.smoke_steps(config, "4it")
            config.rewind_steps = config.imp_rewind_steps = ("2it",)  # one k: one IMP run
            config.num_alphas = config.alpha_chunk = 3
            config.reset_batches = "2"  # BatchNorm statistics at each alpha from 2 batches
    elif "quick" in chosen:
        config.recipe.lr_drops = ()
        config.training_steps = "4ep"
        config.eval_every = "2ep"
        config.checkpoint_every = "2ep"
        config.rewind_steps = ("0it", "1ep")
        config.levels = 2
    return config
