"""Pruning at initialisation (magnitude, SNIP, GraSP, |GraSP|, SynFlow, random), the one-shot
ticket reset to init (``oneshot_lth``), magnitude pruning after training with learning-rate
rewinding (``lr_rewinding``) and the ablations of Frankle et al. 2021 (shuffle, reinit,
invert), S replicates at once.

    python -m experiments.prune_at_init \
        --config=experiments/configs/prune_at_init_lenet_mnist.py --workdir=runs/pai
    python -m experiments.prune_at_init \
        --config=experiments/configs/prune_at_init_lenet_digits.py:quick --workdir=runs/pai_q

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

from ltjax import cli
from ltjax.studies import prune_at_init


def report(summary: dict) -> None:
    """Print the test accuracy (mean ± std over replicates) per density, method and ablation."""
    print(f"test accuracy: mean ± std over {summary['num_replicates']} replicates")
    print("{:>9} {:>12} {:>8} {:>10} {:>15}".format(
        "density %", "method", "ablation", "kept %", "test acc %"))
    for row, std in zip(summary["rows"], summary["std"], strict=True):
        print(f"{100 * row['density']:9.2f} {row['method']:>12} {row['ablation']:>8} "
              f"{100 * row['kept_density']:10.2f} "
              f"{100 * row['test_accuracy']:7.2f} ± {100 * std['test_accuracy']:5.2f}")


if __name__ == "__main__":
    cli.run_main(prune_at_init.run_prune_at_init, report)
