"""The lease's fence on a real mount: past `Access.writable_until` a primary's mount refuses writes.

A primary-mode harness (tests/replica_harness.py: capture into a Store, as the
node does). An application's connection, kept open across the fence, commits
normally, then its next write transaction fails with an SQLite error while
`access.primary` is still True; nothing is logged for it, the database stays
intact for readers, and once the deadline moves forward again (a late lease
renewal) the same connection commits the next TXID.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from fs.recovery import committed_content
from tests.conftest import integrity
from tests.replica_harness import ReplicaHarness, position, replayed_log

pytestmark = pytest.mark.fuse

DB = "app.db"
INSERT = "INSERT INTO t(v) VALUES(randomblob(3000))"


def rows(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=5)
    try:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal"])
def test_writes_fail_past_the_deadline_and_nothing_is_logged(primary: ReplicaHarness, mode: str) -> None:
    db = primary.mountpoint / DB
    conn = sqlite3.connect(db, timeout=5, isolation_level=None)
    try:
        assert conn.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        for _ in range(5):
            conn.execute(INSERT)
        # A deadline in the future changes nothing.
        assert primary.request({"cmd": "fence", "in": 3600}) == {"writable": True}
        conn.execute(INSERT)
        committed = position(primary, DB)
        assert rows(db) == 6

        assert primary.request({"cmd": "fence", "in": 0}) == {"writable": False}
        for statements in ([INSERT], ["BEGIN IMMEDIATE", INSERT, INSERT, "UPDATE t SET v=x'00'", "COMMIT"]):
            with pytest.raises(sqlite3.OperationalError, match="readonly|disk I/O error"):
                for sql in statements:
                    conn.execute(sql)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            assert position(primary, DB) == committed
            assert integrity(db) == "ok"  # a reader on this host
            assert rows(db) == 6
        if mode == "delete":
            assert not (primary.mountpoint / f"{DB}-journal").exists()

        # The lease is renewed late: the same connection writes again, captured as the next TXID.
        assert primary.request({"cmd": "fence", "in": None}) == {"writable": True}
        conn.execute(INSERT)
        assert position(primary, DB) == committed + 1
        assert rows(db) == 7
    finally:
        conn.close()
    assert integrity(db) == "ok"
    last = position(primary, DB)
    assert primary.stop() == 0
    last_logged, logged = replayed_log(primary, DB)
    assert last_logged == last
    dir_fd = os.open(primary.data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert committed_content(dir_fd, DB).image == logged
    finally:
        os.close(dir_fd)
