"""Instability analysis (linear mode connectivity) of dense nets and IMP subnetworks.

    python -m experiments.stability --config=experiments/configs/stability_lenet_mnist.py \
        --workdir=runs/lmc_dense
    python -m experiments.stability --config=experiments/configs/stability_lenet_digits.py:quick \
        --workdir=runs/lmc_q

Re-running the same command on the same workdir resumes where it stopped.
"""

from absl import app, flags, logging
from ml_collections import config_flags

import experiments
from ltjax.studies import stability

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file (experiments/configs).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results and checkpoints go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    experiments.use_cpu_devices(_CONFIG.value.num_replicates * _CONFIG.value.num_copies)
    summary = stability.run_stability(_CONFIG.value, _WORKDIR.value)
    print("{:>7} {:>6} {:>15} {:>9} {:>12}".format("k", "split", "instability %", "stable %",
                                                   "accuracy %"))
    for row in summary["rows"]:
        print(f"{row['k']:>7} {row['split']:>6} {100 * row['instability']:15.2f} "
              f"{100 * row['stable']:9.0f} {100 * row['accuracy_a']:12.2f}")


if __name__ == "__main__":
    app.run(main)
