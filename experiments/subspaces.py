"""Learning neural network subspaces (Wortsman et al. 2021): lines, curves and simplexes of
networks against standard training and the path between independently trained nets.

    python -m experiments.subspaces --config=experiments/configs/subspaces_mlp_mnist.py \
        --workdir=runs/subspaces
    python -m experiments.subspaces --config=experiments/configs/subspaces_mlp_digits.py:quick \
        --workdir=runs/subspaces_q

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

from ltjax import cli
from ltjax.studies import subspaces


def report(summary: dict) -> None:
    """Print the accuracies, error barrier (mean ± std over replicates) and cos^2 of each arm."""
    print(f"mean ± std over {summary['num_replicates']} replicates; cos^2: mean")
    print("{:>22} {:>15} {:>15} {:>15} {:>15} {:>15} {:>9}".format(
        "arm", "end 0 %", "mid %", "end 1 %", "ens %", "barrier %", "cos^2"))

    def cell(mean, std):
        return f" {'-':>15}" if mean is None else f" {100 * mean:7.2f} ± {100 * std:5.2f}"

    def cos2(value):
        return f" {'-':>9}" if value is None else f" {value:9.1e}"

    for row, std in zip(summary["rows"], summary["std"], strict=True):
        arm = row["variant"] if row["beta"] is None else f"{row['variant']}@{row['beta']:g}"
        print(f"{arm:>22}" + "".join(cell(row[k], std[k]) for k in (
            "endpoint_0_accuracy", "midpoint_accuracy", "endpoint_1_accuracy",
            "ensemble_accuracy", "error_barrier")) + cos2(row["cos_squared"]))


if __name__ == "__main__":
    cli.run_main(subspaces.run_subspaces, report)
