"""The one definition of the best trial of a search, the sentence that explains it, and the record helpers it needs.

The search exports it, the report stars it and the command line prints it: all three call `best_trial` (through
`choose`), with the resolution the search recorded (`selection_settings`, read back by `recorded_resolution`).

The rule (`RULE`): among the ok, feasible trials, those whose validation accuracy is within ``resolution`` of the
highest are tied (a validation split of n examples cannot tell accuracies apart by less than 1/n); of the tied trials,
the best is the smallest on their size/latency Pareto front, then the fastest, then the most accurate, then the
earliest.

Example:
    >>> records = [{"trial": 0, "status": "ok", "validation_accuracy": 0.9833, "size_bytes": 15460},
    ...            {"trial": 1, "status": "ok", "validation_accuracy": 0.9778, "size_bytes": 14340}]
    >>> best_trial(records, resolution=1 / 180)["trial"]
    1
    >>> explain_choice(records, resolution=1 / 180)
    'trial 1: validation accuracy 0.9778, within one validation example (0.0056) of the best 0.9833 (trial 0); of the
    2 such trials, the smallest on the size/latency front'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

__all__ = ["RULE", "Choice", "best_trial", "choose", "explain_choice", "is_ok", "number", "recorded_resolution",
           "selection_settings"]

RULE = ("among the ok, feasible trials, those within the resolution (one validation example) of the highest "
        "validation accuracy are tied; of the tied trials, the best is the smallest on their size/latency Pareto "
        "front, then the fastest, then the most accurate, then the earliest")
# Accuracies are float32 fractions k/n: two that differ by exactly the resolution must still count as tied.
_RELATIVE_SLACK, _ABSOLUTE_SLACK = 1e-3, 1e-7


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


def _cost(record: Mapping, key: str) -> float:
    value = number(record.get(key))
    return math.inf if value is None else value


def _size_latency_front(records: Sequence[dict]) -> list[dict]:
    """The records no other record beats in both size and latency (at most as large and as slow, and better in
    one), smallest first; an unknown cost counts as infinite."""
    front = []
    for record in records:
        size, latency = _cost(record, "size_bytes"), _cost(record, "latency_seconds")
        dominated = any(_cost(other, "size_bytes") <= size and _cost(other, "latency_seconds") <= latency
                        and (_cost(other, "size_bytes"), _cost(other, "latency_seconds")) != (size, latency)
                        for other in records)
        if not dominated:
            front.append(record)
    return sorted(front, key=lambda r: (_cost(r, "size_bytes"), _cost(r, "latency_seconds")))


@dataclasses.dataclass(frozen=True)
class Choice:
    """How `choose` picked the best trial, for the report and the command line to say it.

    Attributes:
        best: the chosen record, or None when no trial is ok and feasible.
        resolution: accuracies within it of the highest are tied.
        top_accuracy: the highest validation accuracy of the ok, feasible trials (None without one).
        candidates: the ok, feasible trials, in record order.
        tied: the candidates within ``resolution`` of ``top_accuracy``, in record order.
        front: the tied trials on their size/latency front, smallest first (``best`` is the first).
        more_accurate_infeasible: the ok trials that break a limit and are more accurate than ``top_accuracy``.
    """

    best: dict | None
    resolution: float
    top_accuracy: float | None
    candidates: tuple[dict, ...]
    tied: tuple[dict, ...]
    front: tuple[dict, ...]
    more_accurate_infeasible: tuple[dict, ...]


def choose(records: Sequence[dict], *, resolution: float = 0.0) -> Choice:
    """Pick the best trial by `RULE` and keep what the choice was made from.

    Args:
        records: trial records (``trials.jsonl``), in trial order.
        resolution: validation accuracies within it of the highest are tied; a search records one validation
            example, ``1 / len(validation split)`` (`selection_settings`). 0: only equal accuracies tie.

    Returns:
        A `Choice`.

    Raises:
        ValueError: ``resolution`` is negative or not a finite number.
    """
    if isinstance(resolution, str) or number(resolution) is None or number(resolution) < 0:
        raise ValueError(f"resolution must be a finite number >= 0, got {resolution!r}")
    resolution = float(resolution)
    ok = [record for record in records if is_ok(record)]
    candidates = tuple(record for record in ok if record.get("feasible", True))
    if not candidates:
        return Choice(None, resolution, None, (), (), (), ())
    top = max(number(record["validation_accuracy"]) for record in candidates)
    slack = resolution * (1 + _RELATIVE_SLACK) + _ABSOLUTE_SLACK
    tied = tuple(record for record in candidates if number(record["validation_accuracy"]) >= top - slack)
    # The smallest, then the fastest of the front; at equal size and latency the more accurate, then the earliest
    # (a stable sort keeps record order).
    front = sorted(_size_latency_front(tied), key=lambda r: (_cost(r, "size_bytes"), _cost(r, "latency_seconds"),
                                                             -number(r["validation_accuracy"])))
    above = tuple(record for record in ok
                  if not record.get("feasible", True) and number(record["validation_accuracy"]) > top)
    return Choice(front[0], resolution, top, candidates, tied, tuple(front), above)


def best_trial(records: Sequence[dict], *, resolution: float = 0.0) -> dict | None:
    """The best trial by `RULE`: feasible, within ``resolution`` of the top accuracy, then the smallest on the
    size/latency front; None when no trial is ok and feasible.

    Args:
        records: trial records (``trials.jsonl``), in trial order.
        resolution: validation accuracies within it of the highest are tied (the search's: `recorded_resolution`).

    Example:
        >>> run = load_run("runs/digits")
        >>> best_trial(run.trials, resolution=recorded_resolution(run.best_config, run.search))["trial"]
        54
    """
    return choose(records, resolution=resolution).best


def _resolution_text(resolution: float) -> str:
    examples = round(1 / resolution) if resolution > 0 else 0
    if examples and math.isclose(examples * resolution, 1.0, rel_tol=1e-6):
        return f"one validation example ({resolution:.4f})" if examples > 1 else f"{resolution:.4f}"
    return f"{resolution:.4g}"


def _why_smallest(choice: Choice) -> str:
    """Why the front's first member: smallest, or of equal size the fastest, or the more accurate, the earliest."""
    best = choice.best
    same = [r for r in choice.tied if _cost(r, "size_bytes") == _cost(best, "size_bytes")]
    if len(same) == 1:
        return "the smallest on the size/latency front"
    same = [r for r in same if _cost(r, "latency_seconds") == _cost(best, "latency_seconds")]
    if len(same) == 1:
        return "the smallest on the size/latency front, the fastest of those of its size"
    same = [r for r in same if number(r["validation_accuracy"]) == number(best["validation_accuracy"])]
    if len(same) == 1:
        return "the smallest on the size/latency front, the most accurate of those of its size and latency"
    return "the smallest on the size/latency front, the earliest of those equal in size, latency and accuracy"


def explain_choice(records: Sequence[dict], *, resolution: float = 0.0) -> str:
    """One or two sentences saying how `best_trial` picked its trial from ``records``.

    Args:
        records: trial records (``trials.jsonl``), in trial order.
        resolution: as for `best_trial`.

    Returns:
        For example ``"trial 54: validation accuracy 0.9778, within one validation example (0.0056) of the best
        0.9833 (trial 10); of the 6 such trials, the smallest on the size/latency front"``; a sentence saying so when
        no trial is ok and feasible.
    """
    choice = choose(records, resolution=resolution)
    best = choice.best
    if best is None:
        failed = sum(1 for record in records if not is_ok(record))
        return (f"no trial is ok and feasible ({len(records)} trials: {failed} failed, {len(records) - failed} "
                f"breaking a limit)")
    trial, accuracy, top = best.get("trial"), number(best["validation_accuracy"]), choice.top_accuracy
    within = _resolution_text(choice.resolution)
    if len(choice.tied) == 1:
        text = (f"trial {trial}: the highest validation accuracy {accuracy:.4f} of the {len(choice.candidates)} "
                f"feasible trials" + (f", no other within {within}" if choice.resolution > 0 else ""))
    elif accuracy == top:
        tied = f"within {within} of it" if choice.resolution > 0 else "tied at it"
        text = (f"trial {trial}: validation accuracy {accuracy:.4f}, the best; of the {len(choice.tied)} trials "
                f"{tied}, {_why_smallest(choice)}")
    else:
        leader = next(r for r in choice.tied if number(r["validation_accuracy"]) == top)
        text = (f"trial {trial}: validation accuracy {accuracy:.4f}, within {within} of the best {top:.4f} (trial "
                f"{leader.get('trial')}); of the {len(choice.tied)} such trials, {_why_smallest(choice)}")
    if choice.more_accurate_infeasible:
        count = len(choice.more_accurate_infeasible)
        text += f"; {count} more accurate trial{'s break' if count > 1 else ' breaks'} a limit"
    return text


# -- what a search records, for the report to read back ------------------------------------------------------------


def selection_settings(validation_examples: int) -> dict:
    """The selection's settings as a search records them (``best_config.json``'s ``selection``): the rule, the
    validation examples and the resolution, one example.

    Raises:
        ValueError: ``validation_examples`` is not an integer >= 1.

    Example:
        >>> selection_settings(180)["resolution"] == 1 / 180
        True
    """
    if isinstance(validation_examples, bool) or not isinstance(validation_examples, int) or validation_examples < 1:
        raise ValueError(f"validation_examples must be an integer >= 1, got {validation_examples!r}")
    return {"rule": RULE, "validation_examples": validation_examples, "resolution": 1 / validation_examples}


def recorded_resolution(*sources: Mapping | None) -> float | None:
    """The resolution a search recorded: the first ``selection.resolution`` among ``sources`` (``best_config.json``,
    then ``search.json``), None when none records one (a folder of an earlier mpqjax).

    Example:
        >>> recorded_resolution(run.best_config, run.search)
        0.005555555555555556
    """
    for source in sources:
        selection = source.get("selection") if isinstance(source, Mapping) else None
        value = number(selection.get("resolution")) if isinstance(selection, Mapping) else None
        if value is not None and value >= 0:
            return value
    return None
