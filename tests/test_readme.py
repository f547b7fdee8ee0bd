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
    barrier = namespace["barrier"]
    assert 0.0 <= float(barrier) <= 1.0
    assert namespace["curve"]["accuracy"].shape == (30,)
    assert namespace["matched"]["accuracy"].shape == (30,)
    assert len(namespace["result"].objectives) == 4
    assert namespace["grid_accuracy"].shape == (3, 2)
