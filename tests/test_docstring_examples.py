"""The docstrings' ``>>>`` examples, run as doctests: one test per ``ltjax`` module.

Every module of the package is discovered (``pkgutil``) and collected, none left out, so a
module added later has its examples run without an edit here. Each module's examples run
with empty globals (only ``__name__``): an example imports what it uses, as a reader pasting
it would. A failure names the module and prints doctest's report (the docstring, its line,
expected vs got).

One module's examples::

    python -m pytest tests/test_docstring_examples.py -n 0 -k "ltjax.core.masking"
"""

import doctest
import importlib
import io
import pkgutil

import pytest

import ltjax

#: The fewest examples (``>>>`` lines) the collected modules hold together: 1376 when the
#: harness was written (7 December 2026, 41 modules), 1561 once the plots and the studies
#: were collected too (63 modules), 1596 with the command line's 35 (``ltjax.cli``, moved
#: out of ``experiments``), 1813 with the study specs (every study's ``Spec.from_config``).
#: Raise it as examples are added, so that none vanish silently.
MIN_EXAMPLES = 1813

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _all_modules() -> list[str]:
    names = ["ltjax"]
    names += [m.name for m in pkgutil.walk_packages(ltjax.__path__, prefix="ltjax.")]
    return sorted(names)


ALL_MODULES = _all_modules()
MODULES = ALL_MODULES


def _doctests(name: str) -> list[doctest.DocTest]:
    """The module's examples, each docstring's with fresh globals holding only ``__name__``."""
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = finder.find(module, name, globs={"__name__": name})
    return sorted(tests, key=lambda t: (t.lineno or 0, t.name))


@pytest.mark.parametrize("name", MODULES)
def test_examples(name):
    """Every example of the module runs and prints what its docstring says."""
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    report = io.StringIO()
    for test in _doctests(name):
        runner.run(test, out=report.write)
    if runner.failures:
        pytest.fail(f"{name}: {runner.failures} of {runner.tries} examples failed\n"
                    f"{report.getvalue()}", pytrace=False)


def test_examples_do_not_vanish():
    """The collected modules hold at least :data:`MIN_EXAMPLES` examples together."""
    total = sum(len(t.examples) for name in MODULES for t in _doctests(name))
    assert total >= MIN_EXAMPLES, f"{total} examples, fewer than {MIN_EXAMPLES}"
