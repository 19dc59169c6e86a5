"""The one definition of the best trial of a search, and the record helpers it needs.

The search exports it, the report stars it and the command line prints it: all three call `best_trial`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["best_trial", "is_ok", "number"]


def number(value) -> float | None:
    """A record's numeric field as a finite float, or None (missing, null, NaN, non-numeric)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def is_ok(record: dict) -> bool:
    """Whether a trial record finished with a validation accuracy."""
    return record.get("status") == "ok" and number(record.get("validation_accuracy")) is not None


def best_trial(records: Sequence[dict]) -> dict | None:
    """The ok, feasible trial with the highest objective (the earliest on ties), or None when there is none.

    Example:
        >>> best_trial(load_run("runs/digits").trials)["trial"]
        17
    """
    best, best_objective = None, -math.inf
    for record in records:
        objective = number(record.get("objective"))
        if is_ok(record) and record.get("feasible", True) and objective is not None and objective > best_objective:
            best, best_objective = record, objective
    return best


# -- writing -----------------------------------------------------------------------------------------------------
