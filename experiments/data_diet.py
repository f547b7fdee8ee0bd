"""The data diet (Paul, Ganguli & Dziugaite 2021): score examples early, train on a subset.

    LTJAX_DATA_DIR=../shared/data python -m experiments.data_diet \
        --config=experiments/configs/data_diet_lenet_mnist.py --workdir=runs/data_diet
    python -m experiments.data_diet \
        --config=experiments/configs/data_diet_lenet_digits.py:quick --workdir=runs/data_diet_q

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

from ltjax import cli
from ltjax.studies import data_diet


def report(summary: dict) -> None:
    """Print test accuracy per kept share and mode (mean ± std over replicates)."""
    print(f"test accuracy: mean ± std over {summary['num_replicates']} replicates")
    print("{:>7} {:>9} {:>9} {:>17}".format("kept %", "mode", "examples", "test acc %"))
    for row, std in zip(summary["rows"], summary["std"], strict=True):
        print(f"{100 * row['kept']:7.1f} {row['mode']:>9} {row['num_examples']:9.0f} "
              f"{100 * row['test_accuracy']:8.2f} ± {100 * std['test_accuracy']:5.2f}")
    if "noise" in summary:
        n = summary["noise"]
        print(f"label noise {100 * n['noise_share']:g} % ({n['num_corrupted']} examples): "
              f"precision of the top {100 * n['top_share']:.1f} % {n['score']} "
              f"{n['precision']:.3f}")
    if "score_stats" in summary:
        print(f"Spearman({summary['score_stats']['score']} at step 0, ||x||): "
              f"{summary['score_stats']['spearman_input_norm']:.3f}")


if __name__ == "__main__":
    cli.run_main(data_diet.run_data_diet, report)
