"""SupSup (Wortsman et al. 2020): one supermask per permuted-pixel task over one fixed random
network; tasks inferred from the entropy gradient of the masks in superposition.

    LTJAX_DATA_DIR=../shared/data python -m experiments.supsup \
        --config=experiments/configs/supsup_lenet_mnist.py --workdir=runs/supsup
    python -m experiments.supsup \
        --config=experiments/configs/supsup_lenet_digits.py:quick --workdir=runs/supsup_q
    LTJAX_DATA_DIR=../shared/data python -m experiments.supsup \
        --config=experiments/configs/supsup_lenet_mnist.py --workdir=runs/supsup_gg \
        --config.mask=top_k

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

from ltjax import cli
from ltjax.studies import supsup


def report(summary: dict) -> None:
    """Print per-task accuracy (task given) and task-inference accuracy (mean over replicates)."""
    print(f"SupSup ({summary['mask']}): {summary['num_tasks']} tasks, mean ± std over "
          f"{summary['num_replicates']} replicate(s)")
    print("{:>5} {:>17} {:>13} {:>13} {:>13}".format(
        "task", "test acc % (given)", "infer batch %", "infer first %", "infer binary %"))

    def pct(row, field):
        return "—" if row[field] is None else f"{100 * row[field]:.2f}"

    for row, std in zip(summary["rows"], summary["std"], strict=True):
        print(f"{row['task']:>5} {pct(row, 'test_accuracy'):>9} ± "
              f"{100 * std['test_accuracy']:5.2f} {pct(row, 'inferred_task_accuracy'):>13} "
              f"{pct(row, 'inferred_task_accuracy_first'):>13} "
              f"{pct(row, 'inferred_task_accuracy_binary'):>13}")
    overall = summary["overall"]
    print("all tasks: " + ", ".join(
        f"{k} {'—' if v is None else f'{100 * v:.2f}%'}" for k, v in overall.items()))


if __name__ == "__main__":
    cli.run_main(supsup.run_supsup, report)
