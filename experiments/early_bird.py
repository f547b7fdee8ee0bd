"""Early-Bird tickets (You et al. 2020): search with network slimming's L1 on the BatchNorm
scales, detect when the channel mask stops changing, retrain the ticket.

    LTJAX_DATA_DIR=../shared/data python -m experiments.early_bird \
        --config=experiments/configs/early_bird_mlp_mnist.py --workdir=runs/early_bird
    python -m experiments.early_bird \
        --config=experiments/configs/early_bird_mlp_digits.py:quick --workdir=runs/early_bird_q

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

from ltjax import cli
from ltjax.studies import early_bird


def report(summary: dict) -> None:
    """Print the emergence epoch, accuracies and overlap per pruning ratio (mean ± std)."""
    print(f"accuracies: mean ± std over {summary['num_replicates']} replicates; others: mean")
    print("{:>6} {:>9} {:>10} {:>15} {:>15} {:>9}".format(
        "p", "EB epoch", "kept %", "EB acc %", "full acc %", "overlap"))
    for row, std in zip(summary["rows"], summary["std"], strict=True):
        epoch = "never" if row["eb_epoch"] is None else f"{row['eb_epoch']:.1f}"
        print(f"{row['p']:6.2f} {epoch:>9} {100 * row['kept_channels']:10.1f} "
              f"{_cell(row['eb_test_accuracy'], std['eb_test_accuracy'])} "
              f"{_cell(row['full_test_accuracy'], std['full_test_accuracy'])} "
              f"{row['overlap_with_final_mask']:9.3f}")


def _cell(mean: float | None, std: float | None) -> str:
    """``mean ± std`` in percent, or ``-`` where no replicate has the value."""
    return f"{'-':>15}" if mean is None else f"{100 * mean:7.2f} ± {100 * std:5.2f}"


if __name__ == "__main__":
    cli.run_main(early_bird.run_early_bird, report)
