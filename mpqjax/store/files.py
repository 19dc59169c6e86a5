"""Persistence of a search: atomic file writes, the append-only trial log and the optimiser checkpoint.

Every file a search writes goes through `atomic_write` (a temporary file in the same folder, flushed, then renamed
over the target), so a reader or a killed process never sees half a file. The trial log ``trials.jsonl`` is the one
exception: it is append-only, one JSON object per line, each line written with a single ``write`` and flushed to disk
before the optimiser state is saved. A process killed in the middle of an append leaves at most one unterminated last
line, which `read_jsonl` ignores and `TrialLog` truncates when it reopens the file.

Example:
    >>> atomic_write_text("out/search.json", json.dumps(meta))
    >>> log = TrialLog("out/trials.jsonl")
    >>> log.append({"trial": 0, "objective": 0.93})
    >>> [record["trial"] for record in log.records()]
    [0]
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["TrialLog", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "load_variables",
           "read_checkpoint", "read_json", "read_jsonl", "save_variables", "to_json_value"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Create or replace ``path`` atomically: ``write(temporary_name)`` fills a temporary file that is then renamed.

    Args:
        path: the file to write (its folder must exist).
        write: called with the temporary file's name; it writes the whole content there.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(handle)
    try:
        os.chmod(temporary, 0o644)  # mkstemp makes private files; results are ordinary files
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def atomic_write_bytes(path: str | os.PathLike, content: bytes) -> None:
    """Write ``content`` to ``path`` atomically."""

    def write(name):
        with open(name, "wb") as handle:
            handle.write(content)

    atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def to_json_value(value: Any) -> Any:
    """``value`` with NumPy/JAX scalars and arrays turned into Python numbers and lists, and NaN/inf into None.

    JSON has no NaN; a failed trial's objective is written as ``null``.
    """
    if isinstance(value, dict):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return to_json_value(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as indented JSON (NaN and inf as null) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(to_json_value(value), indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; raises ValueError naming the file when it is not valid JSON."""
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{os.fspath(path)!r} is not valid JSON: {error}") from None


def _complete_lines(path: str) -> tuple[list[dict], int]:
    """The records of a JSONL file and the byte length of its valid prefix.

    Only the last line may be cut short or unparseable (an append interrupted by a kill); a damaged line before it
    means the file was edited or corrupted, and dropping every later record silently would lose trials.
    """
    records, valid_bytes = [], 0
    with open(path, "rb") as handle:
        lines = handle.readlines()
    for number, line in enumerate(lines):
        last = number == len(lines) - 1
        try:
            record = json.loads(line) if line.endswith(b"\n") or not last else None
        except json.JSONDecodeError:
            record = None
        if record is None:
            if last:
                break
            raise ValueError(f"{path!r}: line {number + 1} is not a JSON record (only the last line of a log can "
                             f"be cut short); repair or remove it")
        records.append(record)
        valid_bytes += len(line)
    return records, valid_bytes


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file, ignoring an unterminated or unparseable last line (an interrupted append).

    A missing file reads as no records.

    Raises:
        ValueError: a damaged line that is not the last one.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    return _complete_lines(path)[0]


class TrialLog:
    """An append-only JSON-lines log of finished trials.

    Opening the log truncates an interrupted last append, so the file always holds whole records.

    Args:
        path: the ``.jsonl`` file (created on the first append).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if os.path.exists(self.path):
            _, valid_bytes = _complete_lines(self.path)
            if valid_bytes != os.path.getsize(self.path):
                with open(self.path, "r+b") as handle:
                    handle.truncate(valid_bytes)
                    os.fsync(handle.fileno())

    def records(self) -> list[dict]:
        """Every record, in the order appended."""
        return read_jsonl(self.path)

    def append(self, record: dict) -> None:
        """Append one record (NaN and inf written as null) and flush it to disk before returning."""
        self.extend([record])

    def extend(self, records: Iterable[dict]) -> None:
        """Append several records in one write, flushed to disk before returning."""
        text = "".join(json.dumps(to_json_value(record)) + "\n" for record in records)
        if not text:
            return
        with open(self.path, "ab") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())


def save_variables(path: str | os.PathLike, variables: Any) -> None:
    """Write a variables PyTree (e.g. ``{'params': ..., 'batch_stats': ...}``) as flax msgpack, atomically."""
    import flax.serialization
    import jax
    import numpy as np

    atomic_write_bytes(path, flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, variables)))


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The tree of arrays in a flax msgpack file or an orbax checkpoint folder, as it was saved.

    Raises:
        ValueError: the path is missing or is neither.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    try:
        if os.path.isdir(path):
            import orbax.checkpoint as ocp

            return ocp.StandardCheckpointer().restore(os.path.abspath(path))
        import flax.serialization

        with open(path, "rb") as handle:
            return flax.serialization.msgpack_restore(handle.read())
    except Exception as error:  # msgpack and orbax errors alike: not a checkpoint
        raise ValueError(f"cannot read {path!r} as a checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None


def load_variables(path: str | os.PathLike, template: Any) -> Any:
    """Read variables shaped like ``template`` from a flax msgpack file or an orbax checkpoint folder.

    Args:
        path: a file written by `save_variables` (``flax.serialization.msgpack_serialize`` of the variables dict),
            or a folder written by orbax (``orbax.checkpoint.StandardCheckpointer().save(path, variables)``).
        template: a PyTree with the expected structure and shapes (e.g. `mpqjax.nn.models.init_variables`); only its
            top-level collections present in the checkpoint are read.

    Returns:
        The variables, with ``template``'s structure.

    Raises:
        ValueError: the file is missing, unreadable, or holds a different structure or different shapes.
    """
    import jax
    import numpy as np

    restored = read_checkpoint(path)
    path = os.fspath(path)
    try:
        restored = {name: restored[name] for name in template}
        variables = jax.tree.map(lambda _, value: np.asarray(value), template, restored)
        mismatched = [np.shape(a) != np.shape(b) for a, b in
                      zip(jax.tree.leaves(template), jax.tree.leaves(variables), strict=True)]
    except Exception as error:  # msgpack, orbax and structure errors all mean "not this model's checkpoint"
        raise ValueError(f"cannot read {path!r} as a checkpoint of this model ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if any(mismatched):
        raise ValueError(f"checkpoint {path!r} has different shapes than this model")
    return variables
