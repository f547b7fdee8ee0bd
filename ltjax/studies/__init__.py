"""Studies: the functions experiment modules call (``run_dense(config, workdir)``).

Each takes an ``ml_collections.ConfigDict`` and a workdir, writes its results
there, and resumes from the workdir's checkpoints when run again. A Colab
user calls them directly.
"""
