"""Learning subspaces with an MLP on scikit-learn digits: offline, seconds long.

``:sample``: ResNet-20 on the 4000-image CIFAR-10 sample in ``$LTJAX_DATA_DIR``
(the paper's network), 15 epochs, standard training and a line with beta = 1,
1 replicate, BatchNorm statistics recomputed at each alpha over one augmented
training pass, as the reference (``:sample,quick``: 1 epoch).

    python -m experiments.subspaces --config=experiments/configs/subspaces_mlp_digits.py:quick \
        --workdir=runs/subspaces_q
"""

import ml_collections

from experiments import configs
from experiments.configs import subspaces_mlp_mnist

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 4 epochs of a 64-64 MLP, 5 alphas; ``'sample'``: ResNet-20."""
    chosen = configs.variants(arg, VARIANTS)
    config = subspaces_mlp_mnist.get_config()
    config.dataset = "digits"
    config.model_kwargs.widths = (256, 256)
    config.recipe.batch_size = 60
    config.training_steps = "30ep"
    config.eval_every = "10ep"
    config.checkpoint_every = "10ep"
    if "sample" in chosen:
        configs.sample_resnet(config, epochs=1 if "quick" in chosen else 15)
        config.arms = ("standard", "line@1")
        config.num_replicates = 1
        config.num_alphas = 5
    elif "quick" in chosen:
        config.model_kwargs.widths = (64, 64)
        config.training_steps = "4ep"
        config.eval_every = "2ep"
        config.checkpoint_every = "2ep"
        config.num_alphas = 5
    return config
