"""The run folder's contract: its file names and format, reading it back, and the one definition of the best trial.

A search writes everything to one folder (``mpqjax search --out``); the search, the report and the command line all
name its files through `FILES` and pick the winner with `best_trial`, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

from mpqjax.store.files import read_json, read_jsonl

__all__ = ["FILES", "FORMAT", "PHASES", "RESUMABLE_CHANGES", "Run", "best_trial", "is_ok", "load_run", "number"]

FORMAT = "mpqjax-search/1"
FILES = {
    "search": "search.json",
    "trials": "trials.jsonl",
    "baseline": "baseline.jsonl",
    "state": "tpe_state.npz",
    "float": "float_params.msgpack",
    "hessian": "hessian.json",
    "best": "best_config.json",
    "model": "model.npz",
}
# Settings that may change when a search is resumed: everything else must match the interrupted run.
RESUMABLE_CHANGES = ("trials", "baseline")
# The phases of a search's time split, in pipeline order.
PHASES = ("float_model", "hessian", "evaluations", "optimiser", "io", "final_training", "baseline")


@dataclasses.dataclass(frozen=True)
class Run:
    """The content of a search's output folder, as read by `load_run`.

    Attributes:
        out_dir: the folder.
        search: ``search.json`` (run metadata).
        trials: the records of ``trials.jsonl`` in the order written (an interrupted last line left out).
        baseline: the uniform-precision records of ``baseline.jsonl`` (empty without one).
        hessian: ``hessian.json``, or None.
        best_config: ``best_config.json``, or None while the search runs.
    """

    out_dir: str
    search: dict
    trials: list[dict]
    baseline: list[dict]
    hessian: dict | None
    best_config: dict | None

    @property
    def status(self) -> str:
        """``"running"`` or ``"finished"`` (as search.json says)."""
        return str(self.search.get("status", "running"))

    @property
    def planned_trials(self) -> int | None:
        """The number of trials the search was asked for (``settings.trials``), or None when not recorded."""
        settings = self.search.get("settings") or {}
        for key in ("trials", "num_trials"):
            if isinstance(settings.get(key), int):
                return settings[key]
        return None

    @property
    def layer_names(self) -> list[str]:
        """The layer names in layer-table order (from search.json)."""
        return [layer["name"] for layer in self.search.get("layers") or []]


def load_run(out_dir: str | os.PathLike) -> Run:
    """Read a search's output folder, finished or still running.

    Args:
        out_dir: the folder ``mpqjax search --out`` wrote.

    Returns:
        A `Run`. ``trials.jsonl`` may end in an interrupted line (ignored); ``baseline.jsonl``, ``hessian.json`` and
        ``best_config.json`` may be absent.

    Raises:
        ValueError: the folder holds no readable ``search.json`` of a known format, or a JSON file in it is not valid.

    Example:
        >>> load_run("runs/digits").status
        'finished'
    """
    out_dir = os.fspath(out_dir)
    search_path = os.path.join(out_dir, FILES["search"])
    if not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir!r} is not a folder")
    if not os.path.isfile(search_path):
        raise ValueError(f"{out_dir!r} is not an mpqjax search folder (no search.json)")
    try:
        search = read_json(search_path)
    except ValueError:
        raise ValueError(f"{out_dir!r} is not an mpqjax search folder (search.json is not valid JSON)") from None
    if not isinstance(search, dict) or not str(search.get("format", "")).startswith("mpqjax-search/"):
        raise ValueError(f"{out_dir!r} is not an mpqjax search folder (search.json has no \"format\": \"{FORMAT}\")")
    if search["format"] != FORMAT:
        raise ValueError(f"{out_dir!r} holds a search of format {search['format']!r}; this mpqjax reads {FORMAT!r}")

    def optional_json(name):
        path = os.path.join(out_dir, name)
        if not os.path.isfile(path):
            return None
        value = read_json(path)
        if not isinstance(value, dict):
            raise ValueError(f"{path!r} is not a JSON object")
        return value

    return Run(
        out_dir=out_dir,
        search=search,
        trials=read_jsonl(os.path.join(out_dir, FILES["trials"])),
        baseline=read_jsonl(os.path.join(out_dir, FILES["baseline"])),
        hessian=optional_json(FILES["hessian"]),
        best_config=optional_json(FILES["best"]),
    )


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
