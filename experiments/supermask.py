"""Supermasks: edge-popup (Ramanujan et al. 2020) over a grid of density x weight init (signed
Kaiming constant, Kaiming normal), or Zhou et al. 2019's untrained supermasks from an IMP run,
or (``--config.method=bernoulli`` / ``dnw``) Zhou et al.'s learned Bernoulli supermask or DNW
(Wortsman et al. 2019).

    LTJAX_DATA_DIR=../shared/data python -m experiments.supermask \
        --config=experiments/configs/supermask_lenet_mnist.py --workdir=runs/supermask
    python -m experiments.supermask \
        --config=experiments/configs/supermask_lenet_digits.py:quick --workdir=runs/supermask_q
    LTJAX_DATA_DIR=../shared/data python -m experiments.supermask \
        --config=experiments/configs/supermask_zhou_lenet_mnist.py --workdir=runs/zhou \
        --config.imp_workdir=runs/lth_imp
    python -m experiments.supermask --config=experiments/configs/supermask_lenet_digits.py:quick \
        --workdir=runs/dnw_q --config.method=dnw

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""

from ltjax import cli
from ltjax.studies import supermask


def report(summary: dict) -> None:
    """Print the test accuracy (mean ± std) per method, weight init (or criterion) and density."""
    print(f"test accuracy: mean ± std over {summary['num_replicates']} replicates")
    print("{:>30} {:>8} {:>15}".format("weight init / criterion", "density", "test acc %"))
    for row, std in zip(summary["rows"], summary["std"], strict=True):
        name = (f"{row['criterion']}, {row['weight_init']}" if row.get("criterion")
                else row["weight_init"])
        print(f"{name:>30} {row['density']:8.3f} "
              f"{100 * row['test_accuracy']:7.2f} ± {100 * std['test_accuracy']:5.2f}")


if __name__ == "__main__":
    cli.run_main(supermask.run_supermask, report)
