"""Dense training of S seeds as one program.

    python -m experiments.train --config=experiments/configs/lenet_digits.py --workdir=runs/digits
    python -m experiments.train --config=experiments/configs/lenet_mnist.py \
        --workdir=runs/mnist --config.num_replicates=8

Re-running the same command on the same workdir resumes from its checkpoints.
"""

from ltjax import cli
from ltjax.studies import dense


def report(summary: dict) -> None:
    """Print the study's summary table."""
    for split, metrics in summary["final"].items():
        accs = ", ".join(f"{a:.4f}" for a in metrics["accuracy"])
        print(f"{split} accuracy per replicate after {summary['steps']} steps: {accs}")


if __name__ == "__main__":
    cli.run_main(dense.run_dense, report)
