"""The trial table: every trial record of a search as one CSV row, numbers exact.

Example:
    >>> write_trials_csv("runs/digits/trials.csv", load_run("runs/digits").trials)
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence

import numpy as np

from mpqjax.store.files import atomic_write_text

__all__ = ["write_trials_csv"]


def _exact(value) -> str:
    """A list item exactly, shortest form: floats read back as the same float64 (``1.0`` as ``1``)."""
    return np.format_float_positional(np.float64(value), trim="-") if isinstance(value, float) else str(value)


def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(map(_exact, value))
    if isinstance(value, dict):  # a channel-wise configuration's channel_bits: one JSON cell
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float):
        return repr(value)
    return value


def write_trials_csv(path: str | os.PathLike, records: Sequence[dict], *, best: int | None = None) -> None:
    """Write trial records as CSV, atomically: one row per trial, one column per field.

    Scalar fields keep their names (first-seen order); with ``best``, a column ``best`` (True on the best
    configuration's row) follows them; each ``config`` dimension becomes a column of its own (``bits/conv1``, ...);
    lists (``bits``, ``widths``) are joined with spaces; a dict (``channel_bits``) is one JSON cell; null is an empty
    cell. Floats are written exactly (their
    shortest form that reads back as the same float), so the numbers read back unchanged.

    Args:
        path: the ``.csv`` file.
        records: trial records (trials.jsonl schema).
        best: the trial number of the best configuration (`mpqjax.report.best_record`), or None: no ``best`` column.

    Example:
        >>> write_trials_csv("runs/digits/trials.csv", load_run("runs/digits").trials)
    """
    columns: dict[str, None] = {}
    config_columns: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key == "config" and isinstance(value, dict):
                config_columns.update(dict.fromkeys(value))
            else:
                columns[key] = None
    if best is not None:
        columns["best"] = None
    # A dimension named like a top-level field (not expected: dimensions are "bits/..." and "width/...") is prefixed.
    config_names = {name: (f"config:{name}" if name in columns else name) for name in config_columns}

    def rows():
        for record in records:
            row = {key: _csv_cell(value) for key, value in record.items() if key in columns}
            if best is not None:
                row["best"] = record.get("trial") == best
            config = record.get("config") if isinstance(record.get("config"), dict) else {}
            row.update({config_names[name]: _csv_cell(value) for name, value in config.items()})
            yield row

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=[*columns, *config_names.values()], restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows())
    atomic_write_text(path, text.getvalue())
