"""The experiments: one command-line entry point per study, and their configs.

Each module here (``imp``, ``stability``, ``soups``, ``train`` for dense training, ...)
is a thin main: it names one study of :mod:`ltjax.studies` and how to print its summary,
and hands both to :func:`ltjax.cli.run_main`, which parses the flags, runs the study and
says what it wrote. ``configs/`` holds one ``get_config`` file per study, model and
dataset (``<study>_<model>_<data>.py``; dense training: ``<model>_<data>.py``), with
variants after a colon (``:quick`` for a smoke run). Run one from the repository root::

    python -m experiments.imp --config=experiments/configs/imp_lenet_digits.py:quick \\
        --workdir=runs/imp_quick

Any config field can be overridden (``--config.num_replicates=8``); ``--print_config``
shows the resolved config and ``--help`` the flags. Re-running the same command on the same
workdir resumes it.
"""
