"""Learning subspaces (Wortsman et al. 2021) with an MLP 784-512-512-10 on MNIST.

Git Re-Basin's MNIST recipe (Adam 1e-3, batch 500; samuela/git-re-basin
``src/mnist_mlp_train.py``) for 10 epochs, 2 replicates; arms: standard
training, a line with beta = 1 and beta = 0, and the layerwise line with
beta = 1, each evaluated at 11 alphas. Needs ``mnist/mnist.npz`` under
``$LTJAX_DATA_DIR``.

    LTJAX_DATA_DIR=../shared/data python -m experiments.subspaces \\
        --config=experiments/configs/subspaces_mlp_mnist.py --workdir=runs/subspaces
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_mnist

VARIANTS = ("quick",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 300 iterations of a 128-128 MLP."""
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_mnist.get_config()
    config.model = "mlp"
    config.model_kwargs = ml_collections.ConfigDict(dict(widths=(512, 512)))
    config.validation_size = 0
    config.num_replicates = 2
    config.recipe.learning_rate = 1e-3
    config.recipe.batch_size = 500
    config.recipe.augment = False
    config.training_steps = "10ep"
    config.eval_every = "5ep"
    config.checkpoint_every = "5ep"
    config.max_checkpoints = 1
    # 'standard' or '<variant>@<beta>', variant among line, curve, simplex (+ '_layerwise').
    config.arms = ("standard", "line@1", "line@0", "line_layerwise@1")
    config.simplex_points = 3
    config.num_alphas = 11
    # BatchNorm statistics recomputed at each point (nets with BN): a number of batches or
    # 'epoch'; reset_augment applies the training augmentation. The reference's
    # utils.update_bn: the cumulative average over one full augmented training pass.
    config.reset_batches = "epoch"
    config.reset_augment = True
    if "quick" in chosen:
        config.model_kwargs.widths = (128, 128)
        config.training_steps = "300it"
        config.eval_every = "300it"
        config.checkpoint_every = "100it"
    return config
