"""Specification of mpqjax.store.lock: one search per folder, a refusal that names the holder, and a lock left by a
killed process taken over without anyone deleting it."""

import json
import os
import socket
import subprocess
import sys

import pytest

from mpqjax import store
from mpqjax.store.lock import LOCK_FILE, FolderLock, FolderLockedError, check_unlocked, holder


def test_a_held_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    out = tmp_path / "run"
    assert holder(out) is None  # no folder yet: nobody holds it, and looking creates nothing
    assert not out.exists()
    with FolderLock.acquire(out) as lock:
        assert lock.held and lock.created_folder
        owner = json.loads((out / LOCK_FILE).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert holder(out) == owner  # another open file of the same process is another holder
        with pytest.raises(FolderLockedError, match=rf"^output folder '{out}' is used by the search of process "
                                                    rf"{os.getpid()} on {socket.gethostname()} since .+; wait for it "
                                                    r"or stop it$"):
            FolderLock.acquire(out)
        with pytest.raises(ValueError, match="is used by the search of process"):  # the command line's bad input
            check_unlocked(out)
    assert not lock.held and not (out / LOCK_FILE).exists()  # released: the file goes with it
    assert holder(out) is None
    check_unlocked(out)
    lock.release()  # twice is harmless
    assert store.FolderLock is FolderLock and store.FolderLockedError is FolderLockedError


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    script = ("import sys, time\nfrom mpqjax.store.lock import FolderLock\nFolderLock.acquire(sys.argv[1])\n"
              "print('locked', flush=True)\ntime.sleep(600)\n")
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "locked\n"
        assert holder(tmp_path)["pid"] == process.pid
        with pytest.raises(FolderLockedError, match=f"used by the search of process {process.pid} on "):
            FolderLock.acquire(tmp_path)
    finally:
        process.kill()  # kill -9: no chance to release anything
        process.wait()
        process.stdout.close()
    assert (tmp_path / LOCK_FILE).exists()  # left behind, stale
    assert holder(tmp_path) is None
    with FolderLock.acquire(tmp_path) as lock:
        assert not lock.created_folder
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert os.listdir(tmp_path) == []
