"""SQLite's own concurrency through the mount: many processes, every journal mode.

4 writer and 2 reader processes share one database; every read transaction
checks the invariant of tests/sqlite_workload.py (row count and sum equal the
counter row). At the end: no violation, no SQLITE_CORRUPT/PROTOCOL, every
acknowledged transaction present, `integrity_check` ok — also after an
unmount and remount — and the file in the mount equals the data-dir file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import MountFactory, integrity
from tests.sqlite_workload import run_workload

pytestmark = pytest.mark.fuse

WRITERS = 4
TXNS_PER_WRITER = 600


def final_state(db: Path) -> tuple[int, int, int]:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        count = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        n, _ = conn.execute("SELECT n, total FROM counter").fetchone()
        return count, n, conn.execute("SELECT count(DISTINCT writer) FROM items").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal", "wal-exclusive"])
def test_many_processes_one_database(mounts: MountFactory, mode: str, tmp_path: Path) -> None:
    node = mounts.start()
    db = node.mountpoint / "stress.db"
    reports = run_workload(db, mode, tmp_path / "stop", txns=TXNS_PER_WRITER, writers=WRITERS)

    inserted = sum(r["inserted"] for r in reports["writer"])
    deleted = sum(r["deleted"] for r in reports["writer"])
    assert inserted + deleted == WRITERS * TXNS_PER_WRITER
    assert all(r["checks"] > 0 for r in reports["reader"]), reports["reader"]
    count, n, writers = final_state(db)
    assert count == n == inserted - deleted
    assert writers == WRITERS
    assert integrity(db) == "ok"

    assert node.stop() == 0
    node.start()
    assert final_state(db)[:2] == (count, n)
    assert integrity(db) == "ok"
    import sqlite3

    conn = sqlite3.connect(db)  # fold any WAL back so the two files are comparable
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert db.read_bytes() == (node.data_dir / "stress.db").read_bytes()
