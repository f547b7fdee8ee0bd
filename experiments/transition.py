"""The instability transition (Frankle et al. 2020): the dense network's instability vs the
rewind step k, IMP rewinding to several k, and the stability and accuracy of the IMP and the
randomly pruned subnetworks at one extreme sparsity.

    LTJAX_DATA_DIR=../shared/data python -m experiments.transition \
        --config=experiments/configs/transition_lenet_mnist.py --workdir=runs/transition
    python -m experiments.transition \
        --config=experiments/configs/transition_lenet_digits.py:quick --workdir=runs/transition_q

Re-running the same command on the same workdir resumes where it stopped.
"""

from ltjax import cli
from ltjax.studies import transition


def report(summary: dict) -> None:
    """Print the test instability per k and kind, and the subnetworks' accuracy and matching."""
    dense = summary["dense_accuracy"]
    print(f"test instability % (mean over pairs of copies); dense accuracy {100 * dense:.2f} %")
    for kind, by_k in summary["instability"].items():
        print(f"{kind:>7}: " + "  ".join(f"k={k}: {100 * v:.2f}" for k, v in by_k.items()))
    print("subnetworks: test accuracy % (mean over copies), share matching")
    for kind, by_k in summary["accuracy"].items():
        print(f"{kind:>7}: " + "  ".join(
            f"k={k}: {100 * v:.2f} ({summary['matching'][kind][k]:.2f})"
            for k, v in by_k.items()))


if __name__ == "__main__":
    cli.run_main(transition.run_transition, report,
                         replicates_fn=lambda config: config.num_replicates * config.num_copies)
