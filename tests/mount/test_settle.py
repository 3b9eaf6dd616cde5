"""`Applier.settle` on a real mount: a fenced primary's databases hold exactly their committed content.

A primary-mode harness (tests/replica_harness.py) plays the node: applications
write through its mount, then it is demoted (`role`: writes refused) and
settles the database, with the applications' connections still open. Then it
is promoted again (capture reset) and the next commit must be logged as the
next TXID, the log replaying to the database file.

The data dir is only ever read here (never opened by SQLite) while mounted.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fs.formats.dbheader import parse_db_header
from fs.formats.shm import parse_checkpoint_info, parse_shm_header
from fs.recovery import committed_content, hot_journal
from tests.conftest import integrity
from tests.replica_harness import ReplicaHarness, position, replayed_log

pytestmark = pytest.mark.fuse

DB = "app.db"
ROWS = 20
#: Requests that change a file: none may reach the mount when there is nothing to settle.
WRITES = ("write", "setattr", "create", "unlink", "rename", "fsync")


def committed(harness: ReplicaHarness) -> bytes:
    """The committed content of DB as the data dir holds it (read only)."""
    dir_fd = os.open(harness.data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return committed_content(dir_fd, DB, undo_hot_journal=True).image
    finally:
        os.close(dir_fd)


def fill(conn: sqlite3.Connection, mode: str) -> None:
    """Put `conn`'s database in journal `mode` and commit ROWS rows into table t, one per transaction."""
    assert conn.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    for i in range(ROWS):
        conn.execute("INSERT INTO t(id, v) VALUES(?, randomblob(2000))", (i,))


def read_elsewhere(path: Path) -> bytes:
    """`path`'s content read by another process.

    Opening and closing a file here would drop every POSIX lock this process
    holds on it: the READ and DMS locks of the connections open in the test.
    """
    script = "import sys; sys.stdout.buffer.write(open(sys.argv[1], 'rb').read())"
    return subprocess.run([sys.executable, "-c", script, str(path)],
                          check=True, capture_output=True, timeout=30).stdout


def settle(harness: ReplicaHarness, expected: bytes) -> dict[str, int]:
    """Settle DB; check it returned `expected`; the FUSE requests it made, by handler."""
    harness.request({"cmd": "counts"})
    reply = harness.request({"cmd": "settle", "db": DB})
    assert reply == {"size": len(expected), "sha256": hashlib.sha256(expected).hexdigest()}
    return harness.request({"cmd": "counts"})


def rows_in_image(image: bytes, tmp_path: Path) -> list[int]:
    """The ids in table t of a database image, read from a private copy."""
    copy = tmp_path / "copy.db"
    copy.write_bytes(image)
    conn = sqlite3.connect(f"file:{copy}?immutable=1", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")]
    finally:
        conn.close()


def promote_and_commit(harness: ReplicaHarness, conn: sqlite3.Connection) -> None:
    """Primary again: the next commit of an open connection is logged as the next TXID."""
    last = position(harness, DB)
    assert harness.request({"cmd": "role", "primary": True}) == {"writable": True}
    conn.execute("INSERT INTO t(id, v) VALUES(1000, randomblob(100))")
    assert position(harness, DB) == last + 1


def assert_log_replays_to_the_database(harness: ReplicaHarness) -> None:
    """After the harness stopped: the log's replay is the committed content of the data dir."""
    assert committed(harness) == replayed_log(harness, DB)[1]


def settle_behind_a_reader(harness: ReplicaHarness, reader: sqlite3.Connection, expected: bytes) -> None:
    """Settle while `reader` is inside a read transaction: the applier fences the wal-index, then waits."""
    shm = harness.mountpoint / f"{DB}-shm"
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(settle(harness, expected))
        except BaseException as exc:  # reported by the main thread
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while True:  # the fence: copy 1 of the header differs from copy 0
            data = read_elsewhere(shm)
            if data[:48] != data[48:96]:
                break
            assert time.monotonic() < deadline, "settle never fenced the wal-index"
            time.sleep(0.01)
        assert thread.is_alive() and not outcome  # waiting for the reader
    finally:
        reader.execute("COMMIT")
        thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], dict), outcome


@pytest.mark.parametrize("reading", [False, True], ids=["idle-reader", "reader-in-transaction"])
def test_wal_committed_frames_move_into_the_database(
    primary: ReplicaHarness, tmp_path: Path, reading: bool,
) -> None:
    mnt, data = primary.mountpoint, primary.data_dir
    writer = sqlite3.connect(mnt / DB, timeout=5, isolation_level=None)
    reader = sqlite3.connect(mnt / DB, timeout=5, isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        fill(writer, "wal")
        assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == ROWS
        assert (data / f"{DB}-wal").stat().st_size > 0
        expected = committed(primary)
        assert rows_in_image(expected, tmp_path) == list(range(ROWS))
        assert (data / DB).read_bytes() != expected  # the rows are in the WAL only
        txid = position(primary, DB)

        assert primary.request({"cmd": "role", "primary": False}) == {"writable": False}
        if reading:
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == ROWS
            settle_behind_a_reader(primary, reader, expected)
        else:
            assert settle(primary, expected).get("write", 0) > 0

        assert (data / DB).read_bytes() == expected
        assert (data / f"{DB}-wal").stat().st_size == 0  # kept (WAL mode), empty
        assert not (data / f"{DB}-journal").exists()
        shm = read_elsewhere(mnt / f"{DB}-shm")
        assert shm[:48] == shm[48:96]
        header = parse_shm_header(shm)
        assert (header.mx_frame, header.n_page) == (0, len(expected) // parse_db_header(expected).page_size)
        assert parse_checkpoint_info(shm).n_backfill == 0
        # The connections opened before see the same rows in their next transaction.
        assert [r[0] for r in reader.execute("SELECT id FROM t ORDER BY id")] == list(range(ROWS))
        assert writer.execute("SELECT count(*) FROM t").fetchone()[0] == ROWS
        assert integrity(mnt / DB) == "ok"
        assert position(primary, DB) == txid  # settling logs nothing
        # Settling again finds nothing to do. (Closing the applier's `-shm` descriptor may make
        # the kernel write back the page SQLite's mmap dirtied: writes of `-shm` are not counted.)
        stamps = [(data / name).stat().st_mtime_ns for name in (DB, f"{DB}-wal")]
        counts = settle(primary, expected)
        assert not any(counts.get(name) for name in WRITES if name != "write"), counts
        assert [(data / name).stat().st_mtime_ns for name in (DB, f"{DB}-wal")] == stamps

        promote_and_commit(primary, writer)
        assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == ROWS + 1
    finally:
        writer.close()
        reader.close()
    assert primary.stop() == 0
    assert_log_replays_to_the_database(primary)


#: Run as a separate process: a big transaction with a tiny page cache, so pages spill into
#: the database file before the commit; prints "spilled" and waits to be killed.
SPILLER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)
conn.execute("PRAGMA cache_size=5")
conn.execute("BEGIN")
conn.execute("UPDATE t SET v=randomblob(2000)")
conn.execute("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM n WHERE x<300) "
             "INSERT INTO t(id, v) SELECT 100 + x, randomblob(3000) FROM n")
print("spilled", flush=True)
time.sleep(3600)
"""


@pytest.mark.parametrize("mode", ["delete", "persist"])
def test_hot_journal_of_a_killed_writer_is_rolled_back(
    primary: ReplicaHarness, mode: str, tmp_path: Path,
) -> None:
    mnt, data = primary.mountpoint, primary.data_dir
    conn = sqlite3.connect(mnt / DB, timeout=5, isolation_level=None)
    try:
        fill(conn, mode)
        before = (data / DB).read_bytes()
        txid = position(primary, DB)

        spiller = subprocess.Popen([sys.executable, "-c", SPILLER, str(mnt / DB)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert spiller.stdout is not None
            line = spiller.stdout.readline()
            assert line == "spilled\n", spiller.communicate(timeout=10)
        finally:
            spiller.send_signal(signal.SIGKILL)
            spiller.wait()
        dir_fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert hot_journal(dir_fd, DB) is not None
        finally:
            os.close(dir_fd)
        assert (data / DB).read_bytes() != before  # uncommitted pages reached the file
        assert position(primary, DB) == txid

        assert primary.request({"cmd": "role", "primary": False}) == {"writable": False}
        assert committed(primary) == before
        counts = settle(primary, before)
        assert counts.get("write", 0) > 0 and counts.get("unlink", 0) == 1

        assert (data / DB).read_bytes() == before
        assert not (data / f"{DB}-journal").exists()
        assert not (mnt / f"{DB}-journal").exists()
        assert integrity(mnt / DB) == "ok"
        assert [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")] == list(range(ROWS))
        assert position(primary, DB) == txid

        promote_and_commit(primary, conn)
    finally:
        conn.close()
    assert integrity(mnt / DB) == "ok"
    assert primary.stop() == 0
    assert_log_replays_to_the_database(primary)


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_nothing_to_settle_writes_nothing(primary: ReplicaHarness, mode: str) -> None:
    mnt, data = primary.mountpoint, primary.data_dir
    conn = sqlite3.connect(mnt / DB, timeout=5, isolation_level=None)
    try:
        fill(conn, mode)
        if mode == "wal":
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            assert (data / f"{DB}-wal").stat().st_size == 0
        image = (data / DB).read_bytes()
        mtime = (data / DB).stat().st_mtime_ns

        assert primary.request({"cmd": "role", "primary": False}) == {"writable": False}
        counts = settle(primary, image)
        assert not any(counts.get(name) for name in WRITES), counts
        assert (data / DB).stat().st_mtime_ns == mtime
        assert (data / DB).read_bytes() == image
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == ROWS
    finally:
        conn.close()
    # A database that does not exist settles to nothing, and is not created.
    assert primary.request({"cmd": "settle", "db": "absent.db"})["size"] == 0
    assert not (data / "absent.db").exists()
