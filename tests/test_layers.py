"""The package's layers (docs/architecture.md#layers), checked from the source with ``ast``.

Every module of ``ltjax/`` belongs to a layer by its folder (``ltjax/cli.py``, the entry
layer, on top): core < io < models < engine < methods < studies < cli. A module may import
modules of its own layer or of a lower one only (lazy imports inside functions and
``TYPE_CHECKING`` blocks count too), the imports between modules form no cycle, and no
module lies outside the known layers (a new folder must be given a layer here).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The layer folders, lowest first; ``cli`` is the module ``ltjax/cli.py``.
LAYERS = ("core", "io", "models", "engine", "methods", "studies", "cli")
RANK = {layer: rank for rank, layer in enumerate(LAYERS)}
#: The package's ``__init__``: below every layer, it imports none of them (no re-exports).
ROOT_RANK = -1
#: Imports that the rank allows but the architecture does not: the methods never reach the
#: executor or the training step (they are driven by the studies).
DENIED = {"methods": ("ltjax.engine.executor", "ltjax.engine.train")}
#: Third-party packages a layer never imports.
FOREIGN = {"core": ("flax",)}


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources(root: pathlib.Path = ROOT) -> dict[str, tuple[pathlib.Path, str]]:
    """{module name: (path, source)} of every module under ``root / 'ltjax'``."""
    out = {}
    for path in sorted((root / "ltjax").rglob("*.py")):
        if "__pycache__" not in path.parts:
            out[_module_name(path, root)] = (path, path.read_text())
    return out


def layer(module: str) -> str | None:
    """The layer of ``ltjax.<...>`` by its folder; ``'ltjax'`` for the package; None: none."""
    parts = module.split(".")
    if parts == ["ltjax"]:
        return "ltjax"
    if parts[0] != "ltjax":
        return None
    if parts[1] == "cli":
        return "cli" if len(parts) == 2 else None
    return parts[1] if parts[1] in RANK and parts[1] != "cli" else None


def _rank(module: str) -> int:
    found = layer(module)
    return ROOT_RANK if found == "ltjax" else RANK[found]


def imports(module: str, path: pathlib.Path, source: str,
            modules: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) for each import of a module of ``modules`` in ``source``."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                for i in range(len(parts), 0, -1):  # the longest prefix that is a module
                    name = ".".join(parts[:i])
                    if name in modules:
                        out.append((node.lineno, name))
                        break
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[:len(base) - (node.level - 1)]
                full = ".".join(base + ([node.module] if node.module else []))
            else:
                full = node.module or ""
            for alias in node.names:
                sub = f"{full}.{alias.name}"
                if sub in modules:
                    out.append((node.lineno, sub))
                elif full in modules:
                    out.append((node.lineno, full))
    return out


def third_party(path: pathlib.Path, source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import of ``source``."""
    out = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def graph(sources) -> dict[str, list[tuple[int, str]]]:
    modules = set(sources)
    return {m: imports(m, path, text, modules) for m, (path, text) in sources.items()}


def upward(sources, root: pathlib.Path = ROOT) -> list[str]:
    """``file:line: a (layer) imports b (layer)`` for each import the layers forbid."""
    offences = []
    for module, edges in graph(sources).items():
        if layer(module) is None:
            continue
        path = sources[module][0].relative_to(root)
        for line, target in edges:
            if layer(target) is None:
                continue
            denied = target in DENIED.get(layer(module), ())
            if _rank(target) > _rank(module) or denied:
                offences.append(f"{path}:{line}: {module} ({layer(module)}) imports {target} "
                                f"({layer(target)})" + (" (denied)" if denied else ""))
    return offences


def cycles(sources) -> list[list[str]]:
    """The strongly connected components of the import graph with more than one module (or
    a module importing itself): each is a cycle."""
    edges = {m: sorted({t for _, t in e}) for m, e in graph(sources).items()}
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


SOURCES = _sources()


def test_modules_found():
    assert len(SOURCES) > 60
    assert {"ltjax", "ltjax.cli", "ltjax.core.masking", "ltjax.engine.executor"} <= set(SOURCES)


def test_no_module_imports_a_higher_layer():
    offences = upward(SOURCES)
    assert not offences, "imports of a higher layer:\n" + "\n".join(offences)


def test_no_import_cycle():
    found = cycles(SOURCES)
    assert not found, "import cycles among: " + "; ".join(", ".join(c) for c in found)


def test_every_module_is_in_a_layer():
    outside = sorted(str(path.relative_to(ROOT)) for module, (path, _) in SOURCES.items()
                     if layer(module) is None)
    assert not outside, f"modules outside the layers {LAYERS}: {outside}"


@pytest.mark.parametrize(("folder", "package"), sorted(FOREIGN.items()))
def test_layer_never_imports(folder, package):
    found = [f"{path.relative_to(ROOT)}:{line}"
             for module, (path, text) in SOURCES.items() if layer(module) == folder
             for line, name in third_party(path, text) if name in package]
    assert not found, f"{folder} imports {package}: {found}"


def test_the_checks_catch_what_they_should(tmp_path):
    """A planted upward import, a cycle and a stray folder are each found."""
    files = {
        "ltjax/__init__.py": '"""The package."""\n',
        "ltjax/cli.py": "from ltjax.studies import imp\n",
        "ltjax/core/__init__.py": "",
        "ltjax/core/masking.py": "def f():\n    from ltjax.engine import executor\n",
        "ltjax/core/tree.py": "from ltjax.core import rng\n",
        "ltjax/core/rng.py": "from . import tree\n",
        "ltjax/engine/__init__.py": "",
        "ltjax/engine/executor.py": "from ltjax.core import masking\nimport ltjax.io.data\n",
        "ltjax/io/__init__.py": "",
        "ltjax/io/data.py": "",
        "ltjax/methods/__init__.py": "",
        "ltjax/methods/saliency.py": "from ltjax.engine import executor, optim\n",
        "ltjax/engine/optim.py": "",
        "ltjax/studies/__init__.py": "",
        "ltjax/studies/imp.py": "from ltjax.core import masking\n",
        "ltjax/stray/thing.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    sources = _sources(tmp_path)
    assert upward(sources, tmp_path) == [
        "ltjax/core/masking.py:2: ltjax.core.masking (core) imports ltjax.engine.executor "
        "(engine)",
        "ltjax/methods/saliency.py:1: ltjax.methods.saliency (methods) imports "
        "ltjax.engine.executor (engine) (denied)"]
    assert cycles(sources) == [["ltjax.core.masking", "ltjax.engine.executor"],
                               ["ltjax.core.rng", "ltjax.core.tree"]]
    assert [m for m in sources if layer(m) is None] == ["ltjax.stray.thing"]
