"""The methods layer: pruning at init, sanity checks, perturbations, telemetry, supermasks,
subspaces, STR, BatchNorm-only, Knowledge Evolution, Early-Bird, the data diet.

Modules: ``saliency``, ``sanity``, ``perturbations``, ``telemetry``, ``supermasks``,
``supsup``, ``subspaces``, ``soft_threshold``, ``batchnorm_only``, ``knowledge_evolution``,
``early_bird``, ``data_diet``. They import the core, ``io``, ``models``, ``engine.optim``
and ``engine.reparam`` (never the executor, the training step or the studies).

Import a module from here (``from ltjax.methods import saliency``); this package re-exports
nothing.
"""
