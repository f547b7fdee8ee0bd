"""Argument checks shared by the model modules (private)."""

from __future__ import annotations

from typing import Any


def positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is a positive int, else raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def positive_ints(name: str, value: Any) -> tuple[int, ...]:
    """``value`` as a tuple of positive ints, else raise ``ValueError`` naming ``name``."""
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of positive ints, got {value!r}") from None
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            raise ValueError(f"{name} must be a sequence of positive ints, got {value!r}")
    return items


def boolean(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool, else raise ``ValueError`` naming ``name``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def optional_boolean(name: str, value: Any) -> bool | None:
    """Return ``value`` if it is a bool or None, else raise ``ValueError`` naming ``name``."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool or None, got {value!r}")
    return value
