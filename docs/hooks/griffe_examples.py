"""A griffe extension for the API reference: reads ltjax's docstrings as they are written.

- ltjax heads its doctests ``Example:``; griffe's Google-style parser knows the section as
  ``Examples:``, and under any other name the ``>>>`` lines would be read as Markdown (block
  quotes, reference links). The heading is renamed so the examples render as code.
- Sphinx roles (``:func:`prune```, ``:class:`...```) are shown as plain code.

Both happen before griffe parses the docstrings; the source files are not touched.
"""

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)
_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc|const|py:\w+):(`[^`]+`)")


class ExampleSections(griffe.Extension):
    """``Example:`` -> ``Examples:`` and ``:func:`x``` -> ```x``` in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(r"\1", value)
