"""Capture without FUSE: real SQLite files in a plain directory, writes replayed into `Capture`."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import pytest

from fs.capture import Capture, CaptureError
from fs.formats.wal import WalTracker


class Sink:
    """Records commits; fails the commits whose ordinal is in `fail`."""

    def __init__(self, fail: set[int]) -> None:
        self.fail = fail
        self.calls = 0
        self.commits: list[tuple[int, Mapping[int, bytes]]] = []
        self.synced = 0  # commits made when sync() was last called

    def commit(self, db: str, page_size: int, commit_size: int, pages: Mapping[int, bytes]) -> None:
        self.calls += 1
        if self.calls in self.fail:
            raise OSError(28, "No space left on device")
        self.commits.append((commit_size, dict(pages)))

    def drop(self, db: str) -> None: ...

    def sync(self, db: str) -> None:
        self.synced = len(self.commits)
    def rename(self, old: str, new: str) -> None: ...
    def position(self, db: str) -> tuple[int, int] | None:
        return None


def wal_writes(wal: bytes) -> list[tuple[int, bytes]]:
    """SQLite's write sequence for a WAL file: header, then frame header + page per frame."""
    page_size = int.from_bytes(wal[8:12], "big")
    writes = [(0, wal[:32])]
    off = 32
    while off + 24 + page_size <= len(wal):
        writes += [(off, wal[off : off + 24]), (off + 24, wal[off + 24 : off + 24 + page_size])]
        off += 24 + page_size
    return writes


def make_wal(path: Path, txns: int) -> bytes:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t(x)")
    for i in range(txns):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    wal = (path.parent / (path.name + "-wal")).read_bytes()
    conn.close()
    return wal


def test_failed_wal_commit_is_invalidated_and_capture_continues(tmp_path: Path) -> None:
    wal = make_wal(tmp_path / "src.db", 4)
    data = tmp_path / "data"
    data.mkdir()
    dir_fd = os.open(data, os.O_RDONLY)
    sink = Sink(fail={3})
    capture = Capture(sink, dir_fd)
    target = data / "x.db-wal"
    fd = os.open(target, os.O_RDWR | os.O_CREAT)
    try:
        failed_at: int | None = None
        for off, buf in wal_writes(wal):
            try:
                capture.wal_write("x.db", off, buf, lambda: os.pwrite(fd, buf, off))
            except CaptureError:
                failed_at = off
                break
        assert failed_at is not None and len(sink.commits) == 2
        # The file now ends its valid chain before the failed commit...
        _, found = WalTracker.from_wal(target.read_bytes())
        assert len(found) == 2
        # ...and SQLite, told the commit failed, writes the whole transaction
        # again from the frame after the last commit: captured this time.
        page_size = int.from_bytes(wal[8:12], "big")
        restart = 32 + found[-1].last_frame * (24 + page_size)
        for off, buf in wal_writes(wal):
            if off >= restart:
                capture.wal_write("x.db", off, buf, lambda: os.pwrite(fd, buf, off))
        # every commit of the original WAL is captured once, the failed one included
        assert len(sink.commits) == len(WalTracker.from_wal(wal)[1])
    finally:
        os.close(fd)
        os.close(dir_fd)


def test_write_without_journal_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "plain.db"
    conn = sqlite3.connect(src)
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.db").write_bytes(src.read_bytes())
    dir_fd = os.open(data, os.O_RDONLY)
    try:
        capture = Capture(Sink(set()), dir_fd)
        with pytest.raises(CaptureError):
            capture.database_write("x.db", 4096, bytes(4096))
    finally:
        os.close(dir_fd)


def test_wal_commits_make_a_log_sync_due_until_synced(tmp_path: Path) -> None:
    """A WAL commit is not synced with the WAL's fsync: the mount must sync before the frames can go."""
    wal = make_wal(tmp_path / "src.db", 3)
    data = tmp_path / "data"
    data.mkdir()
    dir_fd = os.open(data, os.O_RDONLY)
    fd = os.open(data / "x.db-wal", os.O_RDWR | os.O_CREAT)
    try:
        sink = Sink(set())
        capture = Capture(sink, dir_fd)
        assert not capture.log_sync_due("x.db")
        writes = iter(wal_writes(wal))
        while not sink.commits:  # up to the first commit
            assert not capture.log_sync_due("x.db")
            off, buf = next(writes)
            capture.wal_write("x.db", off, buf, lambda: os.pwrite(fd, buf, off))
        assert len(sink.commits) == 1 and capture.log_sync_due("x.db")
        capture.sync_pending()  # a directory fsync syncs rollback commits only
        assert sink.synced == 0 and capture.log_sync_due("x.db")
        capture.sync("x.db")
        assert sink.synced == 1 and not capture.log_sync_due("x.db")
        for off, buf in writes:
            capture.wal_write("x.db", off, buf, lambda: os.pwrite(fd, buf, off))
        assert len(sink.commits) > 1 and capture.log_sync_due("x.db")
    finally:
        os.close(fd)
        os.close(dir_fd)
