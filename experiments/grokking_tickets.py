"""Grokking Tickets (Minegishi et al. 2023): tickets of the grokked net generalise faster.

    python -m experiments.grokking_tickets \
        --config=experiments/configs/grokking_tickets_transformer.py --workdir=runs/grok
    python -m experiments.grokking_tickets \
        --config=experiments/configs/grokking_tickets_transformer.py:quick --workdir=runs/grok_q

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

from ltjax import cli
from ltjax.studies import grokking_tickets


def _step(value) -> str:
    return "never" if value is None else f"{value:.0f}"


def report(summary: dict) -> None:
    """Print steps to 100 % train and to the target test accuracy per arm (mean ± std)."""
    target = 100 * summary["target_accuracy"]
    print(f"mean ± std over {summary['num_replicates']} replicates; dense net memorised at "
          f"steps {summary['memorised_steps']}")
    print("{:>12} {:>8} {:>14} {:>18} {:>16}".format(
        "arm", "density", "to 100 % train", f"to {target:g} % test", "final test %"))
    for row, std in zip(summary["rows"], summary["std"], strict=True):
        acc = row["final_test_accuracy"]
        print(f"{row['arm']:>12} {100 * row['density']:7.1f}% "
              f"{_step(row['steps_to_train_100']):>14} "
              f"{_step(row['steps_to_test_95']):>11} ± {_step(std['steps_to_test_95']):>5} "
              f"{100 * acc:9.2f} ± {100 * std['final_test_accuracy']:4.2f}")


if __name__ == "__main__":
    cli.run_main(grokking_tickets.run_grokking_tickets, report)
