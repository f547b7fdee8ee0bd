"""The data and I/O layer: datasets, checkpoints, tables, processes, the TensorBoard mirror.

Modules: ``data``, ``checkpoint``, ``results``, ``distributed``, ``tensorboard``. They
import the core only.

Import a module from here (``from ltjax.io import data``); this package re-exports nothing.
"""
