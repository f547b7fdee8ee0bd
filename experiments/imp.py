"""Iterative magnitude pruning with rewinding and controls, S replicates at once.

    python -m experiments.imp --config=experiments/configs/imp_lenet_mnist.py --workdir=runs/lth
    python -m experiments.imp --config=experiments/configs/imp_lenet_digits.py:quick \
        --workdir=runs/imp --config.controls=reinit,oneshot

Re-running the same command on the same workdir resumes without redoing finished levels.
"""

from absl import app, flags, logging
from ml_collections import config_flags

import experiments
from ltjax.studies import imp

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file (experiments/configs).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results and checkpoints go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    experiments.use_cpu_devices(_CONFIG.value.num_replicates)
    summary = imp.run_imp(_CONFIG.value, _WORKDIR.value)
    header = ("level", "branch", "density %", "test acc %", "early-stop acc %")
    print("{:>5} {:>17} {:>9} {:>10} {:>16}".format(*header))
    for row in summary["rows"]:
        early = row.get("early_stop_test_accuracy")
        early = f"{100 * early:16.2f}" if early is not None else f"{'-':>16}"
        print(f"{row['level']:>5} {row['branch']:>17} {100 * row['density']:9.2f} "
              f"{100 * row['test_accuracy']:10.2f} {early}")


if __name__ == "__main__":
    app.run(main)
