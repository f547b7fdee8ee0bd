"""The README's snippets run (on digits, few steps): keep the README true.

Each test takes the first ``python`` block after its section's heading.
"""

import pathlib
import re

import numpy as np

from ltjax import matching

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _snippet(heading: str) -> str:
    section = README.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_colab_snippet_runs():
    code = _snippet("In Colab")
    assert 'data.load("mnist", validation_size=5000)' in code
    code = code.replace('data.load("mnist", validation_size=5000)', 'data.load("digits")')
    code = code.replace("num_steps=1000", "num_steps=40")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    accuracy = np.asarray(namespace["accuracy"])
    loss = np.asarray(namespace["train_loss"])
    assert accuracy.shape == (8,) and loss.shape == (8,)
    # 40 steps of Adam on digits: every seed learns (chance: accuracy 0.1, loss ln 10).
    assert accuracy.min() > 0.5
    assert np.all((loss > 0) & (loss < 0.8 * np.log(10)))
    # An accuracy is a count of the 360 test examples (no padding or batch averaging).
    np.testing.assert_allclose(accuracy * 360, np.round(accuracy * 360), atol=1e-3)


def test_your_own_model_dataset_and_spec_snippet_runs():
    code = _snippet("Your own model, dataset or permutation spec")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102, as written
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
