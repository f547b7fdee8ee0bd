"""Knowledge Evolution of LeNet-300-100 on scikit-learn digits: offline, under a minute.

Taha et al. 2021's recipe (SGD with momentum 0.9, weight decay 1e-4, batch
32, label smoothing 0.1, a cosine schedule restarted every generation; KELS
with split rate 0.5), with the learning rate (0.05) and length (60 epochs per
generation, 8 generations) calibrated for digits, 3 replicates.
``:quick``: 2 generations of 4 epochs, 2 replicates, a 64-32 MLP.
``:sample``: ResNet-20 on the 4000-image CIFAR-10 sample, 3 generations of 10
epochs, 1 replicate (``:quick,sample``: 2 generations of 1 epoch).

    python -m experiments.knowledge_evolution \\
        --config=experiments/configs/knowledge_evolution_lenet_digits.py --workdir=runs/ke
    python -m experiments.knowledge_evolution \\
        --config=experiments/configs/knowledge_evolution_lenet_digits.py:quick --workdir=runs/ke_q
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_digits

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: seconds long; ``'sample'``: ResNet-20 on the CIFAR sample."""
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_digits.get_config()
    config.num_replicates = 3
    config.split = "kels"  # 'kels' | 'wels'
    config.split_rate = 0.5  # the fit share
    config.generations = 8
    config.training_steps = "60ep"  # per generation
    config.eval_every = "60ep"
    config.checkpoint_every = "20ep"
    config.max_checkpoints = 1
    r = config.recipe
    r.optimizer = "sgd"
    r.learning_rate = 0.05
    r.momentum = 0.9
    r.weight_decay = 1e-4
    r.batch_size = 32
    r.label_smoothing = 0.1
    r.schedule = "cosine"
    r.total_steps = "60ep"  # the cosine restarts with every generation (its step is reset)
    r.lr_drops = ()
    if "sample" in chosen:
        epochs = 1 if "quick" in chosen else 10
        configs.sample_resnet(config, epochs=epochs)
        config.recipe.label_smoothing = 0.1
        config.recipe.schedule = "cosine"
        config.recipe.lr_drops = ()
        config.recipe.total_steps = f"{epochs}ep"
        config.generations = 2 if "quick" in chosen else 3
        config.num_replicates = 1
        config.eval_every = config.training_steps
        config.checkpoint_every = "1ep"
    elif "quick" in chosen:
        config.model = "mlp"
        config.model_kwargs = ml_collections.ConfigDict(dict(widths=(64, 32)))
        config.num_replicates = 2
        config.generations = 2
        config.training_steps = "4ep"
        config.eval_every = "4ep"
        config.checkpoint_every = "2ep"
        config.recipe.total_steps = "4ep"
    return config
