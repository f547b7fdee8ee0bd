"""The README's Colab snippet runs (on digits, few steps): keep the README true."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_colab_snippet_runs():
    text = README.read_text()
    section = text.split("## In Colab", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
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
