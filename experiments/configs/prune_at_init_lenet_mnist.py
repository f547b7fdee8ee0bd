"""Pruning at initialisation on LeNet-300-100 / MNIST (Frankle et al. 2021's ablations).

Adam 1.2e-3, batch 128, 1875 iterations (4 epochs of the 60,000 training
images), 2 replicates, global scope; SNIP and GraSP score 100 examples
(10 per class on average, as the reference's ``10 * classes``), also on
random labels and random pixels (Su et al. 2020); SynFlow 100 rounds; Su et
al.'s random tickets (``smart_ratio``). Densities 10 %, 3.2 %, 1 %. Needs
``mnist/mnist.npz`` under ``$LTJAX_DATA_DIR``.

    python -m experiments.prune_at_init \
        --config=experiments/configs/prune_at_init_lenet_mnist.py --workdir=runs/pai
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_mnist

VARIANTS = ("quick",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 300 iterations, one density."""
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_mnist.get_config("lmc")  # He init, as in docs/studies/prune-at-init.md
    config.validation_size = 0
    config.eval_train = False
    config.num_replicates = 2
    config.recipe.batch_size = 128
    config.training_steps = "1875it"
    config.eval_every = "1875it"
    config.checkpoint_every = "625it"
    config.max_checkpoints = 1
    config.densities = (0.1, 0.032, 0.01)
    config.methods = ("magnitude", "snip", "grasp", "grasp_abs", "synflow", "random",
                      "oneshot_lth", "lr_rewinding", "snip@random_labels", "snip@random_pixels",
                      "grasp@random_labels", "grasp@random_pixels", "smart_ratio")
    config.ablations = ("none", "shuffle", "reinit", "invert")
    config.scope = "global"
    config.score_examples = 100
    config.grasp_temperature = 200.0
    config.synflow_rounds = 100
    config.imp_workdir = ""  # an IMP run (same seed/model/dataset): adds method 'imp'
    if "quick" in chosen:
        config.training_steps = "300it"
        config.eval_every = "300it"
        config.checkpoint_every = "100it"
        config.densities = (0.032,)
    return config
