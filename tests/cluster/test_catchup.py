"""Replicas that were away: started late, gone past the retention, altered, killed mid-apply.

Each ends with the replica at the primary's exact position, byte-identical,
integrity ok.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading

import pytest

from pylitefs.cluster import Cluster, Node, committed_image, wait_caught_up, wait_for
from tests.conftest import integrity

pytestmark = pytest.mark.fuse


def write_rows(node: Node, db: str, n: int, *, mode: str = "wal", start: int = 0, blob: int = 200) -> None:
    conn = sqlite3.connect(node.mountpoint / db, isolation_level=None, timeout=30)
    try:
        conn.execute(f"PRAGMA journal_mode={mode}")
        conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)")
        for i in range(start, start + n):
            conn.execute("INSERT INTO t VALUES(?, randomblob(?))", (i, blob))
    finally:
        conn.close()


def assert_identical(primary: Node, replica: Node, db: str) -> None:
    wait_caught_up(primary, [replica], db)
    assert (replica.data_dir / db).read_bytes() == committed_image(primary, db)
    assert integrity(replica.mountpoint / db) == "ok"


def test_a_replica_started_late_catches_up_from_the_log(cluster: Cluster) -> None:
    primary = cluster.primary()
    write_rows(primary, "late.db", 200)
    replica = cluster.replica("r1")
    assert_identical(primary, replica, "late.db")
    write_rows(primary, "late.db", 50, start=200)  # and then follows live
    assert_identical(primary, replica, "late.db")
    assert "snapshot" not in replica.log_text()


def test_a_replica_away_longer_than_the_retention_gets_a_snapshot(cluster: Cluster) -> None:
    primary = cluster.primary(data={"retention": "1s", "retention-monitor-interval": "200ms"})
    replica = cluster.replica("r1")
    write_rows(primary, "ret.db", 20)
    wait_caught_up(primary, [replica], "ret.db")
    assert replica.stop() == 0
    write_rows(primary, "ret.db", 100, start=20)
    first = primary.data_dir / ".pylitefs" / "logs" / "ret.db.log"
    wait_for(lambda: "retention: dropped" in primary.log_text(), 20, "the primary to drop old transactions")
    replica.start()
    assert_identical(primary, replica, "ret.db")
    assert "replaced the local copy with the primary's snapshot" in replica.log_text()
    assert first.exists()


def test_a_copy_altered_behind_the_daemon_is_rewritten_from_its_log(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r1")
    write_rows(primary, "alt.db", 30, mode="wal")
    wait_caught_up(primary, [replica], "alt.db")
    assert replica.stop() == 0
    with open(replica.data_dir / "alt.db", "r+b") as f:  # behind the daemon's back
        f.seek(4096 + 200)
        f.write(b"garbage")
    replica.start()
    assert_identical(primary, replica, "alt.db")
    assert "rewrote it from the log" in replica.log_text()


def test_a_copy_altered_behind_the_daemon_is_replaced_by_a_snapshot(cluster: Cluster) -> None:
    primary = cluster.primary()
    # A short retention on the replica: its log cannot rewrite the whole copy.
    replica = cluster.replica("r1", data={"retention": "1s", "retention-monitor-interval": "200ms"})
    write_rows(primary, "alt.db", 30, mode="delete")
    wait_caught_up(primary, [replica], "alt.db")
    wait_for(lambda: "retention: dropped" in replica.log_text(), 20, "the replica to drop old transactions")
    assert replica.stop() == 0
    conn = sqlite3.connect(replica.data_dir / "alt.db")  # behind the daemon's back
    conn.execute("DELETE FROM t WHERE id < 10")
    conn.commit()
    conn.close()
    replica.start()
    assert_identical(primary, replica, "alt.db")
    assert "does not match its log" in replica.log_text()


def test_kill_9_of_a_replica_while_it_applies(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r1")
    write_rows(primary, "k.db", 1)
    wait_caught_up(primary, [replica], "k.db")
    writer = threading.Thread(target=write_rows, args=(primary, "k.db", 3000), kwargs={"start": 10, "blob": 3000})
    writer.start()
    try:
        for _ in range(3):
            wait_for(lambda: (replica.position("k.db") or (0, 0))[0] > 5, 30, "the replica to apply")
            replica.proc.send_signal(signal.SIGKILL)
            assert replica.wait(10) is not None, "the killed replica did not exit (its guard should end it)"
            replica.start()
    finally:
        writer.join()
    assert_identical(primary, replica, "k.db")


def test_dropped_and_recreated_databases_follow(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r1")
    write_rows(primary, "a.db", 10)
    write_rows(primary, "b.db", 10, mode="delete")
    wait_caught_up(primary, [replica], "a.db")
    wait_caught_up(primary, [replica], "b.db")
    for suffix in ("", "-wal", "-shm"):
        if (primary.mountpoint / f"a.db{suffix}").exists():
            os.unlink(primary.mountpoint / f"a.db{suffix}")
    wait_for(lambda: not (replica.mountpoint / "a.db").exists(), 30, "a.db to disappear on the replica")
    write_rows(primary, "a.db", 5, mode="delete")
    assert_identical(primary, replica, "a.db")
    assert_identical(primary, replica, "b.db")
    with sqlite3.connect(replica.mountpoint / "a.db") as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 5


def test_a_new_replica_of_a_primary_whose_dropped_database_left_only_its_drop(cluster: Cluster) -> None:
    primary = cluster.primary(data={"retention": "1s", "retention-monitor-interval": "200ms"})
    write_rows(primary, "gone.db", 5)
    for suffix in ("", "-wal", "-shm"):
        if (primary.mountpoint / f"gone.db{suffix}").exists():
            os.unlink(primary.mountpoint / f"gone.db{suffix}")
    write_rows(primary, "kept.db", 5)
    wait_for(lambda: "retention: dropped" in primary.log_text(), 20, "the primary to drop old transactions")
    replica = cluster.replica("r1")
    assert_identical(primary, replica, "kept.db")
    assert not (replica.mountpoint / "gone.db").exists()


@pytest.mark.parametrize(("live_rows", "staging_rows"), [(10, 25), (40, 5)])
def test_a_database_renamed_over_another_follows(cluster: Cluster, live_rows: int, staging_rows: int) -> None:
    """The target's history is replaced by one with a longer or a shorter TXID sequence."""
    primary = cluster.primary()
    replica = cluster.replica("r1")
    write_rows(primary, "live.db", live_rows, mode="delete")
    write_rows(primary, "staging.db", staging_rows, mode="delete")
    wait_caught_up(primary, [replica], "live.db")
    wait_caught_up(primary, [replica], "staging.db")
    os.rename(primary.mountpoint / "staging.db", primary.mountpoint / "live.db")
    wait_for(lambda: not (replica.mountpoint / "staging.db").exists(), 30, "staging.db to go on the replica")
    assert_identical(primary, replica, "live.db")
    with sqlite3.connect(replica.mountpoint / "live.db") as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == staging_rows


def test_replicas_reconnect_after_the_primary_restarts(cluster: Cluster) -> None:
    primary = cluster.primary()
    replicas = [cluster.replica("r1"), cluster.replica("r2")]
    write_rows(primary, "re.db", 10)
    wait_caught_up(primary, replicas, "re.db")
    assert primary.stop() == 0
    wait_for(lambda: all(not (r.mountpoint / ".primary").exists() for r in replicas), 30,
             ".primary to go while the primary is down")
    with sqlite3.connect(replicas[0].mountpoint / "re.db") as conn:  # reads go on meanwhile
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 10
    primary.start()
    write_rows(primary, "re.db", 10, start=10)
    for replica in replicas:
        assert_identical(primary, replica, "re.db")
        assert "cannot reach the primary" in replica.log_text() or "ended, reconnecting" in replica.log_text()
