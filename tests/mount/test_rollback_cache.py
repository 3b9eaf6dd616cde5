"""A ROLLBACK through the mount leaves the file, `-pos` and every reader right.

Found by the capture property test: after these steps (DELETE mode, default
cache size) the rolling-back connection's `serialize()` differed from the
database file on page 14. It is SQLite's own behaviour, the same on a plain
directory: page 14 is a freelist leaf the aborted INSERTs reused. SQLite
fetches such a page with PAGER_GET_NOCONTENT (zero-filled, neither read nor
journaled, its content being meaningless), so ROLLBACK restores every
journaled page (read back through the mount byte for byte as written) but
leaves the aborted bytes of the leaf in the connection's cache, while the leaf
is back on the freelist. No query can see them; the file, `-pos` and any
other connection hold the original.

This test pins that down: the mount behaves exactly like a plain directory,
the connection's view differs from the file only on freelist leaves, its rows
are the rows before the transaction, and the next commit is captured right.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from replication.checksum import database_checksum
from tests.conftest import MountFactory
from tests.mount.test_capture_property import (
    CreateTable,
    InsertBlob,
    InsertText,
    JournalMode,
    RolledBack,
    Spill,
    Workload,
    committed_content,
    differing_pages,
    freelist_leaves,
    page_size_of,
    read_position,
)

# The steps hypothesis found; the last one is BEGIN; 4 INSERTs; ROLLBACK.
STEPS = [JournalMode("delete"), CreateTable(), Spill(0, 2), InsertBlob(0, 1, 5904, 0),
         InsertText(0, 40), InsertText(0, 40)]
ROLLBACK = RolledBack(0, 4)
ROWS = "SELECT id, k, s, b FROM t1 ORDER BY id"


def rows_of(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(ROWS).fetchall()
    finally:
        conn.close()


def cache_only_pages(run: Workload, file_bytes: bytes) -> list[int]:
    """Pages the workload's connection sees differently from the file; they must be freelist leaves."""
    own = run.conn.serialize()
    page_size = page_size_of(file_bytes)
    differing = differing_pages(own, file_bytes, page_size)
    assert isinstance(differing, list), f"the connection sees {differing}"
    leaves = freelist_leaves(file_bytes, page_size)
    assert set(differing) <= leaves, f"pages {differing} differ and are not freelist leaves {sorted(leaves)}"
    return differing


def test_plain_directory_rollback_leaves_a_freelist_leaf_in_the_cache(tmp_path: Path) -> None:
    """SQLite's own behaviour, without FUSE: the reference for the test below."""
    path = tmp_path / "p.db"
    run = Workload(path)
    try:
        for step in STEPS:
            run.run(step)
        before = path.read_bytes()
        run.run(ROLLBACK)
        assert path.read_bytes() == before
        differing = cache_only_pages(run, before)
        assert differing, "the steps no longer leave a reused freelist leaf in the cache (SQLite changed?)"
    finally:
        run.close()


@pytest.mark.fuse
def test_rollback_through_the_mount_matches_the_file(mounts: MountFactory, tmp_path: Path) -> None:
    plain = Workload(tmp_path / "plain.db")
    node = mounts.start()
    db = "p.db"
    path = node.mountpoint / db
    data_file = node.data_dir / db
    run = Workload(path)
    try:
        for step in STEPS:
            plain.run(step)
            run.run(step)
        position = read_position(node.mountpoint, db)
        rows = run.q(ROWS)
        file_before = data_file.read_bytes()

        plain.run(ROLLBACK)
        assert run.run(ROLLBACK) == 0

        # The file, -pos and a new connection: exactly as before the transaction.
        file_after = data_file.read_bytes()
        assert file_after == file_before
        assert read_position(node.mountpoint, db) == position
        assert database_checksum(file_after, page_size_of(file_after)) == position[1]
        assert committed_content(path) == file_after
        assert rows_of(path) == rows
        # The rolling-back connection: the same rows; its cache differs from
        # the file only on freelist leaves, the very pages a plain directory gives.
        assert run.q(ROWS) == rows
        assert not run.q("SELECT 1 FROM t1 WHERE s LIKE 'rolled back%'")
        assert run.q("PRAGMA integrity_check") == [("ok",)]
        assert cache_only_pages(run, file_after) == cache_only_pages(plain, (tmp_path / "plain.db").read_bytes())

        # The next commit of that connection is captured from the file, right.
        run.q("INSERT INTO t1(k, s) VALUES (1, 'after the rollback')")
        txid, checksum = read_position(node.mountpoint, db)
        assert txid == position[0] + 1
        file_next = data_file.read_bytes()
        assert database_checksum(file_next, page_size_of(file_next)) == checksum
        assert committed_content(path) == file_next
        assert rows_of(path) == rows + [(rows[-1][0] + 1, 1, "after the rollback", None)]
        cache_only_pages(run, file_next)
    finally:
        run.close()
        plain.close()
