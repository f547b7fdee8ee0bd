"""Git Re-Basin: train S models, match models 1..S-1 to model 0, interpolate; sparse re-basin.

    LTJAX_DATA_DIR=../shared/data python -m experiments.rebasin \
        --config=experiments/configs/rebasin_mlp_mnist.py --workdir=runs/rebasin
    python -m experiments.rebasin --config=experiments/configs/rebasin_mlp_digits.py:quick \
        --workdir=runs/rebasin_q --config.method=activation

Re-running the same command on the same workdir resumes where it stopped.
"""

from ltjax import cli
from ltjax.studies import rebasin


def report(summary: dict) -> None:
    """Print the study's summary table."""
    print("{:>5} {:>8} {:>11} {:>6} {:>13} {:>13} {:>16} {:>13}".format(
        "pair", "variant", "correction", "split", "loss (chord)", "loss (ends)",
        "error barrier %", "midpoint acc %"))
    for row in summary["rows"]:
        print(f"{row['pair']:>5} {row['variant']:>8} {row['correction']:>11} {row['split']:>6} "
              f"{row['loss_barrier_chord']:13.4f} {row['loss_barrier_mean_ends']:13.4f} "
              f"{100 * row['error_barrier']:16.2f} "
              f"{100 * row['midpoint_accuracy']:13.2f}")
    for row in summary["sparse"]:
        print(f"sparse {row['branch']:>9} pair {row['pair']:>4} ({row['init']}): density "
              f"{100 * row['density']:.1f} %, test accuracy {100 * row['test_accuracy']:.2f} %")


if __name__ == "__main__":
    cli.run_main(rebasin.run_rebasin, report)
