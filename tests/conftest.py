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

Exact or tolerant. XLA:CPU picks each program's kernels, and so the order in which it adds
up each sum, by shapes and by the machine's CPU features: two *different* programs may
differ in the last bits, by how much depends on the machine (issue #29). So a test asserts
bit-equality (``assert_array_equal``, ``tobytes``, ``read_bytes``, ``==`` of tables) only
where both sides come from one program on one machine, or are exact by construction:

- the same program run again: a rerun, a finished run restored, the same function on the
  same shapes (op by op or jitted alike);
- a resumed run vs an uninterrupted one, checkpoint round trips (the same step and eval
  programs; a rolled ``lax.scan``'s step body whatever the chunk length);
- members under member blocks (``'scan_vmap'``, ``member_block`` 1 on CPU): every member
  runs through one block program whatever S is, so S = 1 and S = 8 give member r the same
  bits (test_train, test_invariants' IMP runs, test_studies' seeds); several processes vs
  one likewise (the same per-member programs);
- pure data movement (gathers, slices, permutations, ``where`` masks, copies, lerp at 0
  and 1), and dyadic or otherwise exact arithmetic (``p + 0``, ``0.5 * a``, sums of small
  multiples of 2**-k: the slim-vs-dense MLP of test_knowledge_evolution);
- elementwise arithmetic without a sum to reorder: RNG initialisation draws, vmapped vs
  alone or in two executors' init programs (equal eager vs jitted, at both optimisation
  levels);
- integer and bool results: masks, counts, indices, permutations, accuracies (from two
  programs' floats too where no tie lies within rounding of the cut: top-k masks vs a
  NumPy oracle's).

Comparisons across programs (a slim net vs its masked dense net, materialised inputs or
not, a member of an unrolled loop vs alone, the library's step vs an oracle's, strategies,
vmap widths, reductions over other batch shapes) use a tolerance of float32 rounding:
eps32 = 2**-23 scaled by the sums' lengths and the depth (derived where it is used). An
accuracy computed by two programs may differ by one example (an argmax near-tie).

A test marked ``default_emitters`` runs under XLA:CPU's default fusion emitters, the ones
users run (in a subprocess when the suite uses the legacy ones): the member-blocks test,
whose exactness across S is the executor's promise (it holds under the legacy emitters
too). ``LTJAX_TEST_XLA_EMITTERS=default`` runs the whole suite with the default emitters and
``LTJAX_TEST_XLA_OPT=default`` with XLA's default optimisation level.
"""

import atexit
import contextlib
import copy
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile


def _xla_has_legacy_emitters() -> bool:
    """Whether this jaxlib's XLA:CPU knows ``--xla_cpu_use_fusion_emitters`` (0.10 does; 0.12
    removed it, and an unknown flag in XLA_FLAGS aborts the process)."""
    from importlib import metadata

    return tuple(int(x) for x in metadata.version("jaxlib").split(".")[:2]) < (0, 11)


_LEGACY_EMITTERS = (os.environ.get("LTJAX_TEST_XLA_EMITTERS", "legacy") != "default"
                    and _xla_has_legacy_emitters())
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

from ltjax import cli  # noqa: E402

cli.tune_allocator()
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_rank_promotion", "raise")
# One cache for the run: the first process (pytest-xdist's controller, or pytest alone)
# creates it and removes it at exit; the workers it starts inherit the variable.
if "LTJAX_TEST_CACHE_DIR" not in os.environ:
    os.environ["LTJAX_TEST_CACHE_DIR"] = tempfile.mkdtemp(prefix="ltjax-test-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["LTJAX_TEST_CACHE_DIR"], ignore_errors=True)
# Every program, however quick to compile: the suite's tests build the same small programs
# again and again in new executors (model inits, eval and step programs, eager ops), and most
# compile in under the users' 0.5 s threshold (test_stability + test_studies: 68 -> 52 s CPU).
# The experiments the tests start as subprocesses (several processes, the CLI) read the same.
os.environ["LTJAX_COMPILATION_CACHE_MIN_SECONDS"] = "0"
# The entry points the tests start as subprocesses use the run's cache too (not the user's
# ~/.cache/ltjax/jax): they share the programs the tests compiled, and leave nothing behind.
os.environ["LTJAX_COMPILATION_CACHE"] = os.environ["LTJAX_TEST_CACHE_DIR"]
_CACHE = cli.use_compilation_cache(os.environ["LTJAX_TEST_CACHE_DIR"])

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
    from ltjax.studies import plots

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


@pytest.fixture
def on_training(monkeypatch):
    """``on_training(before)``: call ``before(call)`` ahead of every training call of every
    executor (a spy, a counter, a planted kill that raises); ``on_training(None)`` undoes it.

    ``call`` has ``executor``, ``state``, ``masks``, ``num_steps`` and ``kwargs`` (hparams,
    subsets). A call is :meth:`Executor.train`, or one program of
    :meth:`Executor.train_and_evaluate` (``num_steps``: its intervals' steps; under
    ``'unrolled_loop'`` that method calls ``train`` itself, which is the call seen).
    """
    import types

    from ltjax.engine import executor as executor_lib

    cls = executor_lib.Executor
    train, train_and_evaluate = cls.train, cls.train_and_evaluate

    def spied_train(self, state, masks, noise_keys, *, num_steps, **kwargs):
        hook[0](types.SimpleNamespace(executor=self, state=state, masks=masks,
                                      num_steps=num_steps, kwargs=kwargs))
        return train(self, state, masks, noise_keys, num_steps=num_steps, **kwargs)

    def spied_train_and_evaluate(self, state, masks, noise_keys, *, num_intervals, interval,
                                 splits, **kwargs):
        if self.strategy == "scan_vmap":
            hook[0](types.SimpleNamespace(executor=self, state=state, masks=masks,
                                          num_steps=num_intervals * interval, kwargs=kwargs))
        return train_and_evaluate(self, state, masks, noise_keys, num_intervals=num_intervals,
                                  interval=interval, splits=splits, **kwargs)

    hook = [None]

    def install(before):
        hook[0] = before
        monkeypatch.setattr(cls, "train", train if before is None else spied_train)
        monkeypatch.setattr(cls, "train_and_evaluate", train_and_evaluate if before is None
                            else spied_train_and_evaluate)

    return install


@pytest.fixture
def planted_match():
    """``match(config) -> (executor, spec, params, shuffled, dataset)``: re-basin's matching of
    a model to a copy of itself under a random (planted) permutation, asserted to undo it
    exactly (the permutation's inverse is the oracle)."""
    import chex

    from ltjax import models
    from ltjax.core import matching
    from ltjax.studies import common, rebasin

    def match(config):
        dataset = common.build_dataset(config)
        model = common.build_model(config, dataset)
        executor = common.build_executor(config, model, dataset,
                                         common.build_recipe(config, dataset))
        params, _ = models.init(model, jax.random.key(0), dataset.input_shape)
        spec = models.permutation_spec(model, params)
        planted = matching.random_perms(jax.random.key(1), matching.check_spec(spec, params))
        shuffled = matching.apply_permutation(spec, planted, params)
        result = rebasin.match(rebasin.MatchingSpec.from_config(config), executor, spec,
                               (params, {}), (shuffled, {}))
        chex.assert_trees_all_close(matching.apply_permutation(spec, result.perms, shuffled),
                                    params)
        return executor, spec, params, shuffled, dataset

    return match


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "default_emitters: runs under XLA:CPU's default fusion emitters, the "
        "ones users run (a subprocess when the suite uses the legacy ones)")


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


class SealedConfig:
    """A study's config that refuses every read while sealed: what a study reads after its
    spec exists is found (the spec is the one parse of the config, #30)."""

    def __init__(self, config):
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_sealed", False)
        object.__setattr__(self, "specs_built", 0)

    def _read(self, what):
        if object.__getattribute__(self, "_sealed"):
            raise AssertionError(f"config{what} read after the study's spec was built")
        return object.__getattribute__(self, "_config")

    def __getattr__(self, name):
        return getattr(self._read(f".{name}"), name)

    def __getitem__(self, key):
        return self._read(f"[{key!r}]")[key]

    def __contains__(self, key):
        return key in self._read(f" contains {key!r}")

    def __deepcopy__(self, memo):  # a copy is a read; it is the config itself, unsealed
        return copy.deepcopy(self._read(" copied"), memo)


@contextlib.contextmanager
def sealed_after_spec(config, spec_cls):
    """``config`` as a :class:`SealedConfig` that ``spec_cls.from_config`` seals once it has
    built the spec (and unseals for the next run's spec): a study run on it fails on any
    config read after its spec exists. Asserts on exit that a spec was built from it (else
    the check would hold vacuously)."""
    proxy = SealedConfig(config)
    original = spec_cls.from_config.__func__

    def then_sealed(cls, cfg, *args, **kwargs):
        if cfg is proxy:
            object.__setattr__(proxy, "_sealed", False)
        spec = original(cls, cfg, *args, **kwargs)
        if cfg is proxy:
            object.__setattr__(proxy, "_sealed", True)
            object.__setattr__(proxy, "specs_built", proxy.specs_built + 1)
        return spec

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spec_cls, "from_config", classmethod(then_sealed))
        yield proxy
    assert proxy.specs_built, f"no {spec_cls.__name__} was built from the sealed config"


@pytest.fixture
def sealed():
    """``sealed(config, spec_cls)``: :func:`sealed_after_spec` for one test."""
    with contextlib.ExitStack() as stack:
        yield lambda config, spec_cls: stack.enter_context(sealed_after_spec(config, spec_cls))


#: The slowest test files, longest first (summed ``--durations=0`` of a run on 7 December
#: 2026): pytest-xdist hands out whole files in collection order (``--dist loadfile``), so
#: starting the long ones first keeps one worker from running a long file alone at the end.
SLOW_FILES_FIRST = (
    "test_distributed.py", "test_imp.py", "test_train.py", "test_studies.py",
    "test_grokking_tickets.py", "test_early_phase.py", "test_invariants.py",
    "test_vit_studies.py", "test_docstring_examples.py", "test_prune_at_init.py",
    "test_matching.py", "test_transition.py", "test_configs.py", "test_models.py",
    "test_supermasks.py", "test_executor.py", "test_readme.py", "test_bn_only.py",
    "test_knowledge_evolution.py", "test_telemetry.py",
)


def pytest_collection_modifyitems(session, config, items):
    """Order the files longest first (:data:`SLOW_FILES_FIRST`), the rest as collected."""
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
