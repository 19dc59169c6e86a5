"""Reading an mpqjax file: an ``.npz`` archive with a JSON ``__config__`` entry naming its format.

Every file kind (`mpqjax.export.program`) reads its entries here, so a missing, truncated, foreign or newer file
gives the same one-line messages for each.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = ["one_line", "read_archive"]

_UNREADABLE = (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error)


def one_line(error: BaseException) -> str:
    """``"Type: first line"`` of an exception."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def read_archive(path: str, *, kind: str, required: Sequence[str], config_entry: str,
                 format_version: str) -> tuple[dict[str, np.ndarray], dict]:
    """Every entry of the archive at ``path`` and its parsed config; any failure is a one-line ValueError.

    Args:
        path: the file.
        kind: what the file should be, for the messages (``"mpqjax export"``).
        required: entries it must hold (the config entry among them).
        config_entry: the JSON entry, removed from the returned entries.
        format_version: the ``format`` the config must name.

    Returns:
        ``(entries, config)``: every other entry read (a truncated member fails here, not later) and the config.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except _UNREADABLE as error:
        raise ValueError(f"{path!r} is not a readable {kind} ({one_line(error)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} is not a readable {kind} (a single array, not an .npz archive)")
    with archive:
        missing = [name for name in required if name not in archive.files]
        if missing:
            raise ValueError(f"{path!r} is not a readable {kind} (no {', '.join(missing)} entry)")
        try:
            entries = {name: archive[name] for name in archive.files}
            config = json.loads(str(entries.pop(config_entry)))
        except (*_UNREADABLE, json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"{path!r} is a damaged {kind} ({one_line(error)})") from None
    if not isinstance(config, dict) or "format" not in config:
        raise ValueError(f"{path!r} is not a readable {kind} ({config_entry} names no format)")
    if config["format"] != format_version:
        raise ValueError(f"{path!r} has format {config['format']!r}; this version of mpqjax reads "
                         f"{format_version!r}")
    return entries, config
