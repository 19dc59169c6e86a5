"""What a report shows of a run's records: the best configuration (final or so far), how it was chosen, and the
baseline's labels.

The best trial itself has one definition, `mpqjax.store.selection.best_trial`; this module reads the resolution the
search recorded (`resolution_of`), prefers the final ``best_config.json`` once the search has written one, and says
how the choice was made (`selection_note`).

Example:
    >>> run = load_run("runs/digits")
    >>> record, final = best_record(run)
    >>> record["trial"], final
    (54, True)
    >>> selection_note(run)
    'trial 54: validation accuracy 0.9833, the best; of the 6 trials within one validation example (0.0056) of it, ...'
"""

from __future__ import annotations

from mpqjax.store.run_folder import Run
from mpqjax.store.selection import best_trial, explain_choice, recorded_resolution

__all__ = ["best_record", "resolution_of", "selection_note", "uniform_label"]


def resolution_of(run: Run) -> float | None:
    """The selection's resolution the search recorded (``best_config.json``, else ``search.json``), or None."""
    return recorded_resolution(run.best_config, run.search)


def best_record(run: Run) -> tuple[dict | None, bool]:
    """The best configuration's trial record and whether it is final.

    Args:
        run: a `Run` from `load_run`.

    Returns:
        ``(record, final)``. Once ``best_config.json`` exists (``final`` True) the record is its trial's record
        updated with ``best_config.json``'s fields (all but the per-layer ``layers``); before that it is
        `best_trial` of the trials so far at the recorded resolution (exact ties when none is recorded; ``final``
        False), None when no trial is ok and feasible yet.
    """
    if run.best_config is not None:
        for record in run.trials:
            if record.get("trial") == run.best_config.get("trial"):
                return {**record, **{k: v for k, v in run.best_config.items() if k != "layers"}}, True
        return dict(run.best_config), True
    return best_trial(run.trials, resolution=resolution_of(run) or 0.0), False


def selection_note(run: Run) -> str:
    """How the best configuration was chosen, in a sentence or two (`explain_choice` of the run's trials).

    Says so instead when the folder records no resolution (an earlier mpqjax, or a running search that does not
    record one yet: then only equal accuracies tie), or when ``best_config.json`` names another trial than the rule
    picks from the log.
    """
    resolution = resolution_of(run)
    best, final = best_record(run)
    if final and resolution is None:
        return (f"best_config.json records no selection rule (written by an earlier mpqjax): its trial "
                f"{best.get('trial')} was chosen by that version's rule, not this one's")
    text = explain_choice(run.trials, resolution=resolution or 0.0)
    chosen = best_trial(run.trials, resolution=resolution or 0.0)
    if best is not None and (chosen is None or chosen.get("trial") != best.get("trial")):
        return f"best_config.json names trial {best.get('trial')}, but the trial log now gives {text}"
    if resolution is None:
        text += " (no resolution recorded yet: only equal accuracies tie)"
    return text


def uniform_label(record: dict) -> str:
    """The label of a uniform-precision baseline record: ``"4b"``, or ``"mixed"`` when its bit-widths differ.

    The bit-width is the record's ``uniform_bits`` when it has one, else the one value of its ``bits``.

    Example:
        >>> uniform_label({"bits": [4, 4, 4]}), uniform_label({"bits": [8, 4]})
        ('4b', 'mixed')
    """
    if isinstance(record.get("uniform_bits"), int):
        return f"{record['uniform_bits']}b"
    bits = set(record.get("bits") or [])
    return f"{bits.pop()}b" if len(bits) == 1 else "mixed"
