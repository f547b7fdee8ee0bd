"""Edge-popup (Ramanujan et al. 2020): supermasks of random, never-trained weights over a grid
of density x weight init (signed Kaiming constant, Kaiming normal).

    LTJAX_DATA_DIR=../shared/data python -m experiments.supermask \
        --config=experiments/configs/supermask_lenet_mnist.py --workdir=runs/supermask
    python -m experiments.supermask \
        --config=experiments/configs/supermask_lenet_digits.py:quick --workdir=runs/supermask_q

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

import experiments
from ltjax.studies import supermask


def report(summary: dict) -> None:
    """Print the mean test accuracy per weight init and density."""
    print("{:>16} {:>8} {:>10}".format("weight init", "density", "test acc %"))
    for row in summary["rows"]:
        print(f"{row['weight_init']:>16} {row['density']:8.2f} "
              f"{100 * row['test_accuracy']:10.2f}")


if __name__ == "__main__":
    experiments.run_main(supermask.run_supermask, report)
