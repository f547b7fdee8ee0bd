"""Git Re-Basin on MNIST: MLP 784-512-512-512-10, the paper's Figure 2 setting.

Ainsworth, Hayase & Srinivasa, "Git Re-Basin" (ICLR 2023): two MLPs with
three hidden layers of 512 units from different initialisations, trained
with Adam at 1e-3 in batches of 500 for 100 epochs (samuela/git-re-basin
``src/mnist_mlp_train.py``; 14 min on a 2-core CPU), matched by weight
matching (best of 8 orders), interpolated at 25 alphas on the full train (60K) and test (10K)
sets, with and without REPAIR (Jordan et al. 2023). Plus sparse re-basin at
2 % density (Adnan et al.): model 1's init trained 10 epochs with model 0's
one-shot magnitude mask, permuted vs unpermuted (the ticket of model 0 is
off to save time: ``--config.sparse.ticket=True``). Needs
``mnist/mnist.npz`` under ``$LTJAX_DATA_DIR``.

    LTJAX_DATA_DIR=../shared/data python -m experiments.rebasin \\
        --config=experiments/configs/rebasin_mlp_mnist.py --workdir=runs/rebasin
    python -m experiments.rebasin --config=experiments/configs/rebasin_mlp_mnist.py \\
        --workdir=runs/rebasin_act --config.method=activation
"""

import ml_collections

from experiments import configs

VARIANTS = ("quick", "ste_reference")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: 1 epoch, 5 alphas, no sparse part; ``'ste_reference'``."""
    chosen = configs.variants(arg, VARIANTS)
    config = ml_collections.ConfigDict()
    config.dataset = "mnist"  # a name of ltjax.io.data.NAMES or a path to an .npz file
    config.data_dir = ""  # "": $LTJAX_DATA_DIR, else ~/.cache/ltjax
    config.validation_size = 0
    config.validation_seed = 0
    config.test_size = 0  # an .npz file without a test split: its last test_size examples
    config.model = "mlp"
    config.model_kwargs = ml_collections.ConfigDict({"widths": (512, 512, 512)})
    config.num_replicates = 2  # model 0 is matched to each of models 1..S-1
    config.seed = 0
    config.training_steps = "100ep"
    config.eval_every = "10ep"
    config.checkpoint_every = "20ep"
    config.max_checkpoints = 1
    config.strategy = "auto"
    config.steps_per_call = 0
    config.recipe = ml_collections.ConfigDict(dict(
        optimizer="adam", learning_rate=1e-3, batch_size=500, weight_decay=0.0, momentum=0.0,
        warmup=0, lr_drops=(), lr_drop_factor=0.1, label_smoothing=0.0, augment=False,
        # optim.Recipe: nesterov SGD; weight_decay_mode 'coupled' | 'decoupled' ('' = the
        # optimizer's default); schedule 'step' | 'cosine' (cosine decays to 0 at total_steps).
        nesterov=False, weight_decay_mode="", schedule="step", total_steps="",
    ))
    # Matching: 'weight', 'activation' or 'ste'.
    config.method = "weight"
    config.matching = ml_collections.ConfigDict(dict(
        max_iter=100, restarts=8,          # weight matching (and STE's projections)
        # activation matching: post-ReLU activations over num_examples training inputs (0: all,
        # as the reference scripts), similarity 'inner' (E[A^T B]) or 'pearson'
        num_examples=0, similarity="inner",
        # STE (Algorithm 3), keeping the projection of the lowest batch loss. Reduced budget:
        # 200 steps; ':ste_reference' gives the reference's (SGD 0.9 at 1e-2, batch 1000,
        # 15K steps = 250 epochs of 60K, samuela/git-re-basin src/mnist_mlp_ste2.py).
        ste_steps=200, ste_batch_size=500, ste_learning_rate=1e-2, ste_optimizer="sgd",
    ))
    # Paths: every correction listed is evaluated on the naive and matched path.
    config.corrections = ("none", "repair")  # among 'none', 'reset' (BatchNorm), 'repair'
    config.repair = ml_collections.ConfigDict(dict(num_examples=5000, eps=1e-5))
    # BatchNorm reset ('reset' correction): 20 unaugmented batches, or 'epoch' with
    # reset_augment=True for the REPAIR notebooks' pass over one augmented epoch.
    config.reset_batches = "20"  # a number of batches, or 'epoch'
    config.reset_augment = False
    config.num_alphas = 25
    config.path_splits = ("train", "test")
    config.alpha_chunk = 25
    # Sparse re-basin: density 0 turns it off.
    config.sparse = ml_collections.ConfigDict(dict(
        density=0.02, scope="global", training_steps="10ep",  # "": as long as the dense nets
        ticket=False))  # also train model 0's init with its own mask (the LTH reference)
    if "quick" in chosen:
        config.training_steps = "1ep"
        config.eval_every = "1ep"
        config.checkpoint_every = "1ep"
        config.num_alphas = 5
        config.alpha_chunk = 5
        config.sparse.density = 0.0
    if "ste_reference" in chosen:  # STE matching with the reference's budget (~15K projections)
        config.method = "ste"
        config.matching.ste_steps = 15000
        config.matching.ste_batch_size = 1000
        config.matching.ste_learning_rate = 1e-2
        config.matching.ste_optimizer = "sgd"
    return config
