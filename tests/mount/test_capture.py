"""Commit capture through the real mount: every committed transaction, exactly once.

Several processes write and read one database in each journal mode; then the
log is replayed onto an empty image one transaction at a time. At every TXID
the image must be a sound SQLite database whose invariant holds (what some
reader could have seen), consecutive transactions must chain their checksums,
the writers' transactions must each appear exactly once (the counter moves by
exactly one per logged writer transaction), and the final image must equal the
database file.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest

from fs.formats.image import apply_pages
from replication.checksum import database_checksum
from replication.log import TransactionLog
from replication.txn import Transaction
from pylitefs.process import MountProcess
from tests.conftest import MountFactory, integrity
from tests.sqlite_workload import run_workload

pytestmark = pytest.mark.fuse

TXNS_PER_WRITER = 150
WRITERS = 4


def logged(node_data: Path, db: str) -> list[Transaction]:
    log = TransactionLog.open(str(node_data / ".pylitefs" / "logs" / f"{db}.log"))
    try:
        return list(log)
    finally:
        log.close()


def state_of(image: bytes, path: Path) -> tuple[str, int | None, tuple[int, int] | None]:
    """integrity_check, counter n and (count, sum) of items, read from an image copy."""
    path.write_bytes(image)
    conn = sqlite3.connect(path)
    try:
        ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "counter" not in tables or "items" not in tables:
            return ok, None, None
        row = conn.execute("SELECT n, total FROM counter").fetchone()
        if row is None:
            return ok, None, None
        count, vsum = conn.execute("SELECT count(*), coalesce(sum(v), 0) FROM items").fetchone()
        assert (count, vsum) == tuple(row), f"invariant broken in a logged state: {count, vsum} != {row}"
        return ok, row[0], (count, vsum)
    finally:
        conn.close()


def apply(image: bytearray, txn: Transaction) -> None:
    apply_pages(image, txn.page_size, txn.commit_size, txn.pages)


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal", "wal-exclusive"])
def test_every_commit_captured_exactly_once(mounts: MountFactory, mode: str, tmp_path: Path) -> None:
    node = mounts.start()
    db = node.mountpoint / "cap.db"
    reports = run_workload(db, mode, tmp_path / "stop", txns=TXNS_PER_WRITER, writers=WRITERS)
    assert all(r["checks"] > 0 for r in reports["reader"])
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    position = (node.mountpoint / "cap.db-pos").read_text()
    assert node.stop() == 0

    txns = logged(node.data_dir, "cap.db")
    assert [t.txid for t in txns] == list(range(1, len(txns) + 1))
    assert position == f"{txns[-1].txid:016x}/{txns[-1].post_checksum:016x}\n"
    image = bytearray()
    previous_post = 0
    counter_moves = 0
    previous_n: int | None = None
    for txn in txns:
        assert txn.pre_checksum == previous_post, f"checksum chain broken at TXID {txn.txid}"
        apply(image, txn)
        assert database_checksum(bytes(image), txn.page_size) == txn.post_checksum, txn.txid
        ok, n, _ = state_of(bytes(image), tmp_path / "replay.db")
        assert ok == "ok", f"TXID {txn.txid}: {ok}"
        if n is not None and previous_n is not None and n != previous_n:
            assert abs(n - previous_n) == 1, f"TXID {txn.txid} merged transactions: {previous_n} -> {n}"
            counter_moves += 1
        elif n is not None and previous_n is not None:
            pytest.fail(f"TXID {txn.txid} did not move the counter: a transaction logged twice or empty")
        previous_n = n if n is not None else previous_n
        previous_post = txn.post_checksum
    assert counter_moves == WRITERS * TXNS_PER_WRITER
    assert bytes(image) == (node.data_dir / "cap.db").read_bytes()


def test_memory_and_off_journal_modes_are_refused(mounted: MountProcess) -> None:
    db = mounted.mountpoint / "nojournal.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    for mode in ("memory", "off"):
        assert conn.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            conn.execute("INSERT INTO t VALUES (2)")
        conn.close()
        conn = sqlite3.connect(db, isolation_level=None)
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert conn.execute("PRAGMA journal_mode=delete").fetchone()[0] == "delete"
    conn.execute("INSERT INTO t VALUES (3)")
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,), (3,)]
    conn.close()
    assert integrity(db) == "ok"


def test_truncating_a_database_outside_a_transaction_is_refused(mounted: MountProcess) -> None:
    db = mounted.mountpoint / "keep.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    size = db.stat().st_size
    for attempt in (lambda: os.close(os.open(db, os.O_WRONLY | os.O_TRUNC)), lambda: os.truncate(db, 0)):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EIO
    assert db.stat().st_size == size == (mounted.data_dir / "keep.db").stat().st_size
    assert integrity(db) == "ok"
