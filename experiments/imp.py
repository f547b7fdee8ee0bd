"""Iterative magnitude pruning with rewinding and controls, S replicates at once.

    python -m experiments.imp --config=experiments/configs/imp_lenet_mnist.py --workdir=runs/lth
    python -m experiments.imp --config=experiments/configs/imp_lenet_digits.py:quick \
        --workdir=runs/imp --config.controls=reinit,oneshot

Re-running the same command on the same workdir resumes without redoing finished levels.
"""

from ltjax import cli
from ltjax.studies import imp


def report(summary: dict) -> None:
    """Print the study's summary table: mean ± std over the replicates per level and branch."""
    print(f"accuracies: mean ± std over {summary['num_replicates']} replicates")
    header = ("level", "branch", "lr", "density %", "test acc %", "early-stop acc %", "R_p")
    print("{:>5} {:>17} {:>9} {:>9} {:>15} {:>16} {:>6}".format(*header))
    for row, std in zip(summary["rows"], summary["std"], strict=True):
        early = row.get("early_stop_test_accuracy")
        early = (f"{100 * early:8.2f} ± {100 * std['early_stop_test_accuracy']:5.2f}"
                 if early is not None else f"{'-':>16}")
        lr = row.get("learning_rate")  # None for the small dense control of a sweep
        lr = f"{lr:9.3g}" if lr is not None else f"{'-':>9}"
        corr = row.get("weight_correlation")
        corr = f"{corr:6.3f}" if corr is not None else f"{'-':>6}"
        print(f"{row['level']:>5} {row['branch']:>17} {lr} {100 * row['density']:9.2f} "
              f"{100 * row['test_accuracy']:7.2f} ± {100 * std['test_accuracy']:5.2f} "
              f"{early} {corr}")


if __name__ == "__main__":
    cli.run_main(imp.run_imp, report)
