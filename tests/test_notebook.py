"""The Colab notebook runs top to bottom (on digits, few steps): it cannot rot."""

import json
import pathlib

import jax
import matplotlib
import numpy as np

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "ltjax_tour.ipynb"

PARAMETERS = """
DATASET = "digits"
DATA_DIR = None
VALIDATION_SIZE = 300
NUM_SEEDS = 2
NUM_STEPS = 40
FINETUNE_STEPS = 10
NUM_ALPHAS = 5
"""


def _cells() -> list[dict]:
    return json.loads(NOTEBOOK.read_text())["cells"]


def test_notebook_runs_top_to_bottom(monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.setattr("matplotlib.pyplot.show", lambda *a, **k: None)
    cells = [c for c in _cells() if c["cell_type"] == "code"]
    tags = [set(c.get("metadata", {}).get("tags", [])) for c in cells]
    assert sum("parameters" in t for t in tags) == 1 and sum("install" in t for t in tags) == 1
    namespace: dict = {}
    for i, (cell, cell_tags) in enumerate(zip(cells, tags, strict=True)):
        source = "".join(cell["source"])
        if "parameters" in cell_tags:
            source = PARAMETERS
        lines = [line for line in source.splitlines() if not line.startswith("%")]
        exec(compile("\n".join(lines), f"{NOTEBOOK.name}, code cell {i}", "exec"),  # noqa: S102
             namespace)
    # Each section computed what it prints, for every seed or member.
    assert namespace["dense_accuracy"].shape == (2,)
    assert namespace["dense_accuracy"].min() > 0.3  # 40 steps of digits: well above chance
    assert 0.75 < namespace["density"] < 0.85  # 20 % of each prunable layer pruned
    assert namespace["curve"]["accuracy"].shape == (5,)
    matched, naive = namespace["matched"], namespace["naive"]
    np.testing.assert_allclose(matched["accuracy"][[0, -1]], naive["accuracy"][[0, -1]],
                               atol=1e-6)  # permuting seed 1 changes no endpoint
    greedy = namespace["greedy"]
    assert greedy.members[0] == greedy.order[0] and greedy.accuracy >= greedy.history[0][
        "accuracy"]
    flags = jax.tree.leaves(namespace["selection"])
    snip_mask = [m[1] for m in jax.tree.leaves(namespace["snip_masks"])]  # seed 1's mask
    kept = sum(int(np.sum(m)) for m, s in zip(snip_mask, flags, strict=True) if s)
    total = sum(int(np.size(m)) for m, s in zip(snip_mask, flags, strict=True) if s)
    assert kept == round(0.05 * total)


def test_notebook_install_cell_keeps_colab_jax():
    """The install cell installs ltjax without dependencies and never names jax itself."""
    install = [c for c in _cells() if "install" in c.get("metadata", {}).get("tags", [])][0]
    source = "".join(install["source"])
    assert '"--no-deps"' in source
    assert '"jax' not in source and "'jax" not in source
