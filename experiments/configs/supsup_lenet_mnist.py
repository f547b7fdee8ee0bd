"""SupSup on PermutedMNIST: 10 tasks over one bias-free LeNet-300-100 of signed constants.

GNu's PermutedMNIST recipe of the reference (RAIVNLab/supsup@6a31878,
``experiments/GNu/MNISTPerm/LeNet-250-tasks/supsup_h.py``): fast masks
``1[S >= 0]``, RMSProp at lr 1e-4 (``torch.optim.RMSprop``'s defaults, no
momentum, no weight decay), 1000 iterations per task (``iter_lim``), batch
128, no schedule, ``output_size = 100`` (labels 0..9; the 90 superfluous
outputs count in the loss, the argmax and the entropy of task inference, as
there). 10 tasks (the reference runs 250), 1 replicate; all tasks train as
one program. Task inference over test batches of 128 (one-shot, first
example only, binary).
``--config.mask=top_k`` gives GG's per-layer top-k masks at ``density``;
``--config.output_size=10``: 10 outputs (before #31.3, with Adam 1e-3).

    LTJAX_DATA_DIR=../shared/data python -m experiments.supsup \\
        --config=experiments/configs/supsup_lenet_mnist.py --workdir=runs/supsup
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_mnist

VARIANTS = ("quick",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 3 tasks, 100 iterations."""
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_mnist.get_config()
    config.model_kwargs = ml_collections.ConfigDict(dict(use_bias=False))
    config.validation_size = 0
    config.num_replicates = 1
    config.eval_train = False
    config.recipe.optimizer = "rmsprop"
    config.recipe.learning_rate = 1e-4
    config.recipe.weight_decay = 0.0
    config.recipe.batch_size = 128
    config.recipe.augment = False
    config.recipe.schedule = "step"  # no drops: constant
    config.recipe.total_steps = ""
    config.training_steps = "1000it"
    config.eval_every = "500it"
    config.checkpoint_every = "500it"
    config.max_checkpoints = 1
    config.num_tasks = 10
    config.mask = "threshold"  # GNu's 1[S >= 0]; 'top_k': GG's per-layer top-k
    config.density = 0.5  # the kept share of 'top_k' masks
    config.identity_first = False  # task 0 permuted too, as the reference
    config.inference_batch_size = 128
    config.binary = True  # also the binary-search inference
    # the reference's GNu output_size: 100 outputs, labels 0..9; the 90 superfluous outputs
    # count in the loss, the argmax and the entropy of task inference (None: 10 outputs)
    config.output_size = 100
    if "quick" in chosen:
        config.num_tasks = 3
        config.training_steps = "100it"
        config.eval_every = "100it"
        config.checkpoint_every = "50it"
    return config
