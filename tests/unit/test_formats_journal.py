"""Rollback journal format, checked against journals SQLite really writes.

An apsw VFS records SQLite's writes to the `-journal` file (plain local disk).
Replaying them into an in-memory copy of the file gives the journal exactly as
it stood at each commit point (unlink, truncate to 0, or PERSIST's zeroed
header); parsing it must give back the pages as they were before the
transaction.
"""

from __future__ import annotations

import itertools
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path

import apsw
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fs.formats import FormatError, lock_page
from fs.formats.journal import (
    JOURNAL_MAGIC,
    NREC_TO_EOF,
    Journal,
    JournalHeader,
    JournalState,
    classify_journal,
    iter_journal_records,
    journal_checksum,
    parse_journal,
    parse_journal_header,
)

_vfs_names = itertools.count()


class _File(apsw.VFSFile):
    def __init__(self, vfs: _VFS, name: object, flags: list[int]) -> None:
        self._vfs = vfs
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        self._is_journal = isinstance(path, str) and path.endswith("-journal")
        super().__init__("", name, flags)

    def xWrite(self, data: bytes, offset: int) -> None:
        if self._is_journal:
            self._vfs.events.append(("write", offset, bytes(data)))
        super().xWrite(data, offset)

    def xTruncate(self, size: int) -> None:
        if self._is_journal:
            self._vfs.events.append(("truncate", size))
        super().xTruncate(size)


class _VFS(apsw.VFS):
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.name = f"jrec{next(_vfs_names)}"
        super().__init__(self.name, "")

    def xOpen(self, name: object, flags: list[int]) -> _File:
        return _File(self, name, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        if filename.endswith("-journal"):
            self.events.append(("delete",))
        super().xDelete(filename, syncdir)


@dataclass
class Commit:
    journal: bytes  # the journal file at the commit point
    before: bytes  # database image before the transaction
    after: bytes  # and after it


def record_commits(
    tmp: Path, page_size: int, mode: str, steps: list[str], pragmas: str = ""
) -> list[Commit]:
    """Run each step (one transaction) and return the journal as it was at each commit point."""
    db = tmp / "j.db"
    with sqlite3.connect(db, isolation_level=None) as con:
        con.execute(f"PRAGMA page_size={page_size}")
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        con.execute("INSERT INTO t(v) VALUES (randomblob(3000))")
    con.close()
    vfs = _VFS()
    images = []
    try:
        conn = apsw.Connection(str(db), vfs=vfs.name)
        conn.execute(f"PRAGMA journal_mode={mode};{pragmas}").fetchall()
        images.append(bytes(conn.serialize("main")))
        for sql in steps:
            vfs.events.append(("step",))
            conn.execute(sql).fetchall()
            images.append(bytes(conn.serialize("main")))
        conn.close()
    finally:
        vfs.unregister()
    commits: list[Commit] = []
    model = bytearray()
    step = -1
    for event in vfs.events:
        if event[0] == "step":
            step += 1
            continue
        hot = classify_journal(model) is JournalState.HOT
        ends = (
            event[0] == "delete"
            or (event[0] == "truncate" and event[1] == 0)
            or (event[0] == "write" and event[1] == 0 and not any(event[2][:8]))
        )
        if hot and ends:
            commits.append(Commit(bytes(model), images[step], images[step + 1]))
        if event[0] == "write":
            _, off, data = event
            model[len(model) : off] = bytes(max(0, off - len(model)))
            model[off : off + len(data)] = data
        elif event[0] == "truncate":
            del model[event[1] :]
        else:
            model.clear()
    return commits


def check_commit(commit: Commit, page_size: int) -> Journal:
    journal = parse_journal(commit.journal)
    assert journal.page_size == page_size
    assert journal.initial_page_count * page_size == len(commit.before)
    original = journal.original_pages()
    for pgno, page in original.items():
        assert page == commit.before[(pgno - 1) * page_size : pgno * page_size], pgno
    limit = min(len(commit.before), len(commit.after)) // page_size
    changed = {
        p
        for p in range(1, limit + 1)
        if commit.before[(p - 1) * page_size : p * page_size]
        != commit.after[(p - 1) * page_size : p * page_size]
    }
    # SQLite does not journal freelist leaves it reuses: their content is garbage.
    assert changed <= set(original) | free_leaves(commit.before, page_size)
    return journal


def free_leaves(image: bytes, page_size: int) -> set[int]:
    """Leaf pages of the freelist of a database image."""
    leaves: set[int] = set()
    (trunk,) = struct.unpack_from(">I", image, 32)
    while trunk:
        base = (trunk - 1) * page_size
        trunk, count = struct.unpack_from(">II", image, base)
        leaves |= set(struct.unpack_from(f">{count}I", image, base + 8))
    return leaves


STEPS = [
    "INSERT INTO t(v) VALUES (randomblob(100))",
    "UPDATE t SET v = randomblob(2000)",
    "BEGIN; INSERT INTO t(v) VALUES (randomblob(5000)); DELETE FROM t WHERE id = 1; COMMIT",
    "DELETE FROM t",
]


@pytest.mark.parametrize("mode", ["DELETE", "TRUNCATE", "PERSIST"])
@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_real_journals_give_back_original_pages(tmp_path: Path, mode: str, page_size: int) -> None:
    commits = record_commits(tmp_path, page_size, mode, STEPS)
    assert len(commits) == len(STEPS)
    for commit in commits:
        journal = check_commit(commit, page_size)
        assert journal.headers[0].record_count not in (0, NREC_TO_EOF)


def test_spilling_transaction_writes_several_segments(tmp_path: Path) -> None:
    big = (
        "BEGIN;"
        " WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300)"
        " INSERT INTO t(v) SELECT randomblob(900) FROM s;"
        " UPDATE t SET v = randomblob(800) WHERE id % 2 = 0;"
        " DELETE FROM t WHERE id % 5 = 0;"
        "COMMIT"
    )
    # A first transaction gives the second one many pages to journal.
    commits = record_commits(tmp_path, 1024, "DELETE", [big, big], pragmas="PRAGMA cache_size=10;")
    journal = check_commit(commits[1], 1024)
    assert len(journal.headers) > 1
    last = journal.records[-1]
    assert last.offset + 1024 + 8 == len(commits[1].journal), "replay reached the end"
    for header in journal.headers:
        assert header.offset % header.sector_size == 0


def test_synchronous_off_counts_records_to_end_of_file(tmp_path: Path) -> None:
    commits = record_commits(tmp_path, 4096, "DELETE", STEPS[:2], pragmas="PRAGMA synchronous=OFF;")
    for commit in commits:
        journal = check_commit(commit, 4096)
        assert journal.headers[0].record_count == NREC_TO_EOF


def test_persist_mode_state_sequence(tmp_path: Path) -> None:
    """PERSIST: header written zeroed, made hot by the 12-byte sync write, zeroed to commit."""
    db = tmp_path / "p.db"
    sqlite3.connect(db).close()
    vfs = _VFS()
    try:
        conn = apsw.Connection(str(db), vfs=vfs.name)
        conn.execute("PRAGMA journal_mode=PERSIST").fetchall()
        conn.execute("CREATE TABLE t(x)").fetchall()
        conn.execute("INSERT INTO t VALUES (1)").fetchall()
        conn.close()
    finally:
        vfs.unregister()
    model = bytearray()
    states = []
    for event in vfs.events:
        assert event[0] == "write"
        _, off, data = event
        model[off : off + len(data)] = data
        states.append(classify_journal(model))
    transitions = [s for s, t in itertools.pairwise([JournalState.EMPTY, *states]) if s != t]
    assert transitions.count(JournalState.HOT) == 2  # HOT -> ZEROED once per commit
    zeroing = [e for e in vfs.events if e[1] == 0 and not any(e[2])]
    assert {len(e[2]) for e in zeroing} >= {28}


def _journal(
    page_size: int, sector: int, records: list[tuple[int, bytes]], nonce: int = 77
) -> bytes:
    head = JOURNAL_MAGIC + struct.pack(">IIIII", len(records), nonce, 9, sector, page_size)
    out = bytearray(head.ljust(sector, b"\0"))
    for pgno, page in records:
        out += struct.pack(">I", pgno) + page + struct.pack(">I", journal_checksum(nonce, page))
    return bytes(out)


def test_checksum_samples_every_200th_byte_from_the_end() -> None:
    page = bytearray(1024)
    for i in (824, 624, 424, 224, 24):
        page[i] = 1
    page[0] = page[1023] = 200  # not sampled
    assert journal_checksum(5, page) == 10
    assert journal_checksum(0xFFFFFFFF, page) == 4


def test_parse_stops_at_the_first_bad_record() -> None:
    ps = 512
    pages = [(n, bytes([n]) * ps) for n in (1, 2, 3)]
    data = bytearray(_journal(ps, 512, pages))
    assert [r.pgno for r in parse_journal(bytes(data)).records] == [1, 2, 3]
    # Corrupt record 2's page: records 2 and 3 are dropped.
    data[512 + (ps + 8) + 4 + 312] ^= 0xFF  # a sampled byte (512 - 200)
    assert [r.pgno for r in parse_journal(bytes(data)).records] == [1]
    # A short last record is ignored.
    good = _journal(ps, 512, pages)
    assert [r.pgno for r in parse_journal(good[:-1]).records] == [1, 2]


@pytest.mark.parametrize("pgno", [0, lock_page(512)])
def test_reserved_page_numbers_end_replay(pgno: int) -> None:
    data = _journal(512, 512, [(1, b"a" * 512), (pgno, b"b" * 512), (2, b"c" * 512)])
    assert [r.pgno for r in parse_journal(data).records] == [1]


def test_original_pages_keeps_first_copy_within_initial_size() -> None:
    data = _journal(512, 512, [(3, b"a" * 512), (3, b"b" * 512), (12, b"c" * 512)])
    journal = parse_journal(data)
    assert journal.initial_page_count == 9
    assert journal.original_pages() == {3: b"a" * 512}


def test_header_errors() -> None:
    good = _journal(512, 512, [])
    assert parse_journal_header(good) == JournalHeader(0, 0, 77, 9, 512, 512)
    with pytest.raises(FormatError, match="28 bytes"):
        parse_journal_header(good[:27])
    with pytest.raises(FormatError, match="magic"):
        parse_journal_header(bytes(28))
    bad_page = good[:24] + struct.pack(">I", 1000) + good[28:]
    with pytest.raises(FormatError, match="page size"):
        parse_journal_header(bad_page)
    bad_sector = good[:20] + struct.pack(">I", 16) + good[24:]
    with pytest.raises(FormatError, match="sector size"):
        parse_journal_header(bad_sector)
    with pytest.raises(FormatError, match="sector"):
        parse_journal(good[:100])  # header does not fill its sector


def test_classify() -> None:
    assert classify_journal(b"") is JournalState.EMPTY
    assert classify_journal(JOURNAL_MAGIC[:7]) is JournalState.EMPTY
    assert classify_journal(bytes(28)) is JournalState.ZEROED
    assert classify_journal(JOURNAL_MAGIC + bytes(20)) is JournalState.HOT
    assert classify_journal(b"garbage!") is JournalState.INVALID


@given(st.binary(max_size=2000))
def test_garbage_raises_only_format_error(data: bytes) -> None:
    for candidate in (data, JOURNAL_MAGIC + data):
        try:
            list(iter_journal_records(candidate))
            parse_journal(candidate)
        except FormatError:
            pass
