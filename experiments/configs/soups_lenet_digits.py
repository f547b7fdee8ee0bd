"""Model soups and WiSE-FT on scikit-learn's digits: offline, under a minute on 2 CPU cores.

``:sample``: ResNet-20 on the 4000-image CIFAR-10 sample in ``$LTJAX_DATA_DIR``,
pretrained 6 epochs on images rotated up to 30 degrees, fine-tuned with AdamW
at 1e-3 and 3e-3 for 1 and 2 epochs (4 ingredients), the head ``fc``
(``:quick,sample``, a smoke run: 10 steps of pretraining, 2 ingredients of 6 steps,
3 learned-soup steps, BatchNorm statistics from 2 batches, 200 validation and 200 test
images).

    python -m experiments.soups --config=experiments/configs/soups_lenet_digits.py \
        --workdir=runs/soups_digits
    python -m experiments.soups --config=experiments/configs/soups_lenet_digits.py:quick \
        --workdir=runs/soups_q
"""

import ml_collections

from experiments import configs
from experiments.configs import soups_lenet_mnist

VARIANTS = ("quick", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config (16 ingredients); ``'quick'``: 2 recipes x 2 epochs x 2 orders, 8 ingredients."""
    chosen = configs.variants(arg, VARIANTS)
    config = soups_lenet_mnist.get_config()
    config.dataset = "digits"
    config.validation_size = 300
    config.eval_every = "5ep"
    config.checkpoint_every = "5ep"
    config.pretrain.steps = "20ep"
    config.pretrain.rotation = 30.0
    config.finetune.learning_rate = (3e-4, 1e-3)
    config.finetune.weight_decay = (1e-4,)
    config.finetune.warmup = "5it"  # 18 steps make an epoch
    config.finetune.label_smoothing = (0.0, 0.1)
    config.finetune.epochs = ("5ep", "10ep")
    config.shift.amount = 20.0
    config.learned_soup.num_steps = 100
    if "sample" in chosen:
        quick = "quick" in chosen
        configs.use_sample(config)
        config.model = "resnet20"
        config.model_kwargs = ml_collections.ConfigDict()
        config.validation_size = 400
        config.recipe.optimizer = "sgd"
        config.recipe.learning_rate = 0.1
        config.recipe.momentum = 0.9
        config.recipe.weight_decay = 1e-4
        config.recipe.batch_size = 128
        config.pretrain.steps = "1ep" if quick else "6ep"
        config.finetune.learning_rate = (1e-3,) if quick else (1e-3, 3e-3)
        config.finetune.weight_decay = (1e-4,)
        config.finetune.warmup = "5it"
        config.finetune.label_smoothing = (0.0,)
        config.finetune.epochs = ("1ep",) if quick else ("1ep", "2ep")
        config.finetune.data_orders = 2 if quick else 1
        config.eval_every = "1ep"
        config.checkpoint_every = "1ep"
        config.learned_soup.num_steps = 10
        config.wise_ft.num_alphas = 3
        config.wise_ft.head = "fc"
        if quick:  # a smoke run: under 2 minutes cold on a 2-core CPU
            config.pretrain.steps = config.eval_every = config.checkpoint_every = "10it"
            config.finetune.epochs = ("6it",)
            config.finetune.warmup = "2it"
            config.learned_soup.num_steps = 3
            config.reset_batches = "2"  # BatchNorm statistics of each soup from 2 batches
            config.validation_size = config.test_size = 200  # every soup is evaluated thrice
    elif "quick" in chosen:
        config.finetune.learning_rate = (1e-3,)
        config.pretrain.steps = "2ep"
        config.finetune.epochs = ("1ep", "2ep")
        config.eval_every = "1ep"
        config.checkpoint_every = "1ep"
        config.learned_soup.num_steps = 10
        config.wise_ft.num_alphas = 3
    return config
