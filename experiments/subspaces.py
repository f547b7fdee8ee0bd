"""Learning neural network subspaces (Wortsman et al. 2021): lines, curves and simplexes of
networks against standard training and the path between independently trained nets.

    python -m experiments.subspaces --config=experiments/configs/subspaces_mlp_mnist.py \
        --workdir=runs/subspaces
    python -m experiments.subspaces --config=experiments/configs/subspaces_mlp_digits.py:quick \
        --workdir=runs/subspaces_q

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

import experiments
from ltjax.studies import subspaces


def report(summary: dict) -> None:
    """Print the mean accuracies, error barrier and cos^2 of each arm."""
    print("{:>22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}".format(
        "arm", "end 0 %", "mid %", "end 1 %", "ens %", "barrier", "cos^2"))

    def cell(value, scale=100.0):
        return f"{'-':>9}" if value is None else f"{scale * value:9.2f}"

    def cos2(value):
        return f"{'-':>9}" if value is None else f"{value:9.1e}"

    for row in summary["rows"]:
        arm = row["variant"] if row["beta"] is None else f"{row['variant']}@{row['beta']:g}"
        print(f"{arm:>22}" + "".join(cell(row[k]) for k in (
            "endpoint_0_accuracy", "midpoint_accuracy", "endpoint_1_accuracy",
            "ensemble_accuracy", "error_barrier")) + cos2(row["cos_squared"]))


if __name__ == "__main__":
    experiments.run_main(subspaces.run_subspaces, report)
