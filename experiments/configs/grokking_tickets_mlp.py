"""Grokking Tickets (Minegishi et al. 2023) with an MLP on a + b mod 97 (one-hot inputs).

The MLP reads ``[onehot(a), onehot(b)]`` (``config.input='one_hot'``,
:func:`ltjax.studies.grokking_tickets.one_hot_pairs`); otherwise the
transformer config's recipe and arms. The hyperparameters are NOT tuned to
grok yet (the ``:quick`` run checks the plumbing only).

    python -m experiments.grokking_tickets \\
        --config=experiments/configs/grokking_tickets_mlp.py --workdir=runs/grok_mlp
"""

import ml_collections

from experiments import configs
from experiments.configs import grokking_tickets_transformer

VARIANTS = ("quick",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config; ``'quick'``: p = 23, one hidden layer of 64, 300 steps."""
    chosen = configs.variants(arg, VARIANTS)
    config = grokking_tickets_transformer.get_config("quick" if "quick" in chosen else None)
    config.model = "mlp"
    config.model_kwargs = ml_collections.ConfigDict(
        dict(widths=(64,) if "quick" in chosen else (512,)))
    config.input = "one_hot"
    return config
