"""LeNet-300-100 on scikit-learn's digits: the default offline run (no network needed).

``:sample``: ResNet-20 on the 4000-image CIFAR-10 sample in ``$LTJAX_DATA_DIR``
(:func:`experiments.configs.sample_resnet`), 10 epochs, 1 replicate
(``:quick,sample``: 1 epoch).

    python -m experiments.train --config=experiments/configs/lenet_digits.py --workdir=runs/digits
    python -m experiments.train --config=experiments/configs/lenet_digits.py:quick --workdir=runs/q
"""

import ml_collections

from experiments import configs

VARIANTS = ("quick", "sample", "telemetry")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: a seconds-long smoke run; ``'sample'``: ResNet-20 on CIFAR;
    ``'telemetry'``: Frankle et al. 2020's telemetry on its schedule (``config.telemetry``)."""
    chosen = configs.variants(arg, VARIANTS)
    config = ml_collections.ConfigDict()
    config.dataset = "digits"  # a name of ltjax.io.data.NAMES or a path to an .npz file
    config.data_dir = ""  # "": $LTJAX_DATA_DIR, else ~/.cache/ltjax
    config.validation_size = 0  # training examples held out for validation
    config.validation_seed = 0
    config.test_size = 0  # an .npz file without a test split: its last test_size examples
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
    if "sample" in chosen:
        configs.sample_resnet(config, epochs=1 if "quick" in chosen else 10)
        config.num_replicates = 1
    elif "quick" in chosen:
        config.num_replicates = 2
        config.training_steps = "2ep"
        config.eval_every = "1ep"
        config.checkpoint_every = "1ep"
    if "telemetry" in chosen:
        configs.add_telemetry(config)
    return config
