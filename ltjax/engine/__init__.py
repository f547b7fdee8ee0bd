"""The engine layer: the optax recipe, reparameterisations, the train state and steps, the
many-member executor.

Modules: ``optim``, ``reparam``, ``train``, ``executor``. They import the core, ``io`` and
``models``.

Import a module from here (``from ltjax.engine import executor``); this package re-exports
nothing.
"""
