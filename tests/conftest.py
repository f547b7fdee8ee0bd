"""Test set-up: 4 fake CPU devices, strict rank promotion, offline data dir."""

import os
import pathlib

import jax

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_rank_promotion", "raise")

_SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "LTJAX_DATA_DIR" not in os.environ and _SHARED.is_dir():
    os.environ["LTJAX_DATA_DIR"] = str(_SHARED)
