"""A restart after kill -9 when even a stat of the dead mount fails (its attributes are not cached)."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3

import pytest

from pylitefs.process import is_mounted
from tests.conftest import MountFactory

pytestmark = pytest.mark.fuse


def test_restart_after_kill9_clears_a_stale_mount_that_fails_stat(mounts: MountFactory) -> None:
    node = mounts.start()
    conn = sqlite3.connect(node.mountpoint / "k.db")
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (42)")
    conn.commit()
    conn.close()
    (node.mountpoint / "gone.db").write_bytes(b"")
    os.unlink(node.mountpoint / "gone.db")  # the root changed: the kernel no longer caches its attributes
    node.signal(signal.SIGKILL)
    assert node.wait(10) == -signal.SIGKILL
    with pytest.raises(OSError) as info:
        os.stat(node.mountpoint)
    assert info.value.errno == errno.ENOTCONN
    assert is_mounted(str(node.mountpoint))
    node.start()  # neither the harness nor the daemon takes the mount point for missing
    assert "clearing stale mount" in node.log_text()
    conn = sqlite3.connect(node.mountpoint / "k.db")
    try:
        assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]
    finally:
        conn.close()
