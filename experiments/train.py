"""Dense training of S seeds as one program.

    python -m experiments.train --config=experiments/configs/lenet_digits.py --workdir=runs/digits
    python -m experiments.train --config=experiments/configs/lenet_mnist.py \
        --workdir=runs/mnist --config.num_replicates=8

Re-running the same command on the same workdir resumes from its checkpoints.
"""

from absl import app, flags, logging
from ml_collections import config_flags

import experiments
from ltjax.studies import dense

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file (experiments/configs).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results and checkpoints go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    experiments.use_cpu_devices(_CONFIG.value.num_replicates)
    summary = dense.run_train(_CONFIG.value, _WORKDIR.value)
    for split, metrics in summary["final"].items():
        accs = ", ".join(f"{a:.4f}" for a in metrics["accuracy"])
        print(f"{split} accuracy per replicate after {summary['steps']} steps: {accs}")


if __name__ == "__main__":
    app.run(main)
