"""The run folder: its file names and format, creating and resuming it, the trial log, and the one definition of the
best trial.

A search writes everything to one folder (``mpqjax search --out``). This module owns that folder: the search writes
it through `RunFolder` (opened after `check_folder` accepted it), the report and the command line read it with
`load_run`, everyone names its files through `FILES` and picks the winner with `best_trial`, so they cannot disagree.

One writer at a time: `RunFolder.open` holds the folder's lock (`mpqjax.store.lock`) for the run's life, and
`check_folder` refuses a folder that another search holds before anything is loaded or written. A new run that fails
before its first trial removes what it wrote, so the corrected command needs no ``--resume`` and no clean-up.

Crash safety: every file is written atomically (`mpqjax.store.files`), and a population of trials is written in one
order, the trial records, then the optimiser checkpoint, then ``search.json``. A process killed at any moment leaves
a checkpoint at most one population behind the log, which `RunFolder.restore_state` completes exactly.

Example:
    >>> previous = check_folder("runs/digits", config.to_dict(), resume=False)
    >>> with RunFolder.open("runs/digits", config.to_dict(), {"model": "digits_cnn"}, resume=False) as folder:
    ...     folder.append_trials(records, state)
    >>> best_trial(load_run("runs/digits").trials)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mpqjax.store.files import TrialLog, atomic_write_json, read_json, read_jsonl, save_variables
from mpqjax.store.lock import LOCK_FILE, FolderLock, check_unlocked
from mpqjax.store.selection import best_trial, is_ok, number  # re-exported: readers of a folder use them

__all__ = ["FILES", "FORMAT", "PHASES", "RESUMABLE_CHANGES", "Run", "RunFolder", "best_trial", "check_folder",
           "file_path", "is_finished", "is_ok", "load_run", "number", "read_best_layers", "settings_differences"]

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
    # written by `mpqjax.report` (derived from the files above)
    "csv": "trials.csv",
    "pareto": "pareto.png",
    "hessian_plot": "hessian.png",
    "report": "report.md",
    # written by ``mpqjax train`` (a trained configuration's folder)
    "train": "train.json",
    # written by ``mpqjax export`` (from ``model``)
    "integer": "model_int.npz",
    "onnx": "model_int.onnx",
    "qwix": "qwix_rules.py",
    # held while a search runs (mpqjax.store.lock), removed at its end
    "lock": LOCK_FILE,
}
# Settings that may change when a search is resumed: everything else must match the interrupted run.
RESUMABLE_CHANGES = ("trials", "baseline")
# The phases of a search's time split, in pipeline order.
PHASES = ("float_model", "hessian", "method", "evaluations", "optimiser", "io", "final_training", "baseline")


def file_path(out_dir: str | os.PathLike, name: str) -> str:
    """The path of one of a run folder's files, by its `FILES` key (``"search"``, ``"trials"``, ...)."""
    return os.path.join(os.fspath(out_dir), FILES[name])


# -- reading -----------------------------------------------------------------------------------------------------


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
        """The number of trials the search was asked for (``settings.trials``; a one-shot method's: its proposals,
        ``method.proposals``), or None when not recorded."""
        proposals = (self.search.get("method") or {}).get("proposals")
        if isinstance(proposals, int):
            return proposals
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
    search_path = file_path(out_dir, "search")
    if not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir!r} is not a folder")
    if not os.path.isfile(search_path):
        raise ValueError(f"{out_dir!r} is not an mpqjax search folder (no {FILES['search']})")
    try:
        search = read_json(search_path)
    except ValueError:
        raise ValueError(f"{out_dir!r} is not an mpqjax search folder ({FILES['search']} is not valid JSON)") from None
    if not isinstance(search, dict) or not str(search.get("format", "")).startswith("mpqjax-search/"):
        raise ValueError(f"{out_dir!r} is not an mpqjax search folder ({FILES['search']} has no "
                         f"\"format\": \"{FORMAT}\")")
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
        trials=read_jsonl(file_path(out_dir, "trials")),
        baseline=read_jsonl(file_path(out_dir, "baseline")),
        hessian=optional_json(FILES["hessian"]),
        best_config=optional_json(FILES["best"]),
    )


def read_best_layers(path: str | os.PathLike) -> tuple[list[str], list[int], list[float]]:
    """The per-layer configuration of a ``best_config.json``: ``(layer names, bits, widths)``.

    Raises:
        ValueError: the file is not valid JSON or holds no per-layer configuration.
    """
    best = read_json(path)
    try:
        rows = best["layers"]
        return [row["name"] for row in rows], [row["bits"] for row in rows], [row["width"] for row in rows]
    except (KeyError, TypeError):
        raise ValueError(f"{os.fspath(path)!r} is not a {FILES['best']} of mpqjax search") from None


# -- before a run writes anything ----------------------------------------------------------------------------------


def settings_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The settings (names, sorted) that differ between two runs, except the `RESUMABLE_CHANGES`."""
    return sorted(name for name in set(old) | set(new)
                  if name not in RESUMABLE_CHANGES and old.get(name) != new.get(name))


def check_folder(out_dir: str | os.PathLike, settings: Mapping[str, Any], *, resume: bool) -> dict | None:
    """Validate an output folder before anything is written to it (this reads, never writes).

    No other search may hold the folder; a new run needs a new or empty folder (a stale lock file left by a killed
    search does not count); a resumed one, the folder of a search with the same settings (only the
    `RESUMABLE_CHANGES` may differ) and no more logged trials than ``settings["trials"]``, every one readable.

    Args:
        out_dir: the folder.
        settings: the run's settings in JSON form (`mpqjax.search.SearchConfig.to_dict`).
        resume: whether the run continues the search in ``out_dir``.

    Returns:
        The interrupted run's ``search.json`` when resuming, else None.

    Raises:
        ValueError: the folder is a file, is used by another search (`mpqjax.store.lock.FolderLockedError`), holds
            another search (or no search to resume, or one with other settings, or a damaged log), or is not empty.
    """
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"output folder {out_dir!r} is a file")
    check_unlocked(out_dir)
    return _check_content(out_dir, settings, resume)


def _check_content(out_dir: str, settings: Mapping[str, Any], resume: bool) -> dict | None:
    """`check_folder` without the lock: what the folder holds (the holder of the lock checks again with this)."""
    search_path = file_path(out_dir, "search")
    if resume:
        if not os.path.isfile(search_path):
            raise ValueError(f"cannot resume: {out_dir!r} holds no search to resume (no {FILES['search']})")
        previous = read_json(search_path)
        if not isinstance(previous, dict) or previous.get("format") != FORMAT:
            raise ValueError(f"cannot resume: {search_path!r} is not an mpqjax search file")
        differences = settings_differences(previous.get("settings", {}), settings)
        if differences:
            raise ValueError(f"cannot resume: settings differ from the interrupted search in "
                             f"{', '.join(differences)}")
        logged = len(read_jsonl(file_path(out_dir, "trials")))
        if settings["trials"] < logged:
            raise ValueError(f"cannot resume: {logged} trials are already logged, more than "
                             f"trials={settings['trials']}")
        return previous
    if os.path.isfile(search_path):
        raise ValueError(f"output folder {out_dir!r} holds another search: use --resume to continue it, or another "
                         f"--out")
    if os.path.isdir(out_dir) and set(os.listdir(out_dir)) - {FILES["lock"]}:
        raise ValueError(f"output folder {out_dir!r} is not empty; choose a new or empty folder")
    return None


def is_finished(out_dir: str | os.PathLike, previous: Mapping[str, Any] | None, trials: int) -> bool:
    """Whether a resumed folder already holds the finished search of ``trials`` trials (nothing left to run).

    Args:
        out_dir: the folder.
        previous: its ``search.json`` (`check_folder`'s result), or None for a new run.
        trials: the trials the run asks for.
    """
    return (previous is not None and previous.get("status") == "finished"
            and previous.get("settings", {}).get("trials") == trials
            and os.path.isfile(file_path(out_dir, "best")))


class RunFolder:
    """A search's output folder while the search writes it: ``search.json``, the logs, checkpoints and results.

    A search opens one with `RunFolder.open` (the lock held, the folder checked again under it) once `check_folder`
    accepted the folder; `RunFolder.create` writes one without a lock. ``meta`` holds ``search.json``'s fields;
    `update` changes them in memory, `save` also writes the file.

    Args:
        out_dir: the folder.
        meta: the ``search.json`` fields.
    """

    def __init__(self, out_dir: str | os.PathLike, meta: dict):
        self.out_dir = os.fspath(out_dir)
        self.meta = meta
        self._log: TrialLog | None = None

    @classmethod
    @contextlib.contextmanager
    def open(cls, out_dir: str | os.PathLike, settings: Mapping[str, Any], fields: Mapping[str, Any], *,
             resume: bool) -> Iterator[RunFolder]:
        """A run's folder for the ``with`` block: locked, checked again under the lock, and released at its end.

        A new run writes ``search.json`` (format, status ``"running"``, then ``fields``) at once. A resumed run
        writes nothing yet: its ``meta`` is the interrupted run's ``search.json`` (every section kept) updated with
        ``fields``, written by the first `save`, so a run that fails before it changes nothing.

        A new run whose block raises an error before a trial was logged removes the files it wrote (and the folder,
        when it created it), so the same command with corrected options runs without ``--resume``; an interrupt
        (``KeyboardInterrupt``) keeps them for ``--resume``.

        Args:
            out_dir: the folder.
            settings: the run's settings (as for `check_folder`).
            fields: ``search.json``'s fields of this run.
            resume: whether the run continues the search in ``out_dir``.

        Raises:
            ValueError: as `check_folder`, including `mpqjax.store.lock.FolderLockedError`.
        """
        lock = FolderLock.acquire(out_dir)
        folder = None
        try:
            previous = _check_content(lock.out_dir, settings, resume)
            if previous is None:
                folder = cls(lock.out_dir, {"format": FORMAT, "status": "running", **fields})
                folder.save()
            else:
                folder = cls(lock.out_dir, {**previous, **fields, "status": "running"})
            yield folder
        except Exception:
            if folder is not None and not resume and not folder.trials():
                folder._discard()
            raise
        finally:
            lock.release()
            if lock.created_folder:
                with contextlib.suppress(OSError):
                    os.rmdir(lock.out_dir)  # only when empty: a run that wrote nothing leaves nothing

    def _discard(self) -> None:
        """Remove every file of a new run (its folder was new or empty when it started)."""
        for name in os.listdir(self.out_dir):
            if (name in FILES.values() and name != FILES["lock"]) or name.startswith(".tmp-"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.out_dir, name))

    @classmethod
    def create(cls, out_dir: str | os.PathLike, fields: Mapping[str, Any]) -> RunFolder:
        """Create the folder (or take over a resumed one) and write its ``search.json``: format, status
        ``"running"``, then ``fields`` in their order."""
        folder = cls(out_dir, {"format": FORMAT, "status": "running", **fields})
        os.makedirs(folder.out_dir, exist_ok=True)
        folder.save()
        return folder

    def path(self, name: str) -> str:
        """The path of a file of the folder by its `FILES` key."""
        return file_path(self.out_dir, name)

    def has(self, name: str) -> bool:
        """Whether the file named by a `FILES` key exists."""
        return os.path.isfile(self.path(name))

    def update(self, **fields: Any) -> None:
        """Set ``search.json`` fields in memory (written by the next `save`)."""
        self.meta.update(fields)

    def save(self, **fields: Any) -> None:
        """Set ``search.json`` fields and write the file atomically."""
        self.meta.update(fields)
        atomic_write_json(self.path("search"), self.meta)

    def save_float(self, variables) -> None:
        """Keep the float model's variables (for a resume), unless the folder already holds them."""
        if not self.has("float"):
            save_variables(self.path("float"), variables)

    def read_hessian(self) -> dict | None:
        """The recorded sensitivity analysis (``hessian.json``), or None."""
        return read_json(self.path("hessian")) if self.has("hessian") else None

    def write_hessian(self, summary: Mapping[str, Any]) -> None:
        """Record the sensitivity analysis (`mpqjax.search.analyze_sensitivity`'s summary)."""
        atomic_write_json(self.path("hessian"), summary)

    def trials(self) -> list[dict]:
        """The logged trial records, in order (an append interrupted by a kill is truncated from the file first)."""
        if self._log is None:
            self._log = TrialLog(self.path("trials"))
        return self._log.records()

    def append_trials(self, records: Sequence[Mapping[str, Any]], state, **fields: Any) -> None:
        """Log a population's records in one write, then checkpoint the optimiser ``state`` (None: a one-shot
        method has none), then save ``search.json`` with ``fields``: in this order, the checkpoint never runs ahead
        of the log."""
        from mpqjax.store.tpe_state import save_tpe_state  # JAX, only for a search: reading a folder needs none

        if self._log is None:
            self._log = TrialLog(self.path("trials"))
        self._log.extend(records)
        if state is not None:
            save_tpe_state(self.path("state"), state)
        self.save(**fields)

    def restore_state(self, opt, records: Sequence[Mapping[str, Any]], space, population_size: int = 1):
        """The optimiser state after the logged ``records``: the checkpoint, completed from the log if it lags.

        The checkpoint is written after the log lines, so it is at most one population behind; ``opt.tell`` is
        deterministic, so telling the missing trials in the search's populations (aligned at multiples of
        ``population_size``) gives exactly the state of an uninterrupted run. A checkpoint that is unreadable, of
        another shape (the capacity grew with ``trials``) or ahead of the log is rebuilt from the log.

        Args:
            opt: the `mpqjax.optim.KMeansTPE` of the search.
            records: the logged trial records.
            space: the search space (encodes each record's ``config``).
            population_size: the configurations the search asks and tells at once.
        """
        from mpqjax.store.tpe_state import load_tpe_state  # JAX, only for a search: reading a folder needs none

        state = None
        if self.has("state"):
            with contextlib.suppress(ValueError):
                state = load_tpe_state(self.path("state"))
                if state.x.shape != opt.init().x.shape or int(state.count) > len(records):
                    state = None
        if state is None:
            state = opt.init()
        start = int(state.count)
        while start < len(records):
            chunk = records[start : (start // population_size + 1) * population_size]
            x = np.stack([space.encode(record["config"]) for record in chunk])
            y = [math.nan if record["objective"] is None else record["objective"] for record in chunk]
            state = opt.tell(state, x, np.asarray(y, np.float32))
            start += len(chunk)
        return state

    def baseline_log(self) -> TrialLog:
        """The uniform-precision baseline's log (``baseline.jsonl``)."""
        return TrialLog(self.path("baseline"))

    def finish(self, best_config: Mapping[str, Any], **fields: Any) -> None:
        """Write ``best_config.json``, then mark the search finished in ``search.json`` (with ``fields``)."""
        atomic_write_json(self.path("best"), best_config)
        self.save(status="finished", **fields)
