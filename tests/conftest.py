"""Test set-up: 4 fake CPU devices, strict rank promotion, offline data dir, one
persistent compilation cache shared by every test and worker of the run (a fresh temporary
folder), and XLA's backend at optimisation level 0.

The suite runs on 2 pytest-xdist workers (``-n 2 --dist loadfile`` in pyproject.toml: the
tests of one file share a worker, so module fixtures and compiled programs are shared);
``-n 0`` runs it in one process.

The suite's tiny programs spend far more time compiling than running: at level 0 LLVM
compiles a ResNet-8 init program in 2.5 s instead of 18.7 s (its steps run ~2x slower).
Tests that compare numbers compare programs compiled alike. ``LTJAX_TEST_XLA_OPT=default``
runs the suite with XLA's default level.
"""

import atexit
import os
import pathlib
import shutil
import tempfile

if os.environ.get("LTJAX_TEST_XLA_OPT", "0") != "default":  # before XLA starts
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [
        os.environ.get("XLA_FLAGS", ""),
        f"--xla_backend_optimization_level={os.environ.get('LTJAX_TEST_XLA_OPT', '0')}"]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import tune_allocator, use_compilation_cache  # noqa: E402

tune_allocator()
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_rank_promotion", "raise")
# One cache for the run: the first process (pytest-xdist's controller, or pytest alone)
# creates it and removes it at exit; the workers it starts inherit the variable.
if "LTJAX_TEST_CACHE_DIR" not in os.environ:
    os.environ["LTJAX_TEST_CACHE_DIR"] = tempfile.mkdtemp(prefix="ltjax-test-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["LTJAX_TEST_CACHE_DIR"], ignore_errors=True)
_CACHE = use_compilation_cache(os.environ["LTJAX_TEST_CACHE_DIR"])

_SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "LTJAX_DATA_DIR" not in os.environ and _SHARED.is_dir():
    os.environ["LTJAX_DATA_DIR"] = str(_SHARED)


@pytest.fixture
def drawn(monkeypatch):
    """The curves each plot draws, by file name: ``{name: {(axis, label): (xs, ys)}}``.

    The PNG is still written; tests compare the drawn lines with the data the
    plot should show (a check that fails on a wrong or empty plot, unlike
    ``path.exists()``).
    """
    from ltjax import plots

    out: dict = {}
    original = plots._save

    def spy(fig, path):
        out[pathlib.Path(path).name] = {
            (i, line.get_label()): (np.asarray(line.get_xdata(), float),
                                    np.asarray(line.get_ydata(), float))
            for i, ax in enumerate(fig.axes) for line in ax.get_lines()}
        original(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    return out
