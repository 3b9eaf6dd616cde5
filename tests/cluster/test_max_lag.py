"""replication.max-lag on real nodes: the primary never runs more than N transactions ahead of its replicas.

A primary with `max-lag: 5` and one replica. While the replica acknowledges,
writes go through. With the replica stopped, five more commits go through
and the sixth waits, then fails with an I/O error after
`max-lag-timeout`, leaving the database as it was; a commit waiting when the
replica comes back goes through.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from pylitefs.cluster import Cluster, wait_caught_up, wait_for

pytestmark = pytest.mark.fuse

DB = "app.db"


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_the_primary_waits_for_its_replicas(cluster: Cluster, mode: str) -> None:
    settings = {"max-lag": 5, "max-lag-timeout": "1500ms"}
    primary = cluster.primary(replication=settings)
    replica = cluster.replica("r1")
    conn = connect(primary.mountpoint / DB)
    try:
        conn.execute(f"PRAGMA journal_mode={mode}")
        conn.execute("CREATE TABLE t(n INTEGER PRIMARY KEY)")
        for n in range(30):  # acknowledged as they go: never held for long
            conn.execute("INSERT INTO t VALUES (?)", (n,))
        wait_caught_up(primary, [replica], DB)
        wait_for(lambda: primary.http("/status")["replicas"]["r1"]["positions"].get(DB, {}).get("txid")
                 == primary.position(DB)[0], 10, "the replica's acknowledgement")
        replica.stop()
        for n in range(30, 35):  # five unacknowledged commits are allowed
            conn.execute("INSERT INTO t VALUES (?)", (n,))
        before = primary.position(DB)
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            conn.execute("INSERT INTO t VALUES (35)")
        assert time.monotonic() - started >= 1.0  # it waited for an acknowledgement first
        assert primary.position(DB) == before
        assert "not acknowledged by any replica" in primary.log_text()
        conn.close()
        conn = connect(primary.mountpoint / DB)
        assert conn.execute("SELECT count(*), max(n) FROM t").fetchone() == (35, 34)

        # A commit that waits goes through once the replica is back and acknowledges.
        result: list[object] = []

        def write() -> None:
            c = connect(primary.mountpoint / DB)
            try:
                c.execute("PRAGMA busy_timeout=30000")
                c.execute("INSERT INTO t VALUES (35)")
                result.append("ok")
            except sqlite3.Error as exc:
                result.append(exc)
            finally:
                c.close()

        primary.stop()
        primary.config_path.write_text(primary.config_path.read_text().replace("1500ms", "30s"))
        primary.start()
        waiter = threading.Thread(target=write)
        waiter.start()
        time.sleep(0.5)  # a negative check: without the replica it cannot finish
        assert not result
        replica.start()
        waiter.join(60)
        assert result == ["ok"], result
        wait_caught_up(primary, [replica], DB)
    finally:
        conn.close()
