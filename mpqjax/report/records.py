"""What a report shows of a run's records: the best configuration (final or so far) and the baseline's labels.

The best trial itself has one definition, `mpqjax.store.run_folder.best_trial`; this module only prefers the final
``best_config.json`` over it once the search has written one.

Example:
    >>> record, final = best_record(load_run("runs/digits"))
    >>> record["trial"], final
    (17, True)
"""

from __future__ import annotations

from mpqjax.store.run_folder import Run, best_trial

__all__ = ["best_record", "uniform_label"]


def best_record(run: Run) -> tuple[dict | None, bool]:
    """The best configuration's trial record and whether it is final.

    Args:
        run: a `Run` from `load_run`.

    Returns:
        ``(record, final)``. Once ``best_config.json`` exists (``final`` True) the record is its trial's record
        updated with ``best_config.json``'s fields (all but the per-layer ``layers``); before that it is
        `best_trial` of the trials so far (``final`` False), None when no trial is ok and feasible yet.
    """
    if run.best_config is not None:
        for record in run.trials:
            if record.get("trial") == run.best_config.get("trial"):
                return {**record, **{k: v for k, v in run.best_config.items() if k != "layers"}}, True
        return dict(run.best_config), True
    return best_trial(run.trials), False


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
