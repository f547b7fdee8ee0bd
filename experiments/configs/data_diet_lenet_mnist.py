"""The data diet (Paul et al. 2021) on LeNet-300-100 / MNIST, the spec's CPU calibration.

EL2N after 2 epochs of 4 dense runs, averaged; the hardest, random and easiest
50 / 20 / 10 % of the training set, each trained for 8 full-data epochs of
steps (the paper's protocol: subsets train as long as the full data), 2
replicates, beside the full data.

``:noise``: 10 % of the training labels made wrong first (seeded), EL2N at
epoch 2 as above: the spec's calibration, the top 10 % EL2N should hold the
corrupted examples (precision >= 0.85; the spec measured 0.96), in
``noise.csv``. ``:grand_init``: GraNd at initialisation (step 0), with its
Spearman correlation to the input norm in ``score_stats.csv`` (Kirsch 2023).
Variants combine: ``:quick,noise``.

    LTJAX_DATA_DIR=../shared/data python -m experiments.data_diet \\
        --config=experiments/configs/data_diet_lenet_mnist.py --workdir=runs/data_diet
    LTJAX_DATA_DIR=../shared/data python -m experiments.data_diet \\
        --config=experiments/configs/data_diet_lenet_mnist.py:noise --workdir=runs/data_diet_noise
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_mnist

VARIANTS = ("quick", "noise", "grand_init")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: one kept share, 200 steps; ``'noise'``; ``'grand_init'``."""
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_mnist.get_config("lmc")  # He init, as in docs/studies/data-diet.md
    config.validation_size = 0
    config.training_steps = "8ep"
    config.eval_every = "2ep"
    config.checkpoint_every = "2ep"
    config.score = "el2n"  # or 'grand' (GraNd; at init with score_step='0it')
    config.score_step = "2ep"
    config.score_seeds = 4
    config.kept = (0.5, 0.2, 0.1)
    config.modes = ("hardest", "random", "easiest")
    config.offset = 0  # 'hardest' skips this many of the highest scores first
    config.label_noise = 0.0  # share of training labels made wrong before scoring and training
    config.label_noise_seed = 0  # NumPy seed of which labels (and to what)
    if "quick" in chosen:
        config.training_steps = "200it"
        config.eval_every = "100it"
        config.checkpoint_every = "100it"
        config.score_step = "100it"
        config.kept = (0.5,)
    if "noise" in chosen:
        config.label_noise = 0.1
    if "grand_init" in chosen:
        config.score = "grand"
        config.score_step = "0it"
    return config
