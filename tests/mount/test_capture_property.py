"""Property: random SQLite workloads through the real mount are captured exactly.

Hypothesis draws a workload (inserts of small rows and of 5-200 KB blobs that
need overflow pages, updates, range deletes, schema changes, VACUUM — also
with a new page size —, every `wal_checkpoint` mode, `journal_mode` switches
among delete/truncate/persist/wal, `incremental_vacuum`, explicit
transactions, rolled-back transactions, transactions bigger than the page
cache, `locking_mode=EXCLUSIVE`, writes from a second process), with an
optional page size and auto_vacuum setting on the empty database. Each
workload runs with the real sqlite3 module on a fresh database of one shared
mount. After every step the test records

- the `-pos` file, and checks that the step added exactly the number of
  TXIDs it should: one per transaction SQLite commits, none for a step that
  commits nothing (see `Workload.run` and the `do_*` methods for the facts);
- SQLite's committed content at that moment, byte for byte, taken with
  `Connection.serialize()` of a new connection (`committed_content`) — it
  reads every page through SQLite's pager, so in WAL mode it includes the
  frames not yet checkpointed, and it does not force a checkpoint (which
  would change what is tested); its `database_checksum` must be what `-pos`
  reports. The workload's own connection must see the same content, except
  on freelist leaf pages: their content means nothing to SQLite, and its
  page cache may legitimately hold bytes that never reach the file (see
  `freelist_leaves`).

At the end the database's log is replayed onto an empty image: TXIDs are
1..N, each pre-checksum is the previous post-checksum, after every TXID the
image has the logged post-checksum and passes `PRAGMA integrity_check`, the
image after the last TXID of every step equals the content recorded after
that step, and the final image equals the database file.
"""

from __future__ import annotations

import itertools
import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st

from pylitefs.process import MountProcess
from replication.checksum import database_checksum
from replication.log import TransactionLog
from replication.txn import Transaction

pytestmark = pytest.mark.fuse

PAGE_SIZES = (512, 1024, 4096, 8192, 65536)
JOURNAL_MODES = ("delete", "truncate", "persist", "wal")
CHECKPOINT_MODES = ("PASSIVE", "FULL", "RESTART", "TRUNCATE")
AUTO_VACUUM = ("NONE", "FULL", "INCREMENTAL")
_names = itertools.count(1)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def shared_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MountProcess]:
    """One mount for the whole module; every hypothesis example uses its own database."""
    root = tmp_path_factory.mktemp("capture-property")
    node = MountProcess(mountpoint=root / "mnt", data_dir=root / "data", log_path=root / "pylitefs.log")
    try:
        node.start()
        yield node
    finally:
        code = node.stop()
    assert code == 0, f"pylitefs exited with {code}:\n{node.log_text()[-5000:]}"


# --------------------------------------------------------------------- steps
# `t` picks a table by index modulo the tables that exist; `lo`/`hi` are
# percentages of the table's largest rowid.


@dataclass(frozen=True)
class Setup:
    page_size: int | None
    auto_vacuum: str | None


@dataclass(frozen=True)
class CreateTable:
    pass


@dataclass(frozen=True)
class DropTable:
    t: int


@dataclass(frozen=True)
class CreateIndex:
    t: int
    column: str


@dataclass(frozen=True)
class InsertText:
    t: int
    rows: int


@dataclass(frozen=True)
class InsertBlob:
    t: int
    rows: int
    size: int
    seed: int


@dataclass(frozen=True)
class Update:
    t: int
    lo: int
    hi: int
    blob_size: int | None  # also rewrite the blobs (overflow chains grow or shrink)


@dataclass(frozen=True)
class UpdateNothing:
    t: int


@dataclass(frozen=True)
class Delete:
    t: int
    lo: int
    hi: int


@dataclass(frozen=True)
class Batch:
    """BEGIN; several inserts and one delete; COMMIT."""

    t: int
    rows: int


@dataclass(frozen=True)
class RolledBack:
    """BEGIN; a few small inserts (not enough to spill the cache); ROLLBACK."""

    t: int
    rows: int


@dataclass(frozen=True)
class Spill:
    """One transaction bigger than a tiny page cache: pages reach the file (or WAL) before COMMIT."""

    t: int
    rows: int


@dataclass(frozen=True)
class Exclusive:
    """`locking_mode=EXCLUSIVE` for a few autocommit inserts, then NORMAL again (one TXID each)."""

    t: int
    rows: int


@dataclass(frozen=True)
class Select:
    t: int


@dataclass(frozen=True)
class Vacuum:
    page_size: int | None  # PRAGMA page_size first (has no effect in WAL mode)


@dataclass(frozen=True)
class Checkpoint:
    mode: str


@dataclass(frozen=True)
class JournalMode:
    mode: str


@dataclass(frozen=True)
class IncrementalVacuum:
    pages: int  # 0: all free pages


@dataclass(frozen=True)
class OtherProcess:
    """A second connection, in another process, inserts rows in one transaction."""

    t: int
    rows: int
    size: int


Step = (CreateTable | DropTable | CreateIndex | InsertText | InsertBlob | Update | UpdateNothing
        | Delete | Batch | RolledBack | Spill | Exclusive | Select | Vacuum | Checkpoint | JournalMode
        | IncrementalVacuum | OtherProcess)

_t = st.integers(0, 7)
_pct = st.integers(0, 100)
_blob = st.integers(5 * 1024, 200 * 1024)

steps = st.one_of(
    st.builds(CreateTable),
    st.builds(DropTable, _t),
    st.builds(CreateIndex, _t, st.sampled_from(["k", "s", "k, s"])),
    st.builds(InsertText, _t, st.integers(1, 40)),
    st.builds(InsertBlob, _t, st.integers(1, 3), _blob, st.integers(0, 2**32)),
    st.builds(Update, _t, _pct, _pct, st.none() | st.integers(0, 100 * 1024)),
    st.builds(UpdateNothing, _t),
    st.builds(Delete, _t, _pct, _pct),
    st.builds(Batch, _t, st.integers(1, 20)),
    st.builds(RolledBack, _t, st.integers(1, 5)),
    st.builds(Spill, _t, st.integers(1, 6)),
    st.builds(Exclusive, _t, st.integers(1, 4)),
    st.builds(Select, _t),
    st.builds(Vacuum, st.none() | st.sampled_from(PAGE_SIZES)),
    st.builds(Checkpoint, st.sampled_from(CHECKPOINT_MODES)),
    st.builds(JournalMode, st.sampled_from(JOURNAL_MODES)),
    st.builds(IncrementalVacuum, st.integers(0, 20)),
    st.builds(OtherProcess, _t, st.integers(1, 10), st.integers(0, 50 * 1024)),
)
# Most steps need a table: every workload starts in a journal mode with one.
workloads = st.builds(
    lambda mode, rest: [JournalMode(mode), CreateTable(), *rest],
    st.sampled_from(JOURNAL_MODES),
    # A drawn length: hypothesis' own list sizes are mostly a handful.
    st.integers(1, 25).flatmap(lambda n: st.lists(steps, min_size=n, max_size=n)),
)
setups = st.builds(Setup, st.none() | st.sampled_from(PAGE_SIZES), st.none() | st.sampled_from(AUTO_VACUUM))

OTHER_WRITER = r"""
import random, sqlite3, sys
db, table, rows, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(rows * 7919 + size)
conn = sqlite3.connect(db, timeout=30)
with conn:
    conn.executemany(f"INSERT INTO {table}(k, s, b) VALUES (?, ?, ?)",
                     [(rng.randrange(1000), f"other {i}", rng.randbytes(size)) for i in range(rows)])
conn.close()
"""


# ------------------------------------------------------------------ running


class Workload:
    """Runs steps on one database in the mount and says how many TXIDs each should add."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.tables: list[str] = []
        self.names = itertools.count(1)

    def close(self) -> None:
        self.conn.close()

    def q(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        # Always fetch everything: a statement left half-stepped keeps a read transaction.
        return self.conn.execute(sql, args).fetchall()

    def one(self, sql: str, *args: object) -> Any:
        return self.q(sql, *args)[0][0]

    def table(self, t: int) -> str | None:
        return self.tables[t % len(self.tables)] if self.tables else None

    def id_range(self, table: str, lo: int, hi: int) -> tuple[int, int]:
        top = int(self.one(f"SELECT coalesce(max(id), 0) FROM {table}"))
        lo, hi = sorted((lo, hi))
        return top * lo // 100, top * hi // 100

    def count(self, table: str, lo: int, hi: int) -> int:
        return int(self.one(f"SELECT count(*) FROM {table} WHERE id BETWEEN ? AND ?", lo, hi))

    def journal_mode(self) -> str:
        return str(self.one("PRAGMA journal_mode"))

    def setup(self, setup: Setup) -> int:
        if setup.page_size is not None:
            self.q(f"PRAGMA page_size={setup.page_size}")
        if setup.auto_vacuum is not None:
            self.q(f"PRAGMA auto_vacuum={setup.auto_vacuum}")
        # page_size and auto_vacuum=NONE on an empty database write nothing;
        # auto_vacuum=FULL or INCREMENTAL writes page 1 (the flag lives in its header).
        return 1 if setup.auto_vacuum in ("FULL", "INCREMENTAL") else 0

    def run(self, step: Step) -> int:
        """Run `step`; the number of TXIDs it must add to the log."""
        method = getattr(self, "do_" + type(step).__name__)
        return int(method(step))

    def do_CreateTable(self, step: CreateTable) -> int:
        name = f"t{next(self.names)}"
        self.q(f"CREATE TABLE {name}(id INTEGER PRIMARY KEY, k INTEGER, s TEXT, b BLOB)")
        self.tables.append(name)
        return 1

    def do_DropTable(self, step: DropTable) -> int:
        table = self.table(step.t)
        if table is None:
            return 0
        self.q(f"DROP TABLE {table}")
        self.tables.remove(table)
        return 1

    def do_CreateIndex(self, step: CreateIndex) -> int:
        table = self.table(step.t)
        if table is None:
            return 0
        self.q(f"CREATE INDEX i{next(self.names)} ON {table}({step.column})")
        return 1

    def do_InsertText(self, step: InsertText) -> int:
        table = self.table(step.t)
        if table is None:
            return 0
        self.q(f"WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < ?) "
               f"INSERT INTO {table}(k, s) SELECT v * 7 % 1000, "
               "'row ' || v || substr('abcdefghijklmnopqrstuvwxyz', 1, v % 26) FROM n", step.rows)
        return 1

    def do_InsertBlob(self, step: InsertBlob) -> int:
        table = self.table(step.t)
        if table is None:
            return 0
        rng = random.Random(step.seed)
        self.q("BEGIN")
        for _ in range(step.rows):
            self.q(f"INSERT INTO {table}(k, s, b) VALUES (?, ?, ?)",
                   rng.randrange(1000), "blob", rng.randbytes(step.size))
        self.q("COMMIT")
        return 1

    def do_Update(self, step: Update) -> int:
        table = self.table(step.t)
        if table is None:
            return 0
        lo, hi = self.id_range(table, step.lo, step.hi)
        matched = self.count(table, lo, hi)
        if step.blob_size is None:
            self.q(f"UPDATE {table} SET k = k + 1, s = s || 'u' WHERE id BETWEEN ? AND ?", lo, hi)
        else:
            self.q(f"UPDATE {table} SET k = k + 1, b = randomblob(?) WHERE id BETWEEN ? AND ?",
                   step.blob_size, lo, hi)
        return 1 if matched else 0

    def do_UpdateNothing(self, step: UpdateNothing) -> int:
        table = self.table(step.t)
        if table is None:
            return 0
        self.q(f"UPDATE {table} SET k = k + 1 WHERE id < 0")
        return 0

    def do_Delete(self, step: Delete) -> int:
        table = self.table(step.t)
        if table is None:
            return 0
        lo, hi = self.id_range(table, step.lo, step.hi)
        matched = self.count(table, lo, hi)
        self.q(f"DELETE FROM {table} WHERE id BETWEEN ? AND ?", lo, hi)
        return 1 if matched else 0

    def do_Batch(self, step: Batch) -> int:
        table = self.table(step.t)
        if table is None:
            return 0
        self.q("BEGIN")
        for i in range(step.rows):
            self.q(f"INSERT INTO {table}(k, s) VALUES (?, ?)", i, f"batch {i}")
        self.q(f"DELETE FROM {table} WHERE id = (SELECT min(id) FROM {table})")
        self.q("COMMIT")
        return 1

    def do_RolledBack(self, step: RolledBack) -> int:
        table = self.table(step.t)
        if table is None:
            return 0
        self.q("BEGIN")
        for i in range(step.rows):
            self.q(f"INSERT INTO {table}(k, s) VALUES (?, ?)", i, f"rolled back {i}")
        self.q("ROLLBACK")
        return 0

    def do_Spill(self, step: Spill) -> int:
        table = self.table(step.t)
        if table is None:
            return 0
        cache = self.one("PRAGMA cache_size")
        self.q("PRAGMA cache_size=5")
        try:
            self.q("BEGIN")
            for i in range(step.rows):
                self.q(f"INSERT INTO {table}(k, s, b) VALUES (?, 'spill', randomblob(?))",
                       i, 20_000 * (i + 1))
            self.q(f"UPDATE {table} SET k = k + 1")
            self.q("COMMIT")
        finally:
            self.q(f"PRAGMA cache_size={cache}")
        return 1

    def do_Exclusive(self, step: Exclusive) -> int:
        table = self.table(step.t)
        if table is None:
            return 0
        self.q("PRAGMA locking_mode=EXCLUSIVE")
        for i in range(step.rows):
            self.q(f"INSERT INTO {table}(k, s) VALUES (?, 'exclusive')", i)
        self.q("PRAGMA locking_mode=NORMAL")
        self.q(f"SELECT count(*) FROM {table}")  # the next access releases the lock
        return step.rows

    def do_Select(self, step: Select) -> int:
        table = self.table(step.t)
        self.q(f"SELECT count(*), sum(length(b)) FROM {table}" if table else "SELECT 1")
        return 0

    def do_Vacuum(self, step: Vacuum) -> int:
        if step.page_size is not None:
            self.q(f"PRAGMA page_size={step.page_size}")
        self.q("VACUUM")
        return 1

    def do_Checkpoint(self, step: Checkpoint) -> int:
        self.q(f"PRAGMA wal_checkpoint({step.mode})")
        return 0

    def do_JournalMode(self, step: JournalMode) -> int:
        before = self.journal_mode()
        after = str(self.one(f"PRAGMA journal_mode={step.mode}"))
        assert after == step.mode, f"journal_mode={step.mode} refused, still {after}"
        # Entering or leaving WAL rewrites the header's read/write versions
        # (bytes 18-19) in one transaction; rollback modes are per connection.
        return 1 if (before == "wal") != (after == "wal") else 0

    def do_IncrementalVacuum(self, step: IncrementalVacuum) -> int:
        incremental = self.one("PRAGMA auto_vacuum") == 2
        free = int(self.one("PRAGMA freelist_count"))
        empty = self.one("PRAGMA page_count") == 0
        # executescript steps the pragma to the end (execute() stops after one page).
        self.conn.executescript(f"PRAGMA incremental_vacuum({step.pages})")
        # On an empty database the pragma's write transaction creates page 1.
        return 1 if empty or (incremental and free) else 0

    def do_OtherProcess(self, step: OtherProcess) -> int:
        table = self.table(step.t)
        if table is None:
            return 0
        subprocess.run([sys.executable, "-c", OTHER_WRITER, str(self.path), table,
                        str(step.rows), str(step.size)], check=True, timeout=60)
        return 1


# ------------------------------------------------------------------ checking


def read_position(mountpoint: Path, db: str) -> tuple[int, int]:
    text = (mountpoint / f"{db}-pos").read_text()
    assert len(text) == 34 and text[16] == "/" and text.endswith("\n"), repr(text)
    return int(text[:16], 16), int(text[17:33], 16)


def read_log(data_dir: Path, db: str) -> list[Transaction]:
    """The database's log, decoded read-only (the daemon keeps it open)."""
    path = data_dir / ".pylitefs" / "logs" / f"{db}.log"
    if not path.exists():
        return []
    with TransactionLog.open(path, readonly=True) as txlog:
        txns, size = list(txlog), txlog.size
    # Nothing but the space allocated ahead after the last record: no record was skipped.
    assert not any(path.read_bytes()[size:]), f"{path}: bytes after the last good record at {size}"
    return txns


def committed_content(path: Path) -> bytes:
    """The database's committed content, as a new connection reads it through the mount.

    Not the workload's own connection: its page cache may hold, on freelist
    leaf pages, bytes that are in no file (see `freelist_leaves`). Opening
    and closing a second connection checkpoints nothing (the workload's
    connection stays open).
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        return conn.serialize()
    finally:
        conn.close()


def freelist_leaves(image: bytes, page_size: int) -> set[int]:
    """The freelist leaf pages of a database image.

    SQLite never reads a freelist leaf's content, so it does not keep it
    right in its page cache: a leaf reused by a transaction is fetched with
    PAGER_GET_NOCONTENT (zero-filled, not read, not journaled), so after a
    ROLLBACK the connection's cache still holds what the aborted transaction
    wrote there while the file (and every other connection) holds the
    original; and a page dirtied then freed in one transaction is never
    written (sqlite3PagerDontWrite). Same on a plain directory.
    """
    leaves: set[int] = set()
    trunk = int.from_bytes(image[32:36], "big")
    seen: set[int] = set()
    while trunk and trunk not in seen and trunk * page_size <= len(image):
        seen.add(trunk)
        page = image[(trunk - 1) * page_size : trunk * page_size]
        count = int.from_bytes(page[4:8], "big")
        leaves.update(int.from_bytes(page[8 + 4 * i : 12 + 4 * i], "big") for i in range(count))
        trunk = int.from_bytes(page[0:4], "big")
    return leaves


def page_size_of(image: bytes) -> int:
    size = int.from_bytes(image[16:18], "big")
    return 65536 if size == 1 else size


def apply(image: bytearray, txn: Transaction) -> None:
    if txn.dropped:
        del image[:]
        return
    size = txn.commit_size * txn.page_size
    if len(image) < size:
        image.extend(bytes(size - len(image)))
    for pgno, page in txn.pages.items():
        image[(pgno - 1) * txn.page_size : pgno * txn.page_size] = page
    del image[size:]


def integrity(image: bytes) -> str:
    """`PRAGMA integrity_check` of an image, opened in memory."""
    data = bytearray(image)
    data[18:20] = b"\x01\x01"  # a WAL-mode header would make the in-memory copy look for a -wal
    conn = sqlite3.connect(":memory:")
    try:
        conn.deserialize(bytes(data))
        return "\n".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall())
    finally:
        conn.close()


def check_replay(txns: list[Transaction], snapshots: dict[int, bytes], positions: dict[int, int]) -> bytes:
    """Replay `txns` from an empty image, checking every TXID; return the final image."""
    assert [t.txid for t in txns] == list(range(1, len(txns) + 1)), "TXIDs are not 1..N"
    image = bytearray()
    previous_post = 0
    for txn in txns:
        assert not txn.dropped, f"TXID {txn.txid} drops a database nobody deleted"
        assert txn.pre_checksum == previous_post, f"checksum chain broken at TXID {txn.txid}"
        apply(image, txn)
        assert page_size_of(bytes(image)) == txn.page_size, f"TXID {txn.txid}: page size"
        assert database_checksum(bytes(image), txn.page_size) == txn.post_checksum, (
            f"TXID {txn.txid}: post_checksum is not the checksum of the replayed image")
        assert (ok := integrity(bytes(image))) == "ok", f"TXID {txn.txid}: {ok}"
        if txn.txid in positions:
            assert positions[txn.txid] == txn.post_checksum, f"TXID {txn.txid}: -pos checksum"
        if txn.txid in snapshots:
            assert bytes(image) == snapshots[txn.txid], (
                f"TXID {txn.txid}: replayed image differs from what SQLite had committed "
                f"(pages {differing_pages(bytes(image), snapshots[txn.txid], txn.page_size)})")
        previous_post = txn.post_checksum
    return bytes(image)


def differing_pages(a: bytes, b: bytes, page_size: int) -> list[int] | str:
    if len(a) != len(b):
        return f"sizes {len(a)} != {len(b)} bytes"
    return [i // page_size + 1 for i in range(0, len(a), page_size)
            if a[i:i + page_size] != b[i:i + page_size]]


# --------------------------------------------------------------------- tests


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=setups, workload=workloads)
# Every kind of step at least once, whatever hypothesis draws: rollback modes
# with a page size change, blobs freed then reclaimed by incremental_vacuum...
@example(setup=Setup(1024, "INCREMENTAL"), workload=[
    JournalMode("delete"), CreateTable(), InsertBlob(0, 3, 150_000, 1), InsertText(0, 30),
    CreateIndex(0, "k"), JournalMode("truncate"), Delete(0, 0, 60), IncrementalVacuum(5),
    JournalMode("persist"), OtherProcess(0, 3, 20_000), IncrementalVacuum(0), UpdateNothing(0),
    Update(0, 0, 100, 60_000), Select(0), RolledBack(0, 3), Batch(0, 10), CreateTable(),
    InsertBlob(1, 2, 80_000, 2), DropTable(0), Vacuum(4096), Checkpoint("FULL"),
    JournalMode("delete"), Vacuum(512), IncrementalVacuum(0), Spill(0, 5), Exclusive(0, 3),
])
# ... and WAL, entered and left, with every checkpoint mode between commits.
@example(setup=Setup(8192, "FULL"), workload=[
    JournalMode("wal"), CreateTable(), InsertBlob(0, 3, 200_000, 3), Checkpoint("PASSIVE"),
    InsertText(0, 40), CreateIndex(0, "k, s"), Delete(0, 20, 80), Checkpoint("RESTART"),
    Update(0, 0, 100, None), OtherProcess(0, 5, 30_000), Checkpoint("TRUNCATE"),
    RolledBack(0, 2), Batch(0, 5), Vacuum(None), JournalMode("persist"), InsertText(0, 5),
    JournalMode("wal"), DropTable(0), Checkpoint("FULL"), Vacuum(65536), CreateTable(),
    InsertBlob(0, 1, 5120, 4), UpdateNothing(0), Spill(0, 6), Exclusive(0, 2), Checkpoint("PASSIVE"),
    JournalMode("truncate"),
])
# A ROLLBACK that leaves the aborted content of a reused freelist leaf
# (page 14) in the connection's page cache, not in the file.
@example(setup=Setup(None, None), workload=[
    JournalMode("delete"), CreateTable(), Spill(0, 2), InsertBlob(0, 1, 5904, 0),
    InsertText(0, 40), InsertText(0, 40), RolledBack(0, 4),
])
def test_random_workloads_are_captured_exactly(shared_mount: MountProcess, setup: Setup,
                                               workload: list[Step]) -> None:
    node = shared_mount
    assert node.alive(), node.log_text()[-5000:]
    db = f"prop{next(_names)}.db"
    note(f"database {db}")
    run = Workload(node.mountpoint / db)
    snapshots: dict[int, bytes] = {}  # TXID -> SQLite's committed content when a step ended there
    positions: dict[int, int] = {}  # TXID -> checksum that -pos reported
    txid, checksum = read_position(node.mountpoint, db)
    assert (txid, checksum) == (0, 0)

    def check_step(what: str, expected: int) -> None:
        nonlocal txid, checksum
        new_txid, new_checksum = read_position(node.mountpoint, db)
        assert new_txid - txid == expected, (
            f"{what} (journal_mode={run.journal_mode()}) added {new_txid - txid} TXIDs, "
            f"expected {expected}")
        if new_txid == 0:
            assert run.one("PRAGMA page_count") == 0 and new_checksum == 0
        else:
            content = committed_content(run.path)
            assert database_checksum(content, page_size_of(content)) == new_checksum, (
                f"{what}: -pos checksum is not the checksum of SQLite's content")
            own = run.conn.serialize()
            page_size = page_size_of(content)
            differing = differing_pages(own, content, page_size)
            assert isinstance(differing, list), f"{what}: the workload's connection sees {differing}"
            assert set(differing) <= freelist_leaves(content, page_size), (
                f"{what}: the workload's connection sees pages {differing} differently "
                f"(freelist leaves: {sorted(freelist_leaves(content, page_size))})")
            snapshots[new_txid] = content
            positions[new_txid] = new_checksum
        if expected == 0:
            assert new_checksum == checksum, f"{what}: nothing committed, yet the checksum moved"
        txid, checksum = new_txid, new_checksum

    try:
        check_step(f"{setup}", run.setup(setup))
        for i, step in enumerate(workload):
            expected = run.run(step)
            event(f"{type(step).__name__} adds {expected}")
            check_step(f"step {i} {step}", expected)
    finally:
        run.close()
    event(f"steps: {len(workload) // 5 * 5}-{len(workload) // 5 * 5 + 4}")
    event(f"TXIDs: {txid // 10 * 10}-{txid // 10 * 10 + 9}")
    # Closing the last connection checkpoints a WAL: no transaction.
    assert read_position(node.mountpoint, db) == (txid, checksum)
    assert not (node.data_dir / f"{db}-wal").exists()
    txns = read_log(node.data_dir, db)
    assert len(txns) == txid
    final = check_replay(txns, snapshots, positions)
    assert final == (node.data_dir / db).read_bytes(), "final replay differs from the database file"


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_deleted_database_logs_a_dropped_transaction_and_txids_continue(
        shared_mount: MountProcess, mode: str) -> None:
    node = shared_mount
    db = f"dropped-{mode}-{next(_names)}.db"
    path = node.mountpoint / db

    def generation(rows: int) -> bytes:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            assert conn.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
            conn.execute("CREATE TABLE IF NOT EXISTS t(x)")
            for i in range(rows):
                conn.execute("INSERT INTO t VALUES (?)", (i,))
            return conn.serialize()
        finally:
            conn.close()

    generation(3)
    first_txid, first_checksum = read_position(node.mountpoint, db)
    assert first_txid >= 4
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass
    assert db not in os.listdir(node.mountpoint) and f"{db}-pos" not in os.listdir(node.mountpoint)

    txns = read_log(node.data_dir, db)
    assert [t.txid for t in txns] == list(range(1, first_txid + 2))
    dropped = txns[-1]
    assert dropped.dropped and dropped.commit_size == 0 and not dropped.pages
    assert dropped.pre_checksum == first_checksum and dropped.post_checksum == 0

    content = generation(2)
    txid, checksum = read_position(node.mountpoint, db)
    assert txid > first_txid + 1, "the re-created database does not continue the TXIDs"
    txns = read_log(node.data_dir, db)
    assert [t.txid for t in txns] == list(range(1, txid + 1))
    image = bytearray()
    previous_post = 0
    for txn in txns:
        assert txn.pre_checksum == previous_post, f"checksum chain broken at TXID {txn.txid}"
        apply(image, txn)
        if not txn.dropped:
            assert database_checksum(bytes(image), txn.page_size) == txn.post_checksum
            assert integrity(bytes(image)) == "ok"
        previous_post = txn.post_checksum
    assert [t.txid for t in txns if t.dropped] == [first_txid + 1]
    assert checksum == txns[-1].post_checksum
    assert bytes(image) == content == (node.data_dir / db).read_bytes()


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal"])
def test_rolled_back_transaction_that_spilled_adds_no_txid(shared_mount: MountProcess, mode: str) -> None:
    """A transaction bigger than the page cache writes pages before COMMIT; rolled back, it is no TXID.

    In rollback modes SQLite spills pages into the database file (after
    journaling the originals) and ROLLBACK writes the originals back before
    the journal is finalized; in WAL mode it writes frames without a commit
    frame, which the next transaction overwrites.
    """
    node = shared_mount
    db = f"spill-{mode}-{next(_names)}.db"
    conn = sqlite3.connect(node.mountpoint / db, isolation_level=None)
    try:
        assert conn.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
        conn.execute("CREATE TABLE t(x)")
        conn.execute("INSERT INTO t VALUES (1)")
        before = read_position(node.mountpoint, db)
        conn.execute("PRAGMA cache_size=2")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
        after_rollback = read_position(node.mountpoint, db)
        conn.execute("INSERT INTO t VALUES (2)")
        content = conn.serialize()
        after_commit = read_position(node.mountpoint, db)
    finally:
        conn.close()
    assert database_checksum(content, page_size_of(content)) == after_commit[1]
    assert after_rollback[1] == before[1], "the rolled-back transaction changed the logged content"
    assert after_rollback[0] == before[0], (
        f"journal_mode={mode}: the rolled-back transaction was logged as TXID {after_rollback[0]}")
    assert after_commit[0] == before[0] + 1
    txns = read_log(node.data_dir, db)
    final = check_replay(txns, {after_commit[0]: content}, {after_commit[0]: after_commit[1]})
    assert final == (node.data_dir / db).read_bytes()
