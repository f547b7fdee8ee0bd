"""ltjax: lottery tickets and weight-space studies in JAX, many seeds at once.

Import modules, not names::

    from ltjax import rng, data, models, train
"""

__version__ = "0.1.0"
