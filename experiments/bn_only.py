"""Training BatchNorm and only BatchNorm (Frankle, Schwab & Morcos 2021) against full training,
the output layer alone and as many random parameters, S replicates per arm.

    python -m experiments.bn_only --config=experiments/configs/bn_only_mlp_mnist.py \
        --workdir=runs/bn_only
    python -m experiments.bn_only --config=experiments/configs/bn_only_mlp_digits.py:quick \
        --workdir=runs/bn_q

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

import experiments
from ltjax.studies import bn_only


def report(summary: dict) -> None:
    """Print the mean test accuracy and near-zero gamma shares per arm."""
    print("{:>17} {:>10} {:>10} {:>12} {:>12}".format(
        "arm", "trainable", "test acc %", "|g|<0.01 %", "|g|<0.05 %"))
    for row in summary["rows"]:
        print(f"{row['arm']:>17} {int(row['trainable_params']):10d} "
              f"{100 * row['test_accuracy']:10.2f} {100 * row['share_gamma_below_0.01']:12.2f} "
              f"{100 * row['share_gamma_below_0.05']:12.2f}")


if __name__ == "__main__":
    experiments.run_main(bn_only.run_bn_only, report)
