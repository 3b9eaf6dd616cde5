"""fs.mount's data-dir lock: who holds it, and the message when a killed daemon cannot exit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fs.mount import MountError, _is_exiting, data_dir_lock
from pylitefs.cluster import wait_for


def test_a_zombie_owner_is_recognised_and_a_live_one_is_not() -> None:
    child = subprocess.Popen(["true"])  # exits at once; not reaped yet: a zombie, like a killed daemon
    try:
        wait_for(lambda: _is_exiting(str(child.pid)), 10, "the child to become a zombie")
    finally:
        child.wait()
    assert not _is_exiting(str(os.getpid()))
    assert not _is_exiting("not-a-pid") and not _is_exiting("999999999")


def test_the_lock_is_exclusive_and_names_the_owner(tmp_path: Path) -> None:
    with data_dir_lock(str(tmp_path)):
        with pytest.raises(MountError, match=f"in use by another pylitefs \\(pid {os.getpid()}\\)"):
            with data_dir_lock(str(tmp_path)):
                pass
