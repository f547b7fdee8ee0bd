"""The README's and the docs' snippets run (on digits, few steps), and the README's tables and
links point at what exists: keep the front door and the docs site true.

A snippet is found by page and heading: the first ``python`` block of the section under that
heading (any level, up to the next heading of the same or a higher level; ``#`` lines inside
code blocks are not headings). Every ``python`` block of the README and of ``docs/`` is either
run here or listed in ``ILLUSTRATIONS``.
"""

import importlib
import pathlib
import re

import numpy as np

from ltjax.core import masking, matching
from ltjax.io import results

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
INDEX = DOCS / "index.md"
COLAB = DOCS / "colab.md"
DATA_AND_MODELS = DOCS / "data-and-models.md"

#: The README's sections that the site's front page (docs/index.md) repeats, links adapted.
SHARED = ("Install", "First run", "Studies", "The library", "Task → function", "Concepts")
#: (page, heading) of the python blocks run by the tests below (index.md's is the README's).
TESTED = {
    ("README.md", "The library"),
    ("docs/index.md", "The library"),
    ("docs/colab.md", "In Colab"),
    ("docs/data-and-models.md", "Your own model, dataset or permutation spec"),
    ("docs/data-and-models.md", "Your model in every study"),
}
#: python blocks that show a call in context and are not meant to run alone.
ILLUSTRATIONS = {
    ("docs/studies/rebasin.md", "Git Re-Basin and REPAIR"),  # REPAIR on a path: x = ...
}


def _lines(path: pathlib.Path):
    """(line, heading match or None) for each line; lines in code blocks are never headings."""
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            yield line, None
        else:
            yield line, None if fenced else re.match(r"(#+) (.+)$", line)


def _section(path: pathlib.Path, heading: str) -> str:
    out, level = [], None
    for line, match in _lines(path):
        if level is None:
            if match and match.group(2) == heading:
                level = len(match.group(1))
        elif match and len(match.group(1)) <= level:
            break
        else:
            out.append(line)
    assert level is not None, f"{path.relative_to(ROOT)}: no heading {heading!r}"
    return "\n".join(out).strip()


def _snippet(path: pathlib.Path, heading: str) -> str:
    return re.search(r"```python\n(.*?)```", _section(path, heading), re.S).group(1)


def _run(path: pathlib.Path, code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, str(path), "exec"), namespace)  # noqa: S102
    return namespace


def _pages() -> list[pathlib.Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _links(text: str) -> list[str]:
    """The targets of the Markdown links and images of ``text`` (code blocks left out)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def _github_slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _table(text: str) -> list[list[str]]:
    """The body rows of the first Markdown table of ``text``, as stripped cells."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows[2:]]


# --------------------------------------------------------------------------- snippets


def test_readme_library_snippet_runs():
    namespace = _run(README, _snippet(README, "The library"))
    # 200 Adam steps on digits: every seed's ticket learns (chance: 0.1).
    accuracy = np.asarray(namespace["ticket_accuracy"])
    assert accuracy.shape == (4,) and accuracy.min() > 0.5
    # One global IMP level removed ceil(20 %) of the prunable weights of each seed.
    masks, selection = namespace["masks"], namespace["selection"]
    for seed in range(4):
        one = masking.layer_densities(namespace["tree"].index(masks, seed), selection)
        assert set(one) == {"Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel"}
    density = float(masking.density(namespace["tree"].index(masks, 0), selection))
    assert abs(density - 0.8) < 1e-3
    # Weight matching lowers the error barrier between two seeds.
    barriers = namespace["barriers"]
    assert 0 <= barriers["matched"] < barriers["naive"]


def test_colab_snippet_runs():
    code = _snippet(COLAB, "In Colab")
    assert 'data.load("mnist", validation_size=5000)' in code
    code = code.replace('data.load("mnist", validation_size=5000)', 'data.load("digits")')
    code = code.replace("num_steps=1000", "num_steps=40")
    namespace = _run(COLAB, code)
    accuracy = np.asarray(namespace["accuracy"])
    loss = np.asarray(namespace["train_loss"])
    assert accuracy.shape == (8,) and loss.shape == (8,)
    # 40 steps of Adam on digits: every seed learns (chance: accuracy 0.1, loss ln 10).
    assert accuracy.min() > 0.5
    assert np.all((loss > 0) & (loss < 0.8 * np.log(10)))
    # An accuracy is a count of the 360 test examples (no padding or batch averaging).
    np.testing.assert_allclose(accuracy * 360, np.round(accuracy * 360), atol=1e-3)


def test_your_own_model_dataset_and_spec_snippet_runs():
    code = _snippet(DATA_AND_MODELS, "Your own model, dataset or permutation spec")
    namespace = _run(DATA_AND_MODELS, code)  # as written
    # The custom module learns the custom dataset (chance: 0.1); accuracies are counts of
    # the 297 test examples.
    accuracy = np.asarray(namespace["accuracy"])
    assert accuracy.shape == (2,) and accuracy.min() > 0.8
    np.testing.assert_allclose(accuracy * 297, np.round(accuracy * 297), atol=1e-3)
    # The hand-written spec is right: the aligned B computes B's function (a wrong axis
    # would change the logits), and matching raised the objective above the identity's.
    model, x = namespace["model"], namespace["x"][:50]
    logits_b = model.apply({"params": namespace["params_b"]}, x)
    logits_aligned = model.apply({"params": namespace["params_b_aligned"]}, x)
    np.testing.assert_allclose(logits_aligned, logits_b, rtol=1e-5, atol=1e-5)
    perms = namespace["result"].perms
    assert not np.array_equal(perms["hidden"], np.arange(64))
    spec, a, b = namespace["spec"], namespace["params_a"], namespace["params_b"]
    identity = matching.identity_perms({"hidden": 64})
    assert matching.objective(spec, a, b, perms) > matching.objective(spec, a, b, identity)


def test_your_model_in_every_study_snippet_runs(tmp_path, monkeypatch):
    import json

    from ltjax import models
    from ltjax.io import data

    for private in ("_REGISTRY", "_SPECS"):  # the registration lasts for this test only
        monkeypatch.setattr(models, private, dict(getattr(models, private)))
    monkeypatch.setattr(models, "NAMES", models.NAMES)
    monkeypatch.setattr(data, "_REGISTERED", {})
    monkeypatch.chdir(tmp_path)
    namespace = _run(DATA_AND_MODELS, _snippet(DATA_AND_MODELS, "Your model in every study"))
    workdir = tmp_path / "runs" / "imp_two_layer_mlp"
    # The study trained on the user's arrays (1500 train examples, the config's hold-out).
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["dataset"] == "my_digits"
    assert saved["dataset_sha256"] == data.registered_checksum("my_digits")
    dataset = data.load("my_digits", validation_size=saved["validation_size"])
    assert len(dataset.train) + len(dataset.validation) == 1500 and len(dataset.test) == 297
    rows = results.read_csv(workdir / "results.csv")
    branches = {(r["level"], r["branch"]) for r in rows}
    assert branches == {("0", "imp")} | {(lv, b) for lv in ("1", "2")
                                         for b in ("imp", "reinit", "random_layerwise")}
    # Every mean row is a level of the user's net that learned digits (chance: 0.1).
    assert all(r["test_accuracy"] > 0.5 for r in namespace["summary"]["rows"]
               if r["branch"] == "imp")


def test_every_python_block_is_run_or_listed():
    found = set()
    for path in _pages():
        heading = None
        for line, match in _lines(path):
            if match:
                heading = match.group(2)
            elif line.startswith("```python"):
                found.add((str(path.relative_to(ROOT)), heading))
    assert found == TESTED | ILLUSTRATIONS


# --------------------------------------------------------------------------- the front door


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert "../shared" not in text
    assert not re.search(r"\bround \d|\bissue #|#\d{2}\b", text)


def test_site_front_page_repeats_the_readme():
    def for_site(text: str) -> str:
        def link(m):
            label, target = m.group(1), m.group(2)
            if target.startswith(("http", "#")):
                return m.group(0)
            if target.startswith("docs/"):
                return f"[{label}]({target.removeprefix('docs/')})"
            return label if label.startswith("`") else f"`{label}`"
        return re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", link, text)

    for heading in SHARED:
        assert _section(INDEX, heading) == for_site(_section(README, heading)), heading


def test_readme_links_resolve():
    headings = {p: {_github_slug(m.group(2)) for _, m in _lines(p) if m} for p in _pages()}
    targets = _links(README.read_text())
    assert len(targets) > 20
    for target in targets:
        if target.startswith("http"):
            continue
        file, _, anchor = target.partition("#")
        path = (ROOT / file).resolve() if file else README
        assert path.exists(), f"README links to {target}, which does not exist"
        if anchor:
            assert anchor in headings[path], f"README links to {target}: no such heading"


def _layer_module(name: str):
    """``ltjax.<name>`` or ``ltjax.<layer>.<name>``: a module as the README's task table names
    it (imported from its layer folder, as the sentence above the table says)."""
    for package in ("ltjax", "ltjax.core", "ltjax.io", "ltjax.engine", "ltjax.methods",
                    "ltjax.studies"):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{package}.{name}":
                raise
    raise AssertionError(f"README task table: no module {name} in ltjax or its layers")


def test_task_table_names_exist():
    names = [name for row in _table(_section(README, "Task → function"))
             for name in re.findall(r"`(\w[\w.]*)`", row[1])]
    assert len(names) >= 30
    for name in names:
        module, *attributes = name.split(".")
        value = _layer_module(module)
        for attribute in attributes:
            assert hasattr(value, attribute), f"README task table: ltjax.{name} does not exist"
            value = getattr(value, attribute)


def test_each_study_in_the_readme_runs_on_its_page():
    rows = _table(_section(README, "Studies"))
    linked = set()
    for study, module, config, *_ in rows:
        page = re.match(r"\[.+\]\((docs/[^)#]+)(?:#[^)]*)?\)", study).group(1)
        linked.add(page)
        module, config = module.strip("`"), config.strip("`")
        assert (ROOT / "experiments" / f"{module}.py").exists(), module
        assert (ROOT / "experiments/configs" / config.split(":")[0]).exists(), config
        text = (ROOT / page).read_text()
        commands = [" ".join(block.replace("\\\n", " ").split())
                    for block in re.findall(r"```bash\n(.*?)```", text, re.S)]
        wanted = f"python -m experiments.{module} --config=experiments/configs/{config} "
        assert any(wanted in c for c in commands), f"{page} has no command {wanted}"
    # Every study page is one click from the README.
    pages = {str(p.relative_to(ROOT)) for p in (DOCS / "studies").glob("*.md")}
    assert pages <= linked

