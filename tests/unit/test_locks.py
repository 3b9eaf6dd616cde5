"""fs.locks against SQLite's own locking, on plain files (OFD locks conflict with POSIX locks even
within one process, so one process can play both sides)."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fs.locks import (
    EXCLUSIVE,
    SHARED,
    SHM_DMS,
    LockTimeout,
    acquire,
    rollback_reader,
    rollback_writer,
    try_lock,
    unlock,
    wal_reader,
    wal_writer,
)


@pytest.fixture
def rollback_db(tmp_path: Path) -> Iterator[Path]:
    db = tmp_path / "r.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("CREATE TABLE t(x)")
    con.execute("INSERT INTO t VALUES (1)")
    con.close()
    yield db


@pytest.fixture
def wal_db(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    db = tmp_path / "w.db"
    keeper = sqlite3.connect(db, isolation_level=None)  # keeps -wal and -shm alive
    keeper.execute("PRAGMA journal_mode=wal")
    keeper.execute("CREATE TABLE t(x)")
    keeper.execute("INSERT INTO t VALUES (1)")
    yield db, keeper
    keeper.close()


def test_ofd_locks_conflict_between_descriptors(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    a, b = os.open(path, os.O_RDWR), os.open(path, os.O_RDWR)
    try:
        assert try_lock(a, EXCLUSIVE, 100, 10)
        assert not try_lock(b, SHARED, 105)
        assert try_lock(b, SHARED, 110)
        unlock(a, 100, 10)
        assert try_lock(b, SHARED, 105)
        assert try_lock(a, SHARED, 105)  # shared with shared
    finally:
        os.close(a)
        os.close(b)


def test_acquire_gives_up_at_its_deadline(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    a, b = os.open(path, os.O_RDWR), os.open(path, os.O_RDWR)
    try:
        assert try_lock(a, EXCLUSIVE, SHM_DMS)
        start = time.monotonic()
        with pytest.raises(LockTimeout, match="DMS"):
            acquire(b, SHARED, SHM_DMS, 1, start + 0.1, "DMS")
        assert 0.1 <= time.monotonic() - start < 2
    finally:
        os.close(a)
        os.close(b)


def test_rollback_writer_stops_readers_and_waits_for_them(rollback_db: Path) -> None:
    fd = os.open(rollback_db, os.O_RDWR)
    reader = sqlite3.connect(rollback_db, timeout=0, isolation_level=None)
    try:
        with rollback_writer(fd, timeout=1):
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                reader.execute("SELECT * FROM t").fetchall()
        assert reader.execute("SELECT * FROM t").fetchall() == [(1,)]
        reader.execute("BEGIN")
        reader.execute("SELECT * FROM t").fetchall()  # holds SHARED
        with pytest.raises(LockTimeout, match="SHARED"):
            with rollback_writer(fd, timeout=0.05):
                pass
        reader.execute("COMMIT")
        with rollback_writer(fd, timeout=1):
            pass
    finally:
        reader.close()
        os.close(fd)


def test_rollback_reader_blocks_commits_not_reads(rollback_db: Path) -> None:
    fd = os.open(rollback_db, os.O_RDONLY)
    other = sqlite3.connect(rollback_db, timeout=0, isolation_level=None)
    try:
        with rollback_reader(fd, timeout=1):
            assert other.execute("SELECT * FROM t").fetchall() == [(1,)]
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("INSERT INTO t VALUES (2)")
        other.execute("INSERT INTO t VALUES (2)")
    finally:
        other.close()
        os.close(fd)


def test_wal_writer_fences_only_when_a_reader_is_inside_a_transaction(
    wal_db: tuple[Path, sqlite3.Connection],
) -> None:
    db, _ = wal_db
    shm = os.open(f"{db}-shm", os.O_RDWR)
    reader = sqlite3.connect(db, timeout=0, isolation_level=None)
    calls: list[str] = []

    def fence() -> object:
        calls.append("fence")
        return lambda: calls.append("undo")

    try:
        with wal_writer(shm, timeout=1, fence=fence):  # type: ignore[arg-type]
            pass
        assert calls == []
        reader.execute("BEGIN")
        reader.execute("SELECT * FROM t").fetchall()  # holds a READ lock
        with pytest.raises(LockTimeout, match="READ"):
            with wal_writer(shm, timeout=0.05, fence=fence):  # type: ignore[arg-type]
                pass
        assert calls == ["fence", "undo"]
        reader.execute("COMMIT")
    finally:
        reader.close()
        os.close(shm)


def test_wal_writer_fences_come_down_in_time_for_spinning_readers(
    wal_db: tuple[Path, sqlite3.Connection], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reader that cannot start spins (no busy handler) and fails with SQLITE_PROTOCOL after ~10 s:
    fences are lifted now and then, so a long read transaction never causes that."""
    import threading

    import fs.locks

    monkeypatch.setattr(fs.locks, "FENCE_LIMIT", 0.2)
    db, _ = wal_db
    shm = os.open(f"{db}-shm", os.O_RDWR)
    long_reader = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    fences: list[float] = []
    try:
        long_reader.execute("BEGIN")
        long_reader.execute("SELECT * FROM t").fetchall()

        def fence() -> object:
            fences.append(time.monotonic())
            return lambda: None

        done = threading.Event()

        def end_long_read() -> None:
            time.sleep(1.0)
            long_reader.execute("COMMIT")
            done.set()

        ender = threading.Thread(target=end_long_read)
        ender.start()
        with wal_writer(shm, timeout=5, fence=fence):  # type: ignore[arg-type]
            assert done.is_set()
        ender.join()
        assert len(fences) >= 3  # raised again and again, never longer than FENCE_LIMIT
    finally:
        long_reader.close()
        os.close(shm)


def test_a_reader_waits_for_the_wal_writer(wal_db: tuple[Path, sqlite3.Connection]) -> None:
    import threading

    db, _ = wal_db
    shm = os.open(f"{db}-shm", os.O_RDWR)
    reader = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    result: list[object] = []
    try:
        with wal_writer(shm, timeout=1):
            thread = threading.Thread(target=lambda: result.append(reader.execute("SELECT * FROM t").fetchall()))
            thread.start()
            thread.join(0.3)
            assert result == []  # still retrying
        thread.join(10)
        assert result == [[(1,)]]
    finally:
        reader.close()
        os.close(shm)


def test_wal_reader_blocks_commits_not_reads(wal_db: tuple[Path, sqlite3.Connection]) -> None:
    db, _ = wal_db
    fd = os.open(db, os.O_RDONLY)
    shm = os.open(f"{db}-shm", os.O_RDWR)
    other = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        with wal_reader(fd, shm, timeout=1):
            assert other.execute("SELECT * FROM t").fetchall() == [(1,)]
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("INSERT INTO t VALUES (2)")
        other.execute("INSERT INTO t VALUES (2)")
    finally:
        other.close()
        os.close(shm)
        os.close(fd)
