"""The early phase of training (Frankle, Schwab & Morcos 2020): perturb the rewound IMP
subnetwork at step k (re-initialise, recombine signs and magnitudes, flip signs, shuffle,
add noise), train, and compare with the unperturbed ticket.

    LTJAX_DATA_DIR=../shared/data python -m experiments.early_phase \
        --config=experiments/configs/early_phase_lenet_mnist.py --workdir=runs/early_phase \
        --config.imp_workdir=runs/lth_imp
    python -m experiments.early_phase \
        --config=experiments/configs/early_phase_lenet_digits.py:quick --workdir=runs/early_q

Without ``--config.imp_workdir`` the study runs IMP itself into ``<workdir>/imp``.
Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

from ltjax import cli
from ltjax.studies import early_phase


def report(summary: dict) -> None:
    """Print the test accuracy and drop (mean ± std over replicates) per k and perturbation."""
    print(f"accuracy and drop: mean ± std over {summary['num_replicates']} replicates; "
          "effective std: mean")
    print("{:>6} {:>34} {:>15} {:>15} {:>10}".format(
        "k", "perturbation", "test acc %", "drop pp", "eff. std"))
    for row, std in zip(summary["rows"], summary["std"], strict=True):
        print(f"{row['k']:>6} {row['perturbation']:>34} "
              f"{100 * row['test_accuracy']:7.2f} ± {100 * std['test_accuracy']:5.2f} "
              f"{100 * row['test_accuracy_drop']:7.2f} ± {100 * std['test_accuracy_drop']:5.2f} "
              f"{row['effective_std']:10.4f}")


if __name__ == "__main__":
    cli.run_main(early_phase.run_early_phase, report)
