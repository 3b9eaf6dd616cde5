"""The guard (fs/guard.py) ends a daemon killed while one of its threads waits on its own mount."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pylitefs.cluster import wait_for
from pylitefs.process import abort_connection, force_unmount, is_mounted

pytestmark = pytest.mark.fuse

ROOT = Path(__file__).resolve().parents[2]


def test_a_daemon_killed_while_stuck_on_its_own_mount_exits_and_is_unmounted(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "tests.stuck_mount", str(mnt)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "read sent"  # its own thread now waits on its own mount
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)  # without the guard it would never exit
        wait_for(lambda: not is_mounted(str(mnt)), 10, "the guard to detach the mount")
        assert "aborting FUSE connection" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            abort_connection(str(mnt))
            proc.kill()
            proc.wait(10)
        force_unmount(str(mnt))
