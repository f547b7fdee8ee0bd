"""Test set-up: 4 fake CPU devices, strict rank promotion, offline data dir, and one
persistent compilation cache shared by every test of the run (a fresh temporary folder)."""

import atexit
import os
import pathlib
import shutil
import tempfile

import jax

from experiments import tune_allocator, use_compilation_cache

tune_allocator()
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_rank_promotion", "raise")
_CACHE = use_compilation_cache(tempfile.mkdtemp(prefix="ltjax-test-jax-cache-"))
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

_SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "LTJAX_DATA_DIR" not in os.environ and _SHARED.is_dir():
    os.environ["LTJAX_DATA_DIR"] = str(_SHARED)
