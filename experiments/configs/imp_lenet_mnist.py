"""IMP on LeNet-300-100 / MNIST with the lottery ticket paper's recipe.

Frankle & Carbin 2019: Adam 1.2e-3, batch 60, Gaussian Glorot init, 50K
iterations per level (Figure 2), hidden layers pruned 20 % per level and the
output layer 10 % (layerwise), reset to the original init (rewind step 0);
5000 validation images carved from train for early stopping. 15 levels reach
0.8^15 = 3.5 % of the hidden weights. ``:lmc``: He-normal init and 24K
iterations per level (Frankle et al. 2020, Table 1; the default before
1 December 2026).

    python -m experiments.imp --config=experiments/configs/imp_lenet_mnist.py --workdir=runs/lth
    python -m experiments.imp --config=experiments/configs/imp_lenet_mnist.py:quick --workdir=runs/q
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_mnist

VARIANTS = ("quick", "imp_only", "lmc")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 2 levels of 300 iterations; ``'imp_only'``: no controls;
    ``'lmc'``: :func:`lenet_mnist.get_config`'s ``'lmc'`` recipe (He init, 24K iterations)."""
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_mnist.get_config("lmc" if "lmc" in chosen else None)
    config.num_replicates = 2
    config.levels = 15
    config.rewind_step = "0it"
    config.rewind_optimizer = False
    # 'paired': every level and branch sees the same batches from step k on; 'fresh': a
    # new data order and augmentation per level and branch (OpenLTH's default).
    config.sgd_noise = "paired"
    # layer_rates: 'regex:rate,...', each matching layer pruned on its own at its rate;
    # '@output' names the model's output layer (ltjax.models.output_layer: Dense_2 for LeNet,
    # fc for the ResNets, Dense_0 for VGG), skipped when it is not pruned. preset: '' or
    # 'conv10_fc20' (ltjax.core.pruning.preset_rates; layer_rates override it).
    config.pruning = ml_collections.ConfigDict(dict(
        fraction=0.2, scope="layerwise", layer_rates="@output:0.1", include="", exclude="",
        preset="",
    ))
    config.controls = ("reinit",)
    config.max_checkpoints = 1
    # Ma et al. 2021's sanity check: train every member at each of these learning rates
    # (must include recipe.learning_rate; needs the reinit and small_dense controls) and
    # write ticket_classes.csv. Empty: no sweep.
    config.ticket_learning_rates = ()
    # Where each rate's masks come from: 'own_rate' (the papers' protocol: the whole pipeline
    # at each rate) or 'recipe_rate' (the recipe rate's masks retrained at every rate).
    config.ticket_masks = "own_rate"
    config.ticket_similar = 0.005
    config.correlation_p = 0.1  # weight correlation R_p (Liu et al. 2021) in results.csv
    if "quick" in chosen:
        config.training_steps = "300it"
        config.eval_every = "100it"
        config.checkpoint_every = "100it"
        config.levels = 2
    if "imp_only" in chosen:  # the tickets alone, e.g. for the stability study
        config.controls = ()
    return config
