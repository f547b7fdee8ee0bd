"""LeNet-300-100 on scikit-learn's digits: the default offline run (no network needed).

    python -m experiments.train --config=experiments/configs/lenet_digits.py --workdir=runs/digits
    python -m experiments.train --config=experiments/configs/lenet_digits.py:quick --workdir=runs/q
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``arg='quick'`` gives a seconds-long smoke run."""
    config = ml_collections.ConfigDict()
    config.dataset = "digits"
    config.data_dir = ""
    config.validation_size = 0
    config.model = "lenet_300_100"
    config.model_kwargs = ml_collections.ConfigDict()
    config.num_replicates = 4
    config.seed = 0
    config.training_steps = "40ep"
    config.eval_every = "5ep"
    config.checkpoint_every = "10ep"
    config.eval_train = True
    config.strategy = "auto"
    config.steps_per_call = 0
    config.recipe = ml_collections.ConfigDict(dict(
        optimizer="adam", learning_rate=1.2e-3, batch_size=60, weight_decay=0.0, momentum=0.0,
        warmup=0, lr_drops=(), lr_drop_factor=0.1, label_smoothing=0.0, augment=True,
        # optim.Recipe: nesterov SGD; weight_decay_mode 'coupled' | 'decoupled' ('' = the
        # optimizer's default); schedule 'step' | 'cosine' (cosine decays to 0 at total_steps).
        nesterov=False, weight_decay_mode="", schedule="step", total_steps="",
    ))
    if arg == "quick":
        config.num_replicates = 2
        config.training_steps = "2ep"
        config.eval_every = "1ep"
        config.checkpoint_every = "1ep"
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; expected 'quick' or nothing")
    return config
