"""Git Re-Basin (Ainsworth et al. 2023) on a small ViT (``vit_tiny``) on digits / MNIST.

Two ViTs from different initialisations, the second matched to the first by
weight matching with :func:`ltjax.models.transformer.vit_permutation_spec`
(the residual stream as one permutation shared by the patch embedding, the
class token, the positions, every LayerNorm, every block's projections and
the head; heads as blocks; query/key and value/output dimensions within a
head; the MLP hidden units), then the naive and the matched linear paths. No
correction along the paths (``corrections=('none',)``): the ViT has no
BatchNorm to reset, and REPAIR (Jordan et al. 2023) has no ViT layers in
:func:`ltjax.models.repair_layers`; the pre-LayerNorm blocks re-normalise each
token of the interpolated residual stream before attention and MLP, which is
the variance collapse REPAIR corrects in MLPs and CNNs (the stream itself,
and the final LayerNorm's input, are not corrected). The
:mod:`~experiments.configs.imp_vit_digits` recipe: Adam 1e-3, batch 128,
patches of 2 on digits, 30 epochs, 2 models, 25 alphas, no sparse part.
``:quick``: a one-block ViT, 2 epochs, 5 alphas (a smoke run for the tests).
``:mnist``: MNIST, patches of 7, 3 epochs, 15 alphas on the 10,000 test
images.

    python -m experiments.rebasin --config=experiments/configs/rebasin_vit_digits.py \\
        --workdir=runs/rebasin_vit
    python -m experiments.rebasin --config=experiments/configs/rebasin_vit_digits.py:mnist \\
        --workdir=runs/rebasin_vit_mnist
"""

import ml_collections

from experiments import configs
from experiments.configs import imp_vit_digits, rebasin_mlp_digits

VARIANTS = ("quick", "mnist")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: a one-block ViT, 2 epochs, 5 alphas; ``'mnist'``: MNIST."""
    chosen = configs.variants(arg, VARIANTS)
    config = rebasin_mlp_digits.get_config()
    imp_vit_digits.use_vit(config, mnist="mnist" in chosen, quick="quick" in chosen)
    config.validation_size = 0
    config.method = "weight"
    config.corrections = ("none",)
    config.num_replicates = 2
    config.sparse.density = 0.0
    configs.schedule(config, "30ep", every="10ep")
    config.num_alphas = config.alpha_chunk = 25
    if "mnist" in chosen:
        configs.schedule(config, "3ep", every="1ep")
        config.num_alphas = config.alpha_chunk = 15
        config.path_splits = ("test",)
    if "quick" in chosen:
        configs.schedule(config, "2ep", every="1ep")
        config.num_alphas = config.alpha_chunk = 5
    return config
