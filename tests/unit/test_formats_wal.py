"""WAL format and WalTracker, checked against SQLite's real write sequence.

The realistic tests record every xWrite/xTruncate/xDelete SQLite issues on the
`-wal` file through an apsw VFS (plain local disk), then replay them into a
WalTracker. After each step of a workload, applying the emitted commits to the
database image from before the workload must give exactly the image SQLite
itself serialises at that moment — so each commit is found no later than the
write that made it durable, with the right pages, and exactly once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import sqlite3
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fs.formats import FormatError
from fs.formats.wal import (
    FRAME_HEADER_SIZE,
    WAL_HEADER_SIZE,
    WAL_MAGIC_BE,
    WAL_MAGIC_LE,
    WalCommit,
    WalHeader,
    WalTracker,
    _advance_matrix,
    build_wal_header,
    encode_frame_header,
    frame_offset,
    parse_frame_header,
    parse_wal_header,
    scan_wal,
    wal_checksum,
)

# --- recording SQLite's writes --------------------------------------------------------------------

Event = tuple  # ("write", offset, data) | ("truncate", size) | ("delete",) | ("step", i)
_vfs_names = itertools.count()


class _RecordingFile(apsw.VFSFile):
    def __init__(self, vfs: _RecordingVFS, name: object, flags: list[int]) -> None:
        self._vfs = vfs
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        self._is_wal = isinstance(path, str) and path.endswith("-wal")
        super().__init__("", name, flags)

    def xWrite(self, data: bytes, offset: int) -> None:
        if self._is_wal:
            self._vfs.events.append(("write", offset, bytes(data)))
        super().xWrite(data, offset)

    def xTruncate(self, size: int) -> None:
        if self._is_wal:
            self._vfs.events.append(("truncate", size))
        super().xTruncate(size)

    def xDeviceCharacteristics(self) -> int:
        chars = super().xDeviceCharacteristics()
        if not self._vfs.powersafe_overwrite:
            chars &= ~apsw.mapping_device_characteristics["SQLITE_IOCAP_POWERSAFE_OVERWRITE"]
        return chars


class _RecordingVFS(apsw.VFS):
    def __init__(self, powersafe_overwrite: bool) -> None:
        self.events: list[Event] = []
        self.powersafe_overwrite = powersafe_overwrite
        self.name = f"walrec{next(_vfs_names)}"
        super().__init__(self.name, "")

    def xOpen(self, name: object, flags: list[int]) -> _RecordingFile:
        return _RecordingFile(self, name, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        if filename.endswith("-wal"):
            self.events.append(("delete",))
        super().xDelete(filename, syncdir)


Step = tuple[str, int]  # SQL, number of transactions it commits


@dataclass
class Session:
    page_size: int
    baseline: bytes  # database file before the workload (WAL empty)
    events: list[Event]
    snapshots: list[bytes]  # SQLite's serialised image after each step
    expected: list[int]  # commits per step
    final: bytes  # database file after the last connection closed


def record_session(
    tmp: Path,
    page_size: int,
    steps: Sequence[Step],
    *,
    setup: str = "",
    pragmas: str = "",
    powersafe_overwrite: bool = True,
) -> Session:
    db = tmp / f"db{page_size}.sqlite"
    with sqlite3.connect(db, isolation_level=None) as con:
        con.execute(f"PRAGMA page_size={page_size}")
        con.execute("PRAGMA journal_mode=wal")
        con.executescript("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);" + setup)
    con.close()
    assert not os.path.exists(f"{db}-wal")
    baseline = db.read_bytes()
    vfs = _RecordingVFS(powersafe_overwrite)
    try:
        conn = apsw.Connection(str(db), vfs=vfs.name)
        # apsw runs multi-statement SQL lazily: fetchall() runs all of it.
        conn.execute("PRAGMA wal_autocheckpoint=0;" + pragmas).fetchall()
        assert conn.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
        snapshots = []
        for i, (sql, _n) in enumerate(steps):
            conn.execute(sql).fetchall()
            vfs.events.append(("step", i))
            snapshots.append(bytes(conn.serialize("main")))
        conn.close()
    finally:
        vfs.unregister()
    return Session(
        page_size=page_size,
        baseline=baseline,
        events=vfs.events,
        snapshots=snapshots,
        expected=[n for _sql, n in steps],
        final=db.read_bytes(),
    )


def apply_commit(image: bytearray, commit: WalCommit) -> None:
    ps = commit.page_size
    size = commit.commit_size * ps
    del image[size:]
    image.extend(bytes(size - len(image)))
    for pgno, page in commit.pages.items():
        image[(pgno - 1) * ps : pgno * ps] = page


def feed(tracker: WalTracker, event: Event) -> list[WalCommit]:
    kind = event[0]
    if kind == "write":
        return tracker.write(event[1], event[2])
    if kind == "truncate":
        tracker.truncate(event[1])
    elif kind == "delete":
        tracker.reset()
    return []


def check_replay(session: Session, events: Sequence[Event] | None = None) -> list[WalCommit]:
    """Replay into a tracker; check the image after every step and the commit counts."""
    tracker = WalTracker()
    image = bytearray(session.baseline)
    commits: list[WalCommit] = []
    since_step = 0
    for event in session.events if events is None else events:
        if event[0] == "step":
            i = event[1]
            assert since_step == session.expected[i], f"step {i}: {since_step} commits"
            assert bytes(image) == session.snapshots[i], f"image differs after step {i}"
            since_step = 0
            continue
        for commit in feed(tracker, event):
            apply_commit(image, commit)
            commits.append(commit)
            since_step += 1
    assert bytes(image) == session.final
    return commits


def wal_writes(session: Session) -> list[tuple[int, bytes]]:
    return [(e[1], e[2]) for e in session.events if e[0] == "write"]


def blob(n: int, seed: int) -> str:
    return f"randomblob({n}) || x'{seed:08x}'"


def insert_rows(n: int, expr: str) -> str:
    """An INSERT of `n` rows whose v is `expr` (apsw's SQLite has no generate_series)."""
    return (
        f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})"
        f" INSERT INTO t(v) SELECT {expr} FROM s"
    )


BASIC_STEPS: list[Step] = [
    (f"INSERT INTO t(v) VALUES ({blob(100, 1)})", 1),
    (insert_rows(40, blob(300, 2)), 1),
    ("UPDATE t SET v = zeroblob(50) WHERE id % 3 = 0", 1),
    ("BEGIN; DELETE FROM t WHERE id > 20; CREATE INDEX ti ON t(v); COMMIT", 1),
    ("SELECT count(*) FROM t", 0),
    ("CREATE TABLE u(x); INSERT INTO u VALUES (1); DROP TABLE u", 3),
    ("VACUUM", 1),
]


# --- checksum and headers -------------------------------------------------------------------------


def _reference_checksum(data: bytes, big_endian: bool, s0: int = 0, s1: int = 0) -> tuple[int, int]:
    fmt = ">" if big_endian else "<"
    words = struct.unpack(f"{fmt}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


@given(
    data=st.integers(0, 80).flatmap(lambda n: st.binary(min_size=8 * n, max_size=8 * n)),
    big_endian=st.booleans(),
    s0=st.integers(0, 2**32 - 1),
    s1=st.integers(0, 2**32 - 1),
)
def test_checksum_matches_reference(data: bytes, big_endian: bool, s0: int, s1: int) -> None:
    assert wal_checksum(data, big_endian, s0, s1) == _reference_checksum(data, big_endian, s0, s1)


@given(
    page=st.binary(min_size=512, max_size=512),
    s0=st.integers(0, 2**32 - 1),
    s1=st.integers(0, 2**32 - 1),
)
def test_checksum_is_linear_in_initial_state(page: bytes, s0: int, s1: int) -> None:
    a, b, c, d = _advance_matrix(len(page) // 8)
    p0, p1 = wal_checksum(page, False)
    expected = ((a * s0 + b * s1 + p0) & 0xFFFFFFFF, (c * s0 + d * s1 + p1) & 0xFFFFFFFF)
    assert wal_checksum(page, False, s0, s1) == expected


def test_checksum_rejects_odd_length() -> None:
    with pytest.raises(FormatError):
        wal_checksum(b"1234567", False)


def test_real_wal_header_and_frames_parse(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=wal")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t(x)")
    con.execute("INSERT INTO t VALUES (1)")
    data = Path(f"{db}-wal").read_bytes()
    con.close()
    hdr = parse_wal_header(data)
    assert hdr.magic in (WAL_MAGIC_LE, WAL_MAGIC_BE)
    assert hdr.page_size == 4096
    assert hdr.to_bytes() == data[:32]
    first = parse_frame_header(data, 32)
    assert first.salt1 == hdr.salt1 and first.salt2 == hdr.salt2
    scan = scan_wal(data)
    assert [c.commit_size for c in scan.commits] == [2, 2]
    assert scan.mx_frame == (len(data) - 32) // hdr.frame_size


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:31], "needs 32 bytes"),
        (lambda b: b"\0\0\0\0" + b[4:], "magic"),
        (lambda b: b[:4] + struct.pack(">I", 3007001) + b[8:], "version"),
        (lambda b: b[:8] + struct.pack(">I", 1000) + b[12:], "page size"),
        (lambda b: b[:24] + bytes(8), "checksum"),
    ],
)
def test_bad_wal_headers(mutate: Callable[[bytes], bytes], message: str) -> None:
    good = build_wal_header(4096, 3, 7, 9).to_bytes()
    assert parse_wal_header(good).checkpoint_seq == 3
    with pytest.raises(FormatError, match=message):
        parse_wal_header(mutate(good))


@given(st.binary(max_size=64))
def test_parsers_raise_only_format_error(data: bytes) -> None:
    for parse in (parse_wal_header, parse_frame_header):
        with contextlib.suppress(FormatError):
            parse(data)
    scan_wal(data)


def test_frame_offset() -> None:
    assert frame_offset(1, 4096) == 32
    assert frame_offset(3, 512) == 32 + 2 * 536
    with pytest.raises(ValueError):
        frame_offset(0, 4096)


# --- real SQLite write sequences ------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_tracker_follows_sqlite(tmp_path: Path, page_size: int) -> None:
    session = record_session(tmp_path, page_size, BASIC_STEPS)
    commits = check_replay(session)
    assert len(commits) == sum(session.expected)
    # SQLite wrote each frame as a 24-byte header then a page-sized write.
    sizes = {len(d) for _o, d in wal_writes(session)}
    assert sizes <= {32, 24, page_size}


def test_aborted_transaction_leaves_frames_that_never_commit(tmp_path: Path) -> None:
    steps: list[Step] = [
        (f"INSERT INTO t(v) VALUES ({blob(100, 1)})", 1),
        # Tiny cache: the big insert spills uncommitted frames into the WAL.
        (
            f"BEGIN; {insert_rows(200, 'randomblob(900)')}; ROLLBACK",
            0,
        ),
        (f"INSERT INTO t(v) VALUES ({blob(100, 2)})", 1),
        (f"INSERT INTO t(v) VALUES ({blob(100, 3)})", 1),
    ]
    session = record_session(tmp_path, 4096, steps, pragmas="PRAGMA cache_size=5;")
    step_at = [i for i, e in enumerate(session.events) if e[0] == "step"]
    aborted = [e for e in session.events[step_at[0] : step_at[1]] if e[0] == "write"]
    assert len(aborted) > 20, "the aborted transaction should have spilled frames"
    check_replay(session)


def test_rewritten_frames_commit_at_checksum_rewrite(tmp_path: Path) -> None:
    steps: list[Step] = [
        (
            f"BEGIN; {insert_rows(100, 'randomblob(900)')};"
            " UPDATE t SET v = randomblob(800) WHERE id < 30;"
            f" {insert_rows(50, 'randomblob(900)')};"
            " UPDATE t SET v = randomblob(700) WHERE id < 60;"
            "COMMIT",
            1,
        ),
        (f"INSERT INTO t(v) VALUES ({blob(10, 4)})", 1),
    ]
    session = record_session(tmp_path, 4096, steps, pragmas="PRAGMA cache_size=5;")
    writes = wal_writes(session)
    fsize = 4096 + FRAME_HEADER_SIZE
    # Evidence that SQLite took the walRewriteChecksums path: a page written
    # into an earlier frame, and frame headers rewritten after the commit frame.
    high = 0
    rewrites = 0
    for off, data in writes:
        if off >= WAL_HEADER_SIZE:
            frame = (off - WAL_HEADER_SIZE) // fsize + 1
            rewrites += frame < high and len(data) == 4096
            high = max(high, frame)
    assert rewrites, "expected SQLite to overwrite a page of an uncommitted frame"
    tracker = WalTracker()
    emitted_at = [i for i, (off, data) in enumerate(writes) if tracker.write(off, data)]
    assert len(emitted_at) == 2
    first_commit = emitted_at[0]
    assert len(writes[first_commit][1]) == FRAME_HEADER_SIZE, "commit found at a header rewrite"
    check_replay(session)


def test_checkpoint_restart_truncate_and_size_limit(tmp_path: Path) -> None:
    steps: list[Step] = [
        (insert_rows(30, blob(500, 1)), 1),
        (f"INSERT INTO t(v) VALUES ({blob(100, 2)})", 1),
        ("PRAGMA wal_checkpoint(PASSIVE)", 0),
        # Restarts the log: new header at offset 0, stale frames beyond.
        (f"UPDATE t SET v = {blob(20, 3)} WHERE id = 1", 1),
        (f"UPDATE t SET v = {blob(20, 4)} WHERE id = 2", 1),
        ("PRAGMA wal_checkpoint(TRUNCATE)", 0),
        (f"INSERT INTO t(v) VALUES ({blob(100, 5)})", 1),
        ("PRAGMA wal_checkpoint(RESTART)", 0),
        ("PRAGMA journal_size_limit=8192", 0),
        (insert_rows(30, blob(500, 6)), 1),
        ("PRAGMA wal_checkpoint(PASSIVE)", 0),
        ("DELETE FROM t WHERE id > 10", 1),
    ]
    session = record_session(tmp_path, 4096, steps)
    headers = [WalHeader(*struct.unpack(">8I", d)) for o, d in wal_writes(session) if o == 0]
    assert len({h.salts for h in headers}) >= 3
    assert [h.checkpoint_seq for h in headers] == sorted(h.checkpoint_seq for h in headers)
    assert any(e[0] == "truncate" and e[1] == 0 for e in session.events)
    assert any(e[0] == "truncate" and e[1] > 0 for e in session.events)
    check_replay(session)


@pytest.mark.parametrize("page_size", [512, 4096])
def test_sector_padding_is_not_a_new_commit(tmp_path: Path, page_size: int) -> None:
    steps: list[Step] = [(f"INSERT INTO t(v) VALUES ({blob(100, i)})", 1) for i in range(6)] + [
        (insert_rows(20, blob(300, 9)), 1)
    ]
    session = record_session(
        tmp_path,
        page_size,
        steps,
        pragmas="PRAGMA synchronous=FULL;",
        powersafe_overwrite=False,
    )
    # Padding repeats commit frames: more commit frames than transactions.
    commit_headers = [
        data
        for _off, data in wal_writes(session)
        if len(data) == FRAME_HEADER_SIZE and struct.unpack_from(">I", data, 4)[0]
    ]
    assert len(commit_headers) > len(steps)
    check_replay(session)


_chunking: list[Session] = []


def _chunking_session(factory: pytest.TempPathFactory) -> Session:
    """Recorded once per run: hypothesis calls the test many times."""
    if not _chunking:
        steps = BASIC_STEPS[:4]
        _chunking.append(
            record_session(factory.mktemp("chunking"), 512, steps, pragmas="PRAGMA cache_size=5;")
        )
    return _chunking[0]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32))
def test_any_chunking_gives_the_same_commits(
    tmp_path_factory: pytest.TempPathFactory, seed: int
) -> None:
    session = _chunking_session(tmp_path_factory)
    rng = random.Random(seed)
    split: list[Event] = []
    for event in session.events:
        if event[0] != "write":
            split.append(event)
            continue
        _, off, data = event
        cuts = sorted(rng.sample(range(1, len(data)), min(3, len(data) - 1)))
        for lo, hi in itertools.pairwise([0, *cuts, len(data)]):
            split.append(("write", off + lo, data[lo:hi]))
    check_replay(session, split)


def test_from_wal_matches_incremental(tmp_path: Path) -> None:
    session = record_session(
        tmp_path,
        4096,
        [
            *BASIC_STEPS[:3],
            ("PRAGMA wal_checkpoint(PASSIVE)", 0),
            (f"UPDATE t SET v = {blob(20, 3)} WHERE id = 1", 1),
            (f"BEGIN; {insert_rows(80, 'randomblob(900)')}; ROLLBACK", 0),
        ],
        pragmas="PRAGMA cache_size=5;",
    )
    tracker = WalTracker()
    wal = bytearray()
    generation: list[WalCommit] = []
    for event in session.events:
        if event[0] == "write":
            _, off, data = event
            wal[len(wal) : off] = bytes(max(0, off - len(wal)))
            wal[off : off + len(data)] = data
            if off == 0:
                generation = []
        elif event[0] == "truncate":
            del wal[event[1] :]
        elif event[0] == "delete":
            wal.clear()
            generation = []
        generation += feed(tracker, event)
        if event[0] == "step":
            fresh, found = WalTracker.from_wal(bytes(wal))
            assert found == generation
            assert (fresh.header, fresh.mx_frame, fresh.checksum) == (
                tracker.header,
                tracker.mx_frame,
                tracker.checksum,
            )


# --- synthetic WALs: big-endian checksums, rewrites, bad input ------------------------------------


def _pages_of(image: bytes, page_size: int) -> dict[int, bytes]:
    return {i // page_size + 1: image[i : i + page_size] for i in range(0, len(image), page_size)}


def _synthetic_wal(
    header: WalHeader, txns: Sequence[tuple[dict[int, bytes], int]]
) -> tuple[list[tuple[int, bytes]], list[int]]:
    """SQLite-style writes (header, then frame header + page) and the index of each commit write."""
    writes = [(0, header.to_bytes())]
    s = header.checksum
    frame = 1
    commit_writes = []
    for pages, commit_size in txns:
        items = list(pages.items())
        for i, (pgno, page) in enumerate(items):
            last = i == len(items) - 1
            hdr, s = encode_frame_header(header, s, pgno, commit_size if last else 0, page)
            off = frame_offset(frame, header.page_size)
            writes += [(off, hdr), (off + FRAME_HEADER_SIZE, page)]
            frame += 1
        commit_writes.append(len(writes) - 1)
    return writes, commit_writes


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("page_size", [512, 65536])
def test_synthetic_wal_is_accepted_by_sqlite(
    tmp_path: Path, big_endian: bool, page_size: int
) -> None:
    # Real pages: the states of a database after each of a few transactions.
    src = tmp_path / "src.db"
    con = sqlite3.connect(src, isolation_level=None)
    con.execute(f"PRAGMA page_size={page_size}")
    con.execute("PRAGMA journal_mode=wal")
    con.execute("CREATE TABLE t(x)")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    baseline = src.read_bytes()
    images = []
    for i in range(3):
        con.execute("INSERT INTO t VALUES (?)", (os.urandom(700 * (i + 1)),))
        images.append(con.serialize())
    con.close()

    txns = []
    prev = _pages_of(baseline, page_size)
    for image in images:
        pages = _pages_of(image, page_size)
        changed = {p: d for p, d in pages.items() if prev.get(p) != d}
        txns.append((changed, len(pages)))
        prev = pages
    header = build_wal_header(page_size, 5, 0x01020304, 0xA0B0C0D0, big_endian=big_endian)
    assert header.big_endian is big_endian
    writes, commit_writes = _synthetic_wal(header, txns)

    tracker = WalTracker()
    image = bytearray(baseline)
    for i, (off, data) in enumerate(writes):
        commits = tracker.write(off, data)
        assert bool(commits) == (i in commit_writes)
        for commit in commits:
            apply_commit(image, commit)
    assert bytes(image) == images[-1]

    # SQLite itself recovers the synthetic WAL and sees the last state.
    dst = tmp_path / "dst.db"
    dst.write_bytes(baseline)
    wal = bytearray()
    for off, data in writes:
        wal[len(wal) : off] = bytes(max(0, off - len(wal)))
        wal[off : off + len(data)] = data
    Path(f"{dst}-wal").write_bytes(bytes(wal))
    con = sqlite3.connect(dst)
    assert con.serialize() == images[-1]
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()


def test_synthetic_rewrite_commits_only_when_chain_validates() -> None:
    ps = 512
    header = build_wal_header(ps, 0, 11, 22, big_endian=True)
    page = {n: bytes([n]) * ps for n in range(1, 6)}
    writes, _ = _synthetic_wal(header, [({1: page[1]}, 3)])
    tracker = WalTracker()
    assert len([c for off, d in writes for c in tracker.write(off, d)]) == 1
    base = header.checksum if tracker.mx_frame == 0 else tracker.checksum

    # Uncommitted frames 2, 3, 4 (pages 2, 3, 4), written with valid checksums.
    s = base
    for frame, pgno in ((2, 2), (3, 3), (4, 4)):
        hdr, s = encode_frame_header(header, s, pgno, 0, page[pgno])
        off = frame_offset(frame, ps)
        assert tracker.write(off, hdr) == [] and tracker.write(off + 24, page[pgno]) == []
    # Page 3 changes again: SQLite overwrites frame 3's page in place.
    new3 = b"\x33" * ps
    assert tracker.write(frame_offset(3, ps) + 24, new3) == []
    # Commit frame 5 (page 5), chained from frame 4's stale checksum.
    hdr5, _ = encode_frame_header(header, s, 5, 5, page[5])
    off5 = frame_offset(5, ps)
    assert tracker.write(off5, hdr5) == []
    assert tracker.write(off5 + 24, page[5]) == [], "chain is broken at frame 3"
    # walRewriteChecksums: headers of frames 3..5 rewritten from frame 2's checksum.
    s = tracker.checksum
    _, s = encode_frame_header(header, s, 2, 0, page[2])
    contents = {2: page[2], 3: new3, 4: page[4], 5: page[5]}
    result = []
    for frame, pgno, commit in ((3, 3, 0), (4, 4, 0), (5, 5, 5)):
        hdr, s = encode_frame_header(header, s, pgno, commit, contents[pgno])
        result.append(tracker.write(frame_offset(frame, ps), hdr))
    assert result[0] == [] and result[1] == []
    [commit] = result[2]
    assert commit.first_frame == 2 and commit.last_frame == 5
    assert dict(commit.pages) == contents
    assert commit.commit_size == 5 and tracker.pending_frames == 0
    # Writing the same headers again (committed frames) reports nothing.
    assert tracker.write(frame_offset(5, ps), hdr) == []


def test_page_beyond_commit_size_is_dropped() -> None:
    ps = 512
    header = build_wal_header(ps, 0, 1, 2)
    writes, _ = _synthetic_wal(header, [({7: b"7" * ps, 2: b"2" * ps}, 3)])
    tracker = WalTracker()
    [commit] = [c for off, d in writes for c in tracker.write(off, d)]
    assert dict(commit.pages) == {2: b"2" * ps}


def test_new_header_discards_pending_frames_and_identical_header_does_not() -> None:
    ps = 512
    header = build_wal_header(ps, 0, 1, 2)
    writes, _ = _synthetic_wal(header, [({1: b"a" * ps, 2: b"b" * ps}, 2)])
    tracker = WalTracker()
    for off, data in writes[:-1]:  # all but the commit page
        tracker.write(off, data)
    assert tracker.pending_frames == 2
    tracker.write(0, header.to_bytes())  # unchanged header: same generation
    assert tracker.pending_frames == 2
    assert tracker.write(*writes[-1])
    other = build_wal_header(ps, 1, 2, 3)
    tracker.write(0, other.to_bytes())
    assert tracker.header == other and tracker.mx_frame == 0 and tracker.pending_frames == 0


def test_frames_need_a_valid_header() -> None:
    ps = 512
    header = build_wal_header(ps, 0, 1, 2)
    writes, _ = _synthetic_wal(header, [({1: b"a" * ps}, 1)])
    tracker = WalTracker()
    assert [c for off, d in writes[1:] for c in tracker.write(off, d)] == []
    tracker.write(0, b"\xff" * 32)
    assert tracker.header is None
    assert [c for off, d in writes[1:] for c in tracker.write(off, d)] == []


def test_truncation_cutting_committed_frames_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    ps = 512
    header = build_wal_header(ps, 0, 1, 2)
    writes, _ = _synthetic_wal(header, [({1: b"a" * ps}, 1), ({1: b"b" * ps}, 1)])
    tracker = WalTracker()
    assert len([c for off, d in writes for c in tracker.write(off, d)]) == 2
    with caplog.at_level(logging.WARNING):
        tracker.truncate(frame_offset(2, ps))
    assert "cutting committed frames" in caplog.text
    assert tracker.header is None
    tracker.truncate(0)
    assert tracker.mx_frame == 0


def test_negative_offsets_are_rejected() -> None:
    with pytest.raises(ValueError):
        WalTracker().write(-1, b"x")
    with pytest.raises(ValueError):
        WalTracker().truncate(-1)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 5000), st.binary(max_size=600)), max_size=30))
def test_garbage_writes_never_crash(writes: list[tuple[int, bytes]]) -> None:
    tracker = WalTracker()
    tracker.write(0, build_wal_header(512, 0, 1, 2).to_bytes())
    for off, data in writes:
        assert tracker.write(off, data) == []
