"""ltjax: lottery tickets and weight-space studies in JAX, many seeds at once.

The package is in layer folders, lowest first; a module imports only its own layer or a
lower one (docs/architecture.md, checked by tests/test_layers.py): ``core`` (pytree
algebra), ``io`` (data, checkpoints, tables, processes), ``models``, ``engine`` (the
executor), ``methods``, ``studies``, and ``cli`` on top. Import modules, not names::

    from ltjax import models
    from ltjax.core import masking, pruning, rng
    from ltjax.engine import executor, optim
    from ltjax.io import data
    from ltjax.studies import imp
"""

__version__ = "0.1.0"
