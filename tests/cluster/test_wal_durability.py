"""WAL commits are durable in the WAL: the log is fsynced before a checkpoint, not at every commit.

With `synchronous=FULL` SQLite fsyncs the WAL at every commit. The primary
does not fsync the log then (fs.capture): a power loss may take the log's
unsynced tail, and recovery logs those commits again from the WAL's frames
(pylitefs.startup). The log is fsynced before the WAL's frames are
checkpointed into the database or the WAL is restarted, truncated or deleted.

The power loss is simulated: kill -9 of the primary (the page cache
survives), then the log cut back to its last fsynced transaction, which the
test knows because no log fsync happened since (`/metrics`).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pylitefs.cluster import Cluster, Node, committed_image, wait_caught_up, wait_for
from pylitefs.tools import log_path, open_log
from replication.log import TransactionLog
from tests.conftest import integrity

pytestmark = pytest.mark.fuse

DB = "app.db"
WORKLOAD = str(Path(__file__).resolve().parent.parent / "sqlite_workload.py")
WRITERS = 3
READERS = 2
ACKS_BEFORE_CRASH = 40  # per writer


def log_fsyncs(node: Node, db: str) -> int:
    """`pylitefs_log_fsyncs_total{db}` from the node's /metrics."""
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(f'pylitefs_log_fsyncs_total{{db="{db}"}} '):
            return int(float(line.split()[-1]))
    raise AssertionError(f"no log_fsyncs_total for {db}")


def history(node: Node, db: str) -> list[tuple[int, int]]:
    """(TXID, post-checksum) of every transaction in `node`'s log of `db` (node stopped)."""
    with open_log(str(node.data_dir), db) as txlog:
        return [(txn.txid, txn.post_checksum) for txn in txlog]


def test_full_wal_commits_fsync_the_log_only_before_a_checkpoint(cluster: Cluster) -> None:
    primary = cluster.primary()
    conn = sqlite3.connect(primary.mountpoint / DB, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE t(x)")
        before = log_fsyncs(primary, DB)
        for i in range(50):
            conn.execute("INSERT INTO t VALUES (?)", (i,))
        assert log_fsyncs(primary, DB) == before, "a WAL commit fsynced the log"
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert log_fsyncs(primary, DB) == before + 1, "the checkpoint did not fsync the log exactly once"
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert log_fsyncs(primary, DB) == before + 1, "nothing new, yet the log was fsynced"
    finally:
        conn.close()


def test_a_power_loss_that_takes_the_logs_unsynced_tail_loses_no_commit(cluster: Cluster, tmp_path: Path) -> None:
    primary = cluster.primary()
    replica = cluster.replica("replica")
    db = primary.mountpoint / DB
    subprocess.run([sys.executable, WORKLOAD, "setup", str(db), "wal"], check=True, timeout=60)
    wait_for(lambda: primary.position(DB), 10, "the primary's position")
    synced_txid = primary.position(DB)[0]  # type: ignore[index]
    fsyncs = log_fsyncs(primary, DB)

    stop_file = tmp_path / "stop"
    readers = [subprocess.Popen([sys.executable, WORKLOAD, "reader", str(db), "wal", "--stop-file", str(stop_file)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(READERS)]
    writers = [subprocess.Popen([sys.executable, WORKLOAD, "writer", str(db), "wal", "--txns", "1000000",
                                 "--seed", str(w + 1), "--synchronous", "FULL", "--no-checkpoint"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(WRITERS)]
    try:
        for proc in writers:  # each has at least ACKS_BEFORE_CRASH acknowledged commits
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            for _ in range(ACKS_BEFORE_CRASH):
                assert time.monotonic() < deadline and proc.stdout.readline(), proc.stderr and proc.stderr.read()
        stop_file.touch()
        for proc in readers:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"reader failed ({proc.returncode}): {err}\n{out[-2000:]}"
            assert json.loads(out.splitlines()[-1])["checks"] > 0
        assert log_fsyncs(primary, DB) == fsyncs, "the log was fsynced during the WAL commits"
        primary.crash()  # the writers are still committing
    finally:
        for proc in writers + readers:
            proc.kill()
            proc.communicate()
    before = history(primary, DB)
    assert before[-1][0] >= synced_txid + WRITERS * ACKS_BEFORE_CRASH
    primary.stop()

    # The power loss: every log record after the last fsync is gone.
    txlog = TransactionLog.open(log_path(str(primary.data_dir), DB))
    try:
        assert txlog.truncate_after(synced_txid) == len(before) - synced_txid
    finally:
        txlog.close()
    replica_log_offset = len(replica.log_text())
    primary_log_offset = len(primary.log_text())

    primary.start()
    text = primary.log_text(primary_log_offset)
    assert f"logged {len(before) - synced_txid} committed WAL transaction(s) that had not reached the log" in text
    assert " ERROR " not in text, text
    assert primary.position(DB) == before[-1]
    assert integrity(db) == "ok"
    conn = sqlite3.connect(db)
    try:
        count, vsum = conn.execute("SELECT count(*), coalesce(sum(v), 0) FROM items").fetchone()
        assert (count, vsum) == conn.execute("SELECT n, total FROM counter").fetchone()
    finally:
        conn.close()

    # The replica had the lost records as the primary first logged them: the
    # rebuilt ones have the same TXIDs and checksums, so it simply carries on.
    wait_caught_up(primary, [replica], DB)
    assert (replica.data_dir / DB).read_bytes() == committed_image(primary, DB)
    replica_text = replica.log_text(replica_log_offset)
    assert "snapshot" not in replica_text and " ERROR " not in replica_text, replica_text
    assert primary.stop() == 0
    assert history(primary, DB) == before
