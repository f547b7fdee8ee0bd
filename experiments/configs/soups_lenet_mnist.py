"""Model soups and WiSE-FT for LeNet-300-100 on MNIST (Wortsman et al. 2022, ICML / CVPR).

Pretrain 3 epochs (LTH recipe: Adam 1.2e-3, batch 60) on the 55K training
images, each rotated by its own angle in [-45, 45] degrees (a broader
pre-training distribution, as CLIP's is for ImageNet); fine-tune from it on
the clean images with the paper's recipe (AdamW, cosine decay after 50
warm-up steps over each run's own length) over learning rate (1e-4, 3e-4,
1e-3) x decoupled weight decay (1e-4, 0.1) x label smoothing (0, 0.1), each
for 1 and 3 epochs (separate runs), 2 data orders: 48 ingredients in two
programs of 24 members. Validation: 5000 held-out training images. Shifted
test: the 10K test images rotated by 30 degrees. WiSE-FT at 11 alphas,
interpolating everything and keeping the fine-tuned head. Measured: 8 min 57 s
on the 2-core CPU machine (docs/studies/soups.md).

    LTJAX_DATA_DIR=../shared/data python -m experiments.soups \
        --config=experiments/configs/soups_lenet_mnist.py --workdir=runs/soups
"""

import ml_collections

from experiments import configs
from experiments.configs import lenet_mnist

VARIANTS = ("quick",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 2 x 2 fine-tunes of 100 and 200 iterations."""
    chosen = configs.variants(arg, VARIANTS)
    config = lenet_mnist.get_config("lmc")  # He init, as in docs/studies/soups.md
    del config.num_replicates, config.eval_train, config.training_steps
    config.validation_size = 5000
    config.eval_every = "1ep"
    config.checkpoint_every = "1ep"
    config.max_checkpoints = 1
    config.pretrain = ml_collections.ConfigDict(dict(
        steps="3ep", rotation=45.0, rotation_seed=0, workdir="", replicate=0))
    # Fine-tuning as the paper (Wortsman et al. 2022; model-soups finetune.py): AdamW
    # (decoupled weight decay), cosine decay after a linear warm-up over each run's own length.
    config.finetune = ml_collections.ConfigDict(dict(
        optimizer="adamw", schedule="cosine", warmup="50it", weight_decay_mode="",
        learning_rate=(1e-4, 3e-4, 1e-3), weight_decay=(1e-4, 0.1),
        label_smoothing=(0.0, 0.1), augment=(False,), epochs=("1ep", "3ep"), data_orders=2))
    config.shift = ml_collections.ConfigDict(dict(kind="rotate", amount=30.0, seed=0))
    config.greedy_strict = False  # the paper's >= (the reference code uses >)
    # The reference's learned soup: a weight per parameter tensor ('tensor'; or 'layer',
    # 'model') and a logit temperature, AdamW at 0.05 without decay.
    config.learned_soup = ml_collections.ConfigDict(dict(
        granularity="tensor", temperature=True, num_steps=200, learning_rate=0.05,
        batch_size=0, seed=0))
    config.wise_ft = ml_collections.ConfigDict(dict(
        num_alphas=11, head="Dense_2", head_modes=("interpolate", "fine_tuned")))
    config.recompute_batch_stats = True
    config.reset_batches = "20"  # BatchNorm statistics: a number of batches, or 'epoch'
    config.reset_augment = False  # with 'epoch': the REPAIR notebooks' augmented pass
    if "quick" in chosen:
        config.pretrain.steps = "200it"
        config.finetune.learning_rate = (3e-4, 1e-3)
        config.finetune.weight_decay = (1e-4,)
        config.finetune.warmup = "10it"
        config.finetune.label_smoothing = (0.0,)
        config.finetune.epochs = ("100it", "200it")
        config.eval_every = "100it"
        config.checkpoint_every = "100it"
        config.learned_soup.num_steps = 20
        config.wise_ft.num_alphas = 3
    return config
