"""Grokking Tickets (Minegishi et al. 2023) with Nanda et al.'s 1-layer transformer on a + b mod 97.

AdamW (lr 1e-3, decoupled weight decay 1.0), full batch (the 2823 training
pairs, 30 %), until the dense net groks; tickets at 40 % density (one-shot,
global magnitude) from the generalised and the memorising weights, random
pruning with the generalised ticket's per-layer counts, and the dense net.

``:quick``: p = 23, half the pairs to train, a tiny transformer (d 32, 2
heads, d_mlp 64), 300 steps, 2 replicates: a seconds-long smoke run for the tests.

    python -m experiments.grokking_tickets \\
        --config=experiments/configs/grokking_tickets_transformer.py --workdir=runs/grok
    python -m experiments.grokking_tickets \\
        --config=experiments/configs/grokking_tickets_transformer.py:quick --workdir=runs/grok_q
"""

import ml_collections

from experiments import configs

VARIANTS = ("quick",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: p = 23, a tiny transformer, 300 steps."""
    chosen = configs.variants(arg, VARIANTS)
    config = ml_collections.ConfigDict()
    config.dataset = "modular_add:p=97,train_share=0.3,seed=0"
    config.data_dir = ""
    config.validation_size = 0
    config.validation_seed = 0
    config.test_size = 0
    config.model = "transformer_1l"
    config.model_kwargs = ml_collections.ConfigDict()
    config.input = "tokens"  # 'tokens' | 'one_hot' (the MLP's [onehot(a), onehot(b)])
    config.num_replicates = 2
    config.seed = 0
    config.training_steps = "10000it"
    config.eval_every = "100it"
    config.checkpoint_every = "1000it"
    config.strategy = "auto"
    config.steps_per_call = 0
    config.densities = (0.4,)  # kept share of the prunable weights (the paper: 0.4-0.6 pruned)
    config.scope = "global"  # the tickets' magnitude pruning (one-shot)
    config.random_scope = "layerwise"  # the random control: the ticket's per-layer counts
    config.target_accuracy = 0.95
    config.pruning = ml_collections.ConfigDict(dict(include="", exclude=""))
    config.recipe = ml_collections.ConfigDict(dict(
        optimizer="adamw", learning_rate=1e-3, batch_size=2823, weight_decay=1.0, momentum=0.0,
        warmup="10it", lr_drops=(), lr_drop_factor=0.1, label_smoothing=0.0, augment=False,
        nesterov=False, weight_decay_mode="", schedule="step", total_steps=""))
    if "quick" in chosen:
        config.dataset = "modular_add:p=23,train_share=0.5,seed=0"
        config.model_kwargs = ml_collections.ConfigDict(dict(d_model=32, num_heads=2, d_mlp=64))
        config.recipe.learning_rate = 1e-2
        config.recipe.batch_size = 264
        config.training_steps = "300it"
        config.eval_every = "20it"
        config.checkpoint_every = "100it"
    return config
