"""Model soups (uniform, greedy, learned), the output ensemble and WiSE-FT over a fine-tuning sweep.

    LTJAX_DATA_DIR=../shared/data python -m experiments.soups \
        --config=experiments/configs/soups_lenet_mnist.py --workdir=runs/soups
    python -m experiments.soups --config=experiments/configs/soups_lenet_digits.py:quick \
        --workdir=runs/soups_q

Re-running the same command on the same workdir resumes where it stopped.
"""

from ltjax import cli
from ltjax.studies import soups


def report(summary: dict) -> None:
    """Print the study's summary table."""
    print("{:>18} {:>12} {:>7} {:>9}   members".format("model", "validation %", "test %",
                                                      "shifted %"))
    for row in summary["rows"]:
        print(f"{row['model']:>18} {100 * row['validation_accuracy']:12.2f} "
              f"{100 * row['test_accuracy']:7.2f} {100 * row['shifted_accuracy']:9.2f}   "
              f"{row.get('members', '')}")
    for row in summary["wise_ft"]:
        print(f"WiSE-FT ({row['head']}): shifted {100 * row['shifted_alpha1']:.2f} % at alpha 1 "
              f"-> {100 * row['best_shifted_accuracy']:.2f} % at its best alpha (mean "
              f"{row['best_shifted_alpha']:.2f}); test {100 * row['test_alpha1']:.2f} -> "
              f"{100 * row['test_at_best_shifted']:.2f} %")


if __name__ == "__main__":
    cli.run_main(soups.run_soups, report,
                         replicates_fn=lambda config: config.finetune.data_orders)
