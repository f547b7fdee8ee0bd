"""IMP on a small ViT (``vit_tiny``: 2 pre-LayerNorm blocks, d 64, 4 heads) on digits / MNIST.

The lottery ticket procedure on a transformer (Frankle & Carbin 2019; for
transformers, Chen et al. 2020, "The Lottery Ticket Hypothesis for
Pre-trained BERT Networks", prune globally): global magnitude pruning of the
attention, MLP and head kernels, 20 % of the remaining weights per level (the
head ``head`` at 10 %, ``'@output:0.1'``), reset to the original init (k = 0),
with the ``reinit`` control (same masks, a fresh init). Embeddings (patches,
positions, class token), LayerNorms and biases are never pruned
(:mod:`ltjax.models.transformer`). Adam 1e-3, batch 128, no augmentation.

Digits (8x8): patches of 2 (16 patches and the class token), 30 epochs per
level, 6 levels (26 % of the prunable weights). ``:quick``: 2 levels of 2
epochs, 1 replicate (a smoke run for the tests). ``:mnist``: MNIST with
patches of 7 (16 patches; ``mnist/mnist.npz`` under ``$LTJAX_DATA_DIR``), 1
epoch per level (430 steps), 10 levels (0.8^10 = 10.7 % density), 1 replicate.

    python -m experiments.imp --config=experiments/configs/imp_vit_digits.py --workdir=runs/imp_vit
    python -m experiments.imp --config=experiments/configs/imp_vit_digits.py:mnist \\
        --workdir=runs/imp_vit_mnist
"""

import ml_collections

from experiments import configs
from experiments.configs import imp_lenet_digits

VARIANTS = ("quick", "mnist")


#: ``:quick``'s ViT: one block of d 32, 2 heads, MLP 64, patches of 4 (4 patches): the
#: programs compile in a few seconds.
QUICK_VIT = dict(num_layers=1, d_model=32, num_heads=2, d_mlp=64, patch_size=4)


def use_vit(config: ml_collections.ConfigDict, *, mnist: bool, quick: bool) -> None:
    """``vit_tiny``, Adam 1e-3, batch 128, no augmentation; patches of 7 on MNIST, else 2.

    ``quick``: :data:`QUICK_VIT` (on digits).
    """
    config.model = "vit_tiny"
    config.model_kwargs = ml_collections.ConfigDict(
        QUICK_VIT if quick and not mnist else dict(patch_size=7 if mnist else 2))
    config.recipe.optimizer = "adam"
    config.recipe.learning_rate = 1e-3
    config.recipe.batch_size = 128
    config.recipe.augment = False
    config.recipe.weight_decay = 0.0
    if mnist:
        config.dataset = "mnist"
        config.validation_size = 5000


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 2 levels of 2 epochs; ``'mnist'``: MNIST to 10.7 % density."""
    chosen = configs.variants(arg, VARIANTS)
    config = imp_lenet_digits.get_config()
    use_vit(config, mnist="mnist" in chosen, quick="quick" in chosen)
    config.num_replicates = 1
    config.controls = ("reinit",)
    config.pruning.scope = "global"
    configs.schedule(config, "30ep", every="10ep")
    config.levels = 6
    if "mnist" in chosen:
        configs.schedule(config, "1ep")
        config.levels = 10
    if "quick" in chosen:
        configs.schedule(config, "2ep", every="1ep")
        config.levels = 2
    return config
