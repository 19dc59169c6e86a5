"""Checks of the numbers that targets and packing tables are written with (shared by `packing` and `targets`)."""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["as_int", "check_positive", "is_concrete"]


def as_int(value, what: str) -> int:
    """``value`` as an int: an integral number or a numeric string; a bool or a fraction raises ValueError."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.number)) or float(value) != int(value):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def is_concrete(value) -> bool:
    """Whether ``value`` is a number we can read: under jit/vmap the targets are rebuilt with tracers."""
    return isinstance(value, (numbers.Number, np.number)) and not isinstance(value, bool)


def check_positive(owner: str, name: str, value, *, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise ValueError unless a concrete ``value`` is finite and > 0 (>= 0 with ``allow_zero``); tracers pass."""
    if isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be a number, got {value!r}")
    if not is_concrete(value):
        return
    if integer and float(value) != int(value):
        raise ValueError(f"{owner}: {name} must be an integer, got {value!r}")
    if not math.isfinite(float(value)) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: {name} must be finite and {bound}, got {value!r}")
