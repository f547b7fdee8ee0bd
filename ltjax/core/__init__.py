"""The core layer, the lowest: array algebra on parameter pytrees (never flax).

Modules: ``tree``, ``rng``, ``topk``, ``masking``, ``pruning``, ``rewinding``,
``interpolation``, ``soups``, ``matching``, ``repair``. They import each other only.

Import a module from here (``from ltjax.core import masking``); this package re-exports
nothing.
"""
