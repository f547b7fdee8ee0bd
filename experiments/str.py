"""STR (Kusupati et al. 2020): learned per-layer sparsity over a grid of s_init x weight decay,
with the dense and one-shot magnitude + retraining baselines.

    python -m experiments.str --config=experiments/configs/str_lenet_mnist.py --workdir=runs/str
    python -m experiments.str --config=experiments/configs/str_lenet_digits.py:quick \
        --workdir=runs/str_q

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

from ltjax import cli
from ltjax.studies import soft_threshold


def report(summary: dict) -> None:
    """Print sparsity and test accuracy (mean ± std) per method, s_init and weight decay."""
    print(f"mean ± std over {summary['num_replicates']} replicates")
    print("{:>8} {:>7} {:>12} {:>15} {:>15}".format(
        "method", "s_init", "weight decay", "sparsity %", "test acc %"))
    for row, std in zip(summary["rows"], summary["std"], strict=True):
        s_init = "-" if row["s_init"] is None else f"{row['s_init']:g}"
        print(f"{row['method']:>8} {s_init:>7} {row['weight_decay']:12.2g} "
              f"{100 * row['sparsity']:7.2f} ± {100 * std['sparsity']:5.2f} "
              f"{100 * row['test_accuracy']:7.2f} ± {100 * std['test_accuracy']:5.2f}")


if __name__ == "__main__":
    cli.run_main(soft_threshold.run_soft_threshold, report)
