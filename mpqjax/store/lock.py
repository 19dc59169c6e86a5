"""The run folder's lock: one search writes a folder at a time.

A search holds an exclusive `fcntl.flock` on its folder's ``search.lock`` for its whole life. The file names the
holder (process id, host, start time), so that a second search on the folder is refused with a message that says
whose it is. The operating system releases the lock when its process ends in any way, ``kill -9`` included: a lock
left behind by a dead process is stale, and the next search takes it over without anyone deleting anything. The
holder removes the file when it releases the lock.

`FolderLock.acquire` takes the lock; `holder` and `check_unlocked` only look (they change nothing, so a command can
refuse a locked folder before it loads anything, and take the lock later). This needs a POSIX system (``fcntl``); on
NFS, Linux emulates ``flock`` with byte-range locks, which work across clients.

Example:
    >>> with FolderLock.acquire("runs/digits") as lock:  # raises FolderLockedError while another search runs
    ...     ...
    >>> holder("runs/digits") is None  # released
    True
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time

__all__ = ["LOCK_FILE", "FolderLock", "FolderLockedError", "check_unlocked", "holder"]

LOCK_FILE = "search.lock"
# A look (`holder`) holds the lock for an instant: an acquisition retries for this long before it refuses.
_RETRY_SECONDS, _RETRY_INTERVAL = 0.2, 0.01


class FolderLockedError(ValueError):
    """The folder is locked by another search (a ValueError: the command line reports it as bad input, exit 2).

    Attributes:
        out_dir: the folder.
        owner: the holder as its lock file names it (``pid``, ``host``, ``since``), or None when unreadable.
    """

    def __init__(self, out_dir: str, owner: dict | None):
        self.out_dir, self.owner = out_dir, owner
        if owner:
            who = f"the search of process {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}"
        else:
            who = "another search"
        super().__init__(f"output folder {out_dir!r} is used by {who}; wait for it or stop it")


def _path(out_dir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(out_dir), LOCK_FILE)


def _read_owner(path: str) -> dict | None:
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="utf-8") as handle:
            owner = json.load(handle)
        return owner if isinstance(owner, dict) else None
    return None


def _try_lock(descriptor: int, operation: int) -> bool:
    """Whether ``flock(descriptor, operation | LOCK_NB)`` got the lock (False: someone else holds it)."""
    try:
        fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def holder(out_dir: str | os.PathLike) -> dict | None:
    """Who holds the folder's lock (``{"pid", "host", "since"}``, or ``{}`` when the file does not say), or None
    when nobody does: no lock file, or a stale one left by a process that has ended. Writes nothing."""
    path = _path(out_dir)
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _try_lock(descriptor, fcntl.LOCK_SH):  # shared: two looks never refuse each other
            fcntl.flock(descriptor, fcntl.LOCK_UN)
            return None
        return _read_owner(path) or {}
    finally:
        os.close(descriptor)


def check_unlocked(out_dir: str | os.PathLike) -> None:
    """Raise `FolderLockedError` when another search holds the folder's lock (writes nothing)."""
    owner = holder(out_dir)
    if owner is not None:
        raise FolderLockedError(os.fspath(out_dir), owner or None)


class FolderLock:
    """The held lock of a run folder; `release` (or leaving its ``with`` block) gives it back.

    Create one with `FolderLock.acquire`.

    Attributes:
        out_dir: the folder.
        created_folder: whether acquiring created the folder (a run that writes nothing removes it again).
    """

    def __init__(self, out_dir: str, descriptor: int, created_folder: bool):
        self.out_dir, self.created_folder = out_dir, created_folder
        self._descriptor: int | None = descriptor

    @classmethod
    def acquire(cls, out_dir: str | os.PathLike) -> FolderLock:
        """Take the folder's lock, creating the folder when it does not exist, and write the holder into it.

        Raises:
            FolderLockedError: another live process holds it (a stale lock is taken over).
            OSError: the folder cannot be created or written.
        """
        out_dir = os.fspath(out_dir)
        created = not os.path.isdir(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        path, deadline = _path(out_dir), time.monotonic() + _RETRY_SECONDS
        while True:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if _try_lock(descriptor, fcntl.LOCK_EX):
                # the holder we waited for may have removed the file after we opened it: lock the file at the path
                with contextlib.suppress(FileNotFoundError):
                    if os.fstat(descriptor).st_ino == os.stat(path).st_ino:
                        break
                os.close(descriptor)
                continue
            os.close(descriptor)
            if time.monotonic() > deadline:
                raise FolderLockedError(out_dir, _read_owner(path))
            time.sleep(_RETRY_INTERVAL)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(owner) + "\n").encode("utf-8"), 0)
        os.fsync(descriptor)
        return cls(out_dir, descriptor, created)

    @property
    def held(self) -> bool:
        """Whether this lock is still held."""
        return self._descriptor is not None

    def release(self) -> None:
        """Remove the lock file and give the lock back (a second call does nothing)."""
        if self._descriptor is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_path(self.out_dir))  # before unlocking: a waiter that opened it sees it is gone
        fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        os.close(self._descriptor)
        self._descriptor = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
