"""Knowledge Evolution (Taha et al. 2021): generations of training that re-initialise the
reset hypothesis; the fit hypothesis becomes a slim network.

    python -m experiments.knowledge_evolution \
        --config=experiments/configs/knowledge_evolution_lenet_digits.py --workdir=runs/ke
    python -m experiments.knowledge_evolution \
        --config=experiments/configs/knowledge_evolution_lenet_digits.py:quick --workdir=runs/ke_q

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

from ltjax import cli
from ltjax.studies import knowledge_evolution


def report(summary: dict) -> None:
    """Print dense and slim test accuracy per generation (mean ± std over replicates)."""
    print(f"test accuracy (%): mean ± std over {summary['num_replicates']} replicates")
    print("{:>10} {:>15} {:>15} {:>12}".format("generation", "dense", "slim", "slim params"))
    for row, std in zip(summary["rows"], summary["std"], strict=True):
        print(f"{row['generation']:10d} "
              f"{100 * row['dense_test_accuracy']:7.2f} ± {100 * std['dense_test_accuracy']:5.2f} "
              f"{100 * row['slim_test_accuracy']:7.2f} ± {100 * std['slim_test_accuracy']:5.2f} "
              f"{row['slim_params']:12.0f}")


if __name__ == "__main__":
    cli.run_main(knowledge_evolution.run_knowledge_evolution, report)
