"""Git Re-Basin on scikit-learn digits: offline, seconds long.

``:sample``: two ResNet-20s on the 4000-image CIFAR-10 sample in
``$LTJAX_DATA_DIR``, 6 epochs, weight matching, 5 alphas, the naive and
matched paths without correction, with BatchNorm statistics reset and with
REPAIR, no sparse part (``:quick,sample``, a smoke run: 10 steps, no reset, 3 alphas,
REPAIR's statistics from 256 examples, the paths on test only).

    python -m experiments.rebasin --config=experiments/configs/rebasin_mlp_digits.py \\
        --workdir=runs/rebasin_digits
    python -m experiments.rebasin --config=experiments/configs/rebasin_mlp_digits.py:quick \\
        --workdir=runs/rebasin_q --config.method=ste
"""

import ml_collections

from experiments import configs
from experiments.configs import rebasin_mlp_mnist

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: MLP 64-64, 3 models, 5 epochs, 9 alphas, sparse at 20 %."""
    chosen = configs.variants(arg, VARIANTS)
    config = rebasin_mlp_mnist.get_config()
    config.dataset = "digits"
    config.model_kwargs = ml_collections.ConfigDict({"widths": (128, 128)})
    config.training_steps = "30ep"
    config.eval_every = "10ep"
    config.checkpoint_every = "10ep"
    config.recipe.batch_size = 60
    config.matching.num_examples = 1000
    config.matching.ste_steps = 50
    config.matching.ste_batch_size = 60
    config.repair.num_examples = 1000
    config.matching.restarts = 2
    config.sparse.density = 0.2
    config.sparse.ticket = True
    if "sample" in chosen:
        configs.sample_resnet(config, epochs=1 if "quick" in chosen else 6)
        config.num_replicates = 2
        config.corrections = ("none", "reset", "repair")
        config.num_alphas = 5
        config.alpha_chunk = 5
        config.matching.restarts = 1
        config.sparse.density = 0.0
        if "quick" in chosen:  # a smoke run: under 2 minutes cold on a 2-core CPU
            configs.smoke_steps(config)
            config.corrections = ("none", "repair")
            config.num_alphas = 3
            config.alpha_chunk = 3
            config.repair.num_examples = 256  # REPAIR's statistics from 2 batches of 128
            config.path_splits = ("test",)  # each path on 3600 training images: half a minute
    elif "quick" in chosen:
        config.model_kwargs = ml_collections.ConfigDict({"widths": (64, 64)})
        config.num_replicates = 3
        config.training_steps = "5ep"
        config.eval_every = "5ep"
        config.checkpoint_every = "5ep"
        config.num_alphas = 9
        config.alpha_chunk = 9
        config.matching.ste_steps = 5
    return config
