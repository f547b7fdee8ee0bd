"""Training BatchNorm and only BatchNorm (Frankle, Schwab & Morcos 2021) against full training,
the output layer alone and as many random parameters, S replicates per arm.

    python -m experiments.bn_only --config=experiments/configs/bn_only_mlp_mnist.py \
        --workdir=runs/bn_only
    python -m experiments.bn_only --config=experiments/configs/bn_only_mlp_digits.py:quick \
        --workdir=runs/bn_q

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

from ltjax import cli
from ltjax.studies import bn_only


def report(summary: dict) -> None:
    """Print the test accuracy (mean ± std over replicates) and near-zero gamma shares per arm."""
    print(f"test accuracy: mean ± std over {summary['num_replicates']} replicates; "
          "gamma shares: mean")
    print("{:>17} {:>10} {:>15} {:>12} {:>12}".format(
        "arm", "trainable", "test acc %", "|g|<0.01 %", "|g|<0.05 %"))
    for row, std in zip(summary["rows"], summary["std"], strict=True):
        print(f"{row['arm']:>17} {int(row['trainable_params']):10d} "
              f"{100 * row['test_accuracy']:7.2f} ± {100 * std['test_accuracy']:5.2f} "
              f"{100 * row['share_gamma_below_0.01']:12.2f} "
              f"{100 * row['share_gamma_below_0.05']:12.2f}")


if __name__ == "__main__":
    cli.run_main(bn_only.run_bn_only, report)
