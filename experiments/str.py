"""STR (Kusupati et al. 2020): learned per-layer sparsity over a grid of s_init x weight decay,
with the dense and one-shot magnitude + retraining baselines.

    python -m experiments.str --config=experiments/configs/str_lenet_mnist.py --workdir=runs/str
    python -m experiments.str --config=experiments/configs/str_lenet_digits.py:quick \
        --workdir=runs/str_q

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

import experiments
from ltjax.studies import soft_threshold


def report(summary: dict) -> None:
    """Print the mean sparsity and test accuracy per method, s_init and weight decay."""
    print("{:>8} {:>7} {:>12} {:>10} {:>10}".format(
        "method", "s_init", "weight decay", "sparsity %", "test acc %"))
    for row in summary["rows"]:
        s_init = "-" if row["s_init"] is None else f"{row['s_init']:g}"
        print(f"{row['method']:>8} {s_init:>7} {row['weight_decay']:12.2g} "
              f"{100 * row['sparsity']:10.2f} {100 * row['test_accuracy']:10.2f}")


if __name__ == "__main__":
    experiments.run_main(soft_threshold.run_str, report)
