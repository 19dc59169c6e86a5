"""Numbers for people: sizes, durations, energies, percentages and counts, and markdown tables.

Every formatter takes a record's raw field (a number, None, NaN or anything else) and writes ``–`` for a value that
is missing or not a finite number, so a report of a running or failed search never shows ``nan``.

Example:
    >>> format_size(2104), format_seconds(1.25e-5), format_percent(0.9861), format_width(1.125)
    ('2.104 kB', '12.5 µs', '98.61 %', '1.125')
    >>> print("\\n".join(markdown_table(["layer", "bits"], [["conv1", 8]], "lr")))
    | layer | bits |
    | --- | ---: |
    | conv1 | 8 |
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpqjax.store.run_folder import number

__all__ = ["ENERGY_UNITS", "MISSING", "SIZE_UNITS", "TIME_UNITS", "format_count", "format_energy", "format_factor",
           "format_percent", "format_quantity", "format_seconds", "format_size", "format_values", "format_width",
           "markdown_table", "unit_for"]

# Units as (scale, name), largest first; sizes in decimal units.
SIZE_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1.0, "B"))
TIME_UNITS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"))
ENERGY_UNITS = ((1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ"), (1e-12, "pJ"))
# What a missing or non-finite value reads as.
MISSING = "–"


def unit_for(value: float, units: Sequence[tuple[float, str]]) -> tuple[float, str]:
    """The largest unit in which ``value`` is at least 1 (the smallest unit for tiny values).

    Args:
        value: a number.
        units: ``(scale, name)`` pairs, largest first (`SIZE_UNITS`, `TIME_UNITS`, `ENERGY_UNITS`).

    Returns:
        ``(scale, name)``: ``value / scale`` is the number to show.

    Example:
        >>> unit_for(0.002, TIME_UNITS)
        (0.001, 'ms')
    """
    for scale, name in units:
        if abs(value) >= scale:
            return scale, name
    return units[-1]


def format_quantity(value, units: Sequence[tuple[float, str]]) -> str:
    """``value`` in its `unit_for` with four significant digits, or `MISSING`."""
    value = number(value)
    if value is None:
        return MISSING
    scale, name = unit_for(value, units)
    return f"{value / scale:.4g} {name}"


def format_size(size_bytes) -> str:
    """A size in bytes for people: ``format_size(2104) == "2.104 kB"`` (decimal units)."""
    return format_quantity(size_bytes, SIZE_UNITS)


def format_seconds(seconds) -> str:
    """A duration for people: ``format_seconds(1.25e-5) == "12.5 µs"``."""
    return format_quantity(seconds, TIME_UNITS)


def format_energy(joules) -> str:
    """An energy for people: ``format_energy(3.2e-6) == "3.2 µJ"``."""
    return format_quantity(joules, ENERGY_UNITS)


def format_percent(value, digits: int = 2) -> str:
    """A fraction as a percentage: ``format_percent(0.9861) == "98.61 %"``."""
    value = number(value)
    return MISSING if value is None else f"{100 * value:.{digits}f} %"


def format_factor(value) -> str:
    """A ratio with two decimals: ``format_factor(3.456) == "3.46x"``."""
    value = number(value)
    return MISSING if value is None else f"{value:.2f}x"


def format_count(value) -> str:
    """A count rounded to an integer, with thousands separators: ``format_count(5966.0) == "5,966"``."""
    value = number(value)
    return MISSING if value is None else f"{round(value):,}"


def format_width(value) -> str:
    """A width multiplier exactly, in its shortest form: ``format_width(1.125) == "1.125"``, ``format_width(1.0) ==
    "1"``, or `MISSING`.

    A value that is a float32 (as the model holds widths, so ``1.1`` reads back as ``1.100000023841858``) is written
    as the shortest decimal that reads back as that float32 (``"1.1"``); any other as the shortest that reads back as
    the float64. Either way the text reads back as the value: never rounded to a few digits.
    """
    value = number(value)
    if value is None:
        return MISSING
    single = np.float32(value)
    exact = single if float(single) == value else np.float64(value)
    return np.format_float_positional(exact, trim="-")


def format_values(values) -> str:
    """A list joined by spaces, floats exactly in their shortest form (`format_width`): ``format_values([4, 1.125])
    == "4 1.125"``."""
    return " ".join(format_width(value) if isinstance(value, float) else str(value) for value in values or [])


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> list[str]:
    """A markdown table, one line per item; ``|`` in a cell is escaped and a newline becomes a space.

    Args:
        header: the column titles.
        rows: the cells (anything with a ``str``), one sequence per row.
        align: one character per column, ``l`` (left) or ``r`` (right); None: all left.

    Returns:
        The table's lines (header, alignment row, rows), without a trailing blank line.
    """
    align = align or "l" * len(header)
    lines = ["| " + " | ".join(map(_cell, header)) + " |",
             "|" + "|".join(" ---: " if a == "r" else " --- " for a in align) + "|"]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return lines
