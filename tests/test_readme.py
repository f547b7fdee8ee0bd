"""The README's Colab snippet runs (on digits, few steps): keep the README true."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_colab_snippet_runs():
    text = README.read_text()
    section = text.split("## In Colab", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'data.load("mnist", validation_size=5000)' in code
    code = code.replace('data.load("mnist", validation_size=5000)', 'data.load("digits")')
    code = code.replace("num_steps=1000", "num_steps=20")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    # The path's ends are replicates 0 and 1 as the executor evaluates them (another
    # program), and the barrier is the hand formula on the curve.
    import numpy as np

    ends = namespace["executor"].evaluate(namespace["state"], "test")["accuracy"]
    accuracy = np.asarray(namespace["curve"]["accuracy"])
    np.testing.assert_allclose(accuracy[[0, -1]], np.asarray(ends)[:2], atol=1e-6)
    errors = 1.0 - accuracy
    assert float(namespace["barrier"]) == np.float64(
        errors.max() - (errors[0] + errors[-1]) / 2).item()
    assert namespace["curve"]["accuracy"].shape == (30,)
    assert namespace["matched"]["accuracy"].shape == (30,)
    assert len(namespace["result"].objectives) == 4
    assert namespace["grid_accuracy"].shape == (3, 2)
