"""Test set-up: 4 fake CPU devices, strict rank promotion, offline data dir, one
persistent compilation cache shared by every test and worker of the run (a fresh temporary
folder), XLA's backend at optimisation level 0 and XLA:CPU's legacy loop emitters.

The suite runs on 2 pytest-xdist workers (``-n 2 --dist loadfile`` in pyproject.toml: the
tests of one file share a worker, so module fixtures and compiled programs are shared);
``-n 0`` runs it in one process.

The suite's tiny programs spend far more time compiling than running: at level 0 LLVM
compiles a ResNet-8 init program in 2.5 s instead of 18.7 s (its steps run ~2x slower), and
XLA:CPU's legacy loop emitters (``--xla_cpu_use_fusion_emitters=false``) halve what is left
(the IMP study test: 18.5 s of backend compilation -> 8.4 s over 159 programs; the suite:
~12 min -> ~5 min on 2 cores). Tests that compare numbers compare programs compiled alike.

A test marked ``default_emitters`` compares the bytes of two *different* programs (a member
trained beside others vs alone, a model with and without materialised inputs): a property
of the XLA:CPU users run, with its default fusion emitters, that the legacy emitters do not
keep. Under the legacy emitters such a test runs in a subprocess with the default ones.
``LTJAX_TEST_XLA_EMITTERS=default`` runs the whole suite with the default emitters and
``LTJAX_TEST_XLA_OPT=default`` with XLA's default optimisation level.
"""

import atexit
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

_LEGACY_EMITTERS = os.environ.get("LTJAX_TEST_XLA_EMITTERS", "legacy") != "default"
if os.environ.get("LTJAX_TEST_XLA_OPT", "0") != "default":  # before XLA starts
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [
        os.environ.get("XLA_FLAGS", ""),
        f"--xla_backend_optimization_level={os.environ.get('LTJAX_TEST_XLA_OPT', '0')}"]))
if _LEGACY_EMITTERS:
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [
        os.environ.get("XLA_FLAGS", ""), "--xla_cpu_use_fusion_emitters=false"]))

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


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "default_emitters: compares two programs' bytes; runs under XLA:CPU's "
        "default fusion emitters (a subprocess when the suite uses the legacy ones)")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run a ``default_emitters`` test in a subprocess with the default emitters."""
    if not _LEGACY_EMITTERS or pyfuncitem.get_closest_marker("default_emitters") is None:
        return None
    env = dict(os.environ, LTJAX_TEST_XLA_EMITTERS="default")
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("--xla_cpu_use_fusion_emitters=false",
                                                          "").strip()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", pyfuncitem.nodeid, "-q", "-n", "0",
         "-p", "no:cacheprovider"],
        cwd=pyfuncitem.config.rootpath, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"under XLA:CPU's default emitters (subprocess):\n{proc.stdout[-6000:]}"
                    f"{proc.stderr[-2000:]}", pytrace=False)
    return True
