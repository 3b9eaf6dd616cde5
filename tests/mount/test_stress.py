"""SQLite's own concurrency through the mount: many processes, every journal mode.

4 writer and 2 reader processes share one database; every read transaction
checks the invariant of tests/sqlite_workload.py (row count and sum equal the
counter row). At the end: no violation, no SQLITE_CORRUPT/PROTOCOL, every
acknowledged transaction present, `integrity_check` ok — also after an
unmount and remount — and the file in the mount equals the data-dir file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MountFactory, integrity

pytestmark = pytest.mark.fuse

WORKLOAD = str(Path(__file__).resolve().parent.parent / "sqlite_workload.py")
WRITERS = 4
READERS = 2
TXNS_PER_WRITER = 600
DEADLINE_S = 400


def run_workload(db: Path, mode: str, stop_file: Path, txns: int = TXNS_PER_WRITER) -> dict[str, list[dict]]:
    """Run writers and readers against `db` to completion; their final JSON reports."""
    subprocess.run([sys.executable, WORKLOAD, "setup", str(db), mode], check=True, timeout=60)
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        for r in range(READERS):
            args = [sys.executable, WORKLOAD, "reader", str(db), mode, "--stop-file", str(stop_file)]
            procs.append(("reader", subprocess.Popen(args + (["--mmap"] if r % 2 else []),
                                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        for w in range(WRITERS):
            args = [sys.executable, WORKLOAD, "writer", str(db), mode, "--txns", str(txns), "--seed", str(w + 1)]
            procs.append(("writer", subprocess.Popen(args + (["--mmap"] if w % 2 else []),
                                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        deadline = time.monotonic() + DEADLINE_S
        reports: dict[str, list[dict]] = {"writer": [], "reader": []}
        for role, proc in procs:
            if role == "reader":
                continue
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, f"writer failed ({proc.returncode}):\n{err}\n{out[-2000:]}"
            reports["writer"].append(json.loads(out.splitlines()[-1]))
        stop_file.touch()
        for role, proc in procs:
            if role != "reader":
                continue
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, f"reader failed ({proc.returncode}):\n{err}\n{out[-2000:]}"
            reports["reader"].append(json.loads(out.splitlines()[-1]))
        return reports
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


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
    reports = run_workload(db, mode, tmp_path / "stop")

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
