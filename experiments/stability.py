"""Instability analysis (linear mode connectivity) of dense nets and IMP subnetworks.

    python -m experiments.stability --config=experiments/configs/stability_lenet_mnist.py \
        --workdir=runs/lmc_dense
    python -m experiments.stability --config=experiments/configs/stability_lenet_digits.py:quick \
        --workdir=runs/lmc_q

Re-running the same command on the same workdir resumes where it stopped.
"""

import experiments
from ltjax.studies import stability


def report(summary: dict) -> None:
    """Print the study's summary table."""
    print("{:>7} {:>6} {:>15} {:>9} {:>12}".format("k", "split", "instability %", "stable %",
                                                   "accuracy %"))
    for row in summary["rows"]:
        print(f"{row['k']:>7} {row['split']:>6} {100 * row['instability']:15.2f} "
              f"{100 * row['stable']:9.0f} {100 * row['accuracy_a']:12.2f}")


if __name__ == "__main__":
    experiments.run_main(stability.run_stability, report,
                         replicates_fn=lambda config: config.num_replicates * config.num_copies)
