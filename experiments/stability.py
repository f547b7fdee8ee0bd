"""Instability analysis (linear mode connectivity) of dense nets and IMP subnetworks.

    python -m experiments.stability --config=experiments/configs/stability_lenet_mnist.py \
        --workdir=runs/lmc_dense
    python -m experiments.stability --config=experiments/configs/stability_lenet_digits.py:quick \
        --workdir=runs/lmc_q

Re-running the same command on the same workdir resumes where it stopped.
"""

from ltjax import cli
from ltjax.studies import stability


def report(summary: dict) -> None:
    """Print the study's summary table: mean ± std over the pairs of copies per k and split."""
    print(f"mean ± std over {summary['num_pairs']} pairs of copies")
    print("{:>7} {:>6} {:>15} {:>9} {:>15}".format("k", "split", "instability %", "stable %",
                                                   "accuracy %"))
    for row, std in zip(summary["rows"], summary["std"], strict=True):
        print(f"{row['k']:>7} {row['split']:>6} "
              f"{100 * row['instability']:7.2f} ± {100 * std['instability']:5.2f} "
              f"{100 * row['stable']:9.0f} "
              f"{100 * row['accuracy_a']:7.2f} ± {100 * std['accuracy_a']:5.2f}")


if __name__ == "__main__":
    cli.run_main(stability.run_stability, report,
                         replicates_fn=lambda config: config.num_replicates * config.num_copies)
