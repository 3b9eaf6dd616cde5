"""Commit capture: the writes the mount passes through, turned into committed transactions.

The mount calls `Capture` around every write, truncate, unlink, rename and
fsync of a database, journal or WAL file; `Capture` recognises SQLite's
commit points (DESIGN.md §3) and hands each committed transaction to a
`CommitSink` *before* SQLite learns that it committed:

- rollback journal (`DELETE`, `TRUNCATE`, `PERSIST`): while the journal is hot
  (valid magic), the byte ranges SQLite writes into the database are recorded;
  the commit point is the journal losing its magic — unlinked, truncated, or
  its header zeroed. The transaction (final content of the written pages, read
  back from the data dir, and the database size) is handed to the sink before
  that unlink/truncate/write is performed;
- WAL: every write to `-wal` is fed to `fs.formats.wal.WalTracker` after it
  reached the data dir; a commit it reports is handed to the sink before the
  write is acknowledged. If the sink fails, the commit frame is invalidated
  in the file, so the WAL agrees with the error SQLite receives.

Synchronous replication: with a `CommitGate` that `holds(db)`, the write,
truncate or unlink that would complete a commit of `db` is performed only
after the transaction is logged *and* `gate.confirm` returned (the mount's
handler awaits `Capture.confirm`; for WAL, `wal_write_held` tracks the write
before performing it). If confirmation fails, the transaction is taken back
(`gate.retract`) and the application's write fails with EIO, so SQLite has
not committed: a WAL commit frame never reaches the file (its salts are
zeroed too); a rollback journal stays hot and the database rolls back.

A rollback-mode database written while no journal is hot (`journal_mode=MEMORY`
or `OFF`) is refused with EIO before anything reaches the file: such a
transaction has no commit point on disk and cannot be replicated.

Durability follows SQLite's own `synchronous` promise: `sync(db)` is requested
whenever SQLite fsyncs the database or its journal, and `sync_pending()` when
it fsyncs the directory (`DELETE` mode with `synchronous=EXTRA`), in both
cases before the data itself is flushed. An fsync of the WAL needs no log
fsync: a WAL commit is durable in the WAL itself, and recovery logs the
committed WAL frames the log lost (pylitefs.startup). The log of such commits
is fsynced instead before anything can destroy those frames or move their
pages into the database: the mount asks `log_sync_due(db)` before a write
or truncate of the database in WAL mode (a checkpoint), before the WAL is
restarted (its header rewritten), truncated or deleted.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from fs.errors import FsError
from fs.formats import FormatError
from fs.formats.dbheader import parse_db_header
from fs.formats.journal import JOURNAL_MAGIC, parse_journal
from fs.formats.wal import FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WalTracker
from fs.recovery import read_file

log = logging.getLogger(__name__)

DB_HEADER_SIZE = 100
_FRAME_SALT_OFFSET = 8  # salt-1 and salt-2 in a WAL frame header
_READ_VERSION_OFFSET = 19
_WAL_VERSION = 2


class CommitSink(Protocol):
    """Where captured transactions go (implemented by `replication.store.Store`)."""

    def commit(self, db: str, page_size: int, commit_size: int, pages: Mapping[int, bytes],
               *, retractable: bool = False) -> None:
        """Record a committed transaction; appended to the log when it returns, or raises.

        `retractable` (only passed when a `CommitGate` holds `db`): it may be
        taken back by the gate's `retract` until confirmed.
        """

    def drop(self, db: str) -> None:
        """`db` was deleted."""

    def sync(self, db: str) -> None:
        """Make everything recorded for `db` durable (may run in a worker thread)."""

    def rename(self, old: str, new: str) -> None:
        """The database `old` is now called `new`."""

    def position(self, db: str) -> tuple[int, int] | None:
        """(TXID, checksum) after the last transaction of `db`, or None."""


class CommitGate(Protocol):
    """Holds commits until enough replicas have them (synchronous replication; implemented by the node)."""

    def holds(self, db: str) -> bool:
        """Whether commits of `db` wait for `confirm` (False: the asynchronous path, unchanged)."""

    async def confirm(self, db: str, txid: int, checksum: int) -> None:
        """Return once TXID `txid` (post-checksum `checksum`) of `db` may commit; raise FsError if it must fail."""

    def retract(self, db: str, txid: int) -> None:
        """Take back TXID `txid` of `db` and anything logged after it: the commit failed."""


class _Held(NamedTuple):
    """A logged transaction whose commit point waits for the gate."""

    db: str
    txid: int
    checksum: int


class CaptureError(FsError):
    """A write the mount refuses because it could not be replicated; the application sees EIO."""

    errno = errno.EIO


@dataclass(slots=True)
class _Database:
    """What capture knows about one database between commit points."""

    journal_magic: bytes = b""  # first bytes of the -journal, as last written
    dirty: dict[int, int] = field(default_factory=dict)  # db write offset -> length
    wal: WalTracker | None = None
    wal_mode: bool | None = None  # header byte 19 == 2, as last written (None: not read yet)
    # After a held WAL commit failed: its frame size. Writes that do not start
    # a frame are refused until one does (the kernel splits a write at page
    # boundaries, and SQLite retries the rest of a short write).
    wal_refuse: int = 0
    # WAL commits were logged since the log was last fsynced: their only
    # durable copy may be the WAL (see `Capture.log_sync_due`).
    wal_unsynced: bool = False


class Capture:
    """Recognises the commit points of every database in one data dir."""

    def __init__(self, sink: CommitSink, dir_fd: int, gate: CommitGate | None = None) -> None:
        self._sink = sink
        self._dir_fd = dir_fd
        self._gate = gate
        self._dbs: dict[str, _Database] = {}
        self._unsynced: set[str] = set()  # databases with rollback-journal commits logged since their last sync
        #: Set when a journal call logged a transaction the gate holds: the
        #: caller must `await confirm()` before performing the operation.
        self.held: _Held | None = None

    def _db(self, name: str) -> _Database:
        state = self._dbs.get(name)
        if state is None:
            state = self._dbs[name] = _Database(journal_magic=self._read_journal_magic(name))
        return state

    # ------------------------------------------------------ database file

    def database_write(self, db: str, off: int, data: bytes) -> None:
        """Called before `data` is written at `off` into database `db`; raises to refuse it."""
        state = self._db(db)
        if off <= _READ_VERSION_OFFSET < off + len(data):
            state.wal_mode = data[_READ_VERSION_OFFSET - off] == _WAL_VERSION
        if state.journal_magic == JOURNAL_MAGIC:
            state.dirty[off] = max(len(data), state.dirty.get(off, 0))
            return
        if not self._is_wal_mode(db, state):
            log.error(
                "refusing a write to %s with no rollback journal: journal_mode=MEMORY and OFF "
                "are not supported (use DELETE, TRUNCATE, PERSIST or WAL)", db)
            raise CaptureError(f"{db}: write without a journal")
        # WAL mode: the database file is written only by checkpoints, which
        # change no logical content.

    def database_truncate(self, db: str, old_size: int, new_size: int) -> None:
        """Called before database `db` is truncated; raises to refuse it.

        Allowed inside a rollback transaction, in WAL mode (checkpoints), and
        whenever every page within the size in the database header survives:
        in rollback mode SQLite shrinks the file just *after* the commit point
        (pager_end_transaction), and the commit already used the header's size.
        """
        state = self._db(db)
        if old_size == new_size or state.journal_magic == JOURNAL_MAGIC:
            return
        if not self._is_wal_mode(db, state) and new_size < self._header_size_bytes(db):
            log.error("refusing to truncate %s outside a transaction: the change could not be "
                      "replicated", db)
            raise CaptureError(f"{db}: truncate without a journal")

    def _header_size_bytes(self, db: str) -> int:
        """The database size the header states (page count x page size), 0 if unknown."""
        fd = os.open(db, os.O_RDONLY, dir_fd=self._dir_fd)
        try:
            header = parse_db_header(os.pread(fd, DB_HEADER_SIZE, 0))
        except FormatError:
            return 0
        finally:
            os.close(fd)
        return (header.page_count or 0) * header.page_size

    def _is_wal_mode(self, db: str, state: _Database) -> bool:
        """Whether `db`'s header says WAL; read from the file once, then kept up to date."""
        if state.wal_mode is None:
            fd = os.open(db, os.O_RDONLY, dir_fd=self._dir_fd)
            try:
                state.wal_mode = os.pread(fd, 1, _READ_VERSION_OFFSET) == bytes([_WAL_VERSION])
            finally:
                os.close(fd)
        return state.wal_mode

    # ---------------------------------------------------------- journal

    def journal_write(self, db: str, off: int, data: bytes) -> None:
        """Called before a write to `db`'s journal; commits if it zeroes a hot header."""
        if off >= len(JOURNAL_MAGIC):
            return
        state = self._db(db)
        magic = bytearray(state.journal_magic.ljust(len(JOURNAL_MAGIC), b"\0"))
        end = min(len(JOURNAL_MAGIC), off + len(data))
        magic[off:end] = data[: end - off]
        self._journal_header_becomes(db, state, bytes(magic))

    def journal_truncate(self, db: str, size: int) -> None:
        """Called before `db`'s journal is truncated to `size` bytes."""
        if size < len(JOURNAL_MAGIC):
            state = self._db(db)
            self._journal_header_becomes(db, state, state.journal_magic[:size])

    def journal_unlink(self, db: str) -> None:
        """Called before `db`'s journal is deleted."""
        self._journal_header_becomes(db, self._db(db), b"")

    def _journal_header_becomes(self, db: str, state: _Database, magic: bytes) -> None:
        if state.journal_magic == JOURNAL_MAGIC and magic != JOURNAL_MAGIC:
            self._commit_rollback(db, state)
        elif magic == JOURNAL_MAGIC and state.journal_magic != JOURNAL_MAGIC:
            state.dirty.clear()  # a new transaction starts
        state.journal_magic = magic

    def _commit_rollback(self, db: str, state: _Database) -> None:
        if not state.dirty:
            return  # the journal held no change that reached the database
        fd = os.open(db, os.O_RDONLY, dir_fd=self._dir_fd)
        try:
            header = parse_db_header(os.pread(fd, DB_HEADER_SIZE, 0))
            page_size = header.page_size
            size = header.effective_page_count(os.fstat(fd).st_size)
            pgnos = sorted({pgno for off, length in state.dirty.items()
                            for pgno in range(off // page_size + 1, (off + length - 1) // page_size + 2)
                            if pgno <= size})
            pages = {pgno: os.pread(fd, page_size, (pgno - 1) * page_size) for pgno in pgnos}
        except (OSError, FormatError) as exc:
            log.error("cannot read the transaction of %s back from the data dir: %s", db, exc)
            raise CaptureError(f"{db}: cannot read committed pages") from None
        finally:
            os.close(fd)
        state.dirty.clear()
        if self._is_rollback(db, size, pages):
            log.debug("%s: the journal was finalised after a rollback: nothing committed", db)
            return
        self._hand_over(db, page_size, size, pages)
        self._unsynced.add(db)

    def _is_rollback(self, db: str, size: int, pages: Mapping[int, bytes]) -> bool:
        """True when every written page is back to its journaled original (a ROLLBACK).

        A transaction that spilled pages into the database before rolling
        back writes the originals back and then finalises the journal exactly
        as a commit does. Pages the journal does not hold (reused freelist
        pages) count as changed: the file did change, so it is captured.
        """
        data = read_file(self._dir_fd, f"{db}-journal")
        if data is None:
            return False
        try:
            journal = parse_journal(data)
        except FormatError:
            return False
        if size != journal.initial_page_count:
            return False
        originals = journal.original_pages()
        return all(originals.get(pgno) == page for pgno, page in pages.items())

    # -------------------------------------------------------------- WAL

    def wal_write(self, db: str, off: int, data: bytes, write: Callable[[], int]) -> int:
        """Perform `write()` of `data` at `off` into `db`'s WAL; hand over what it committed.

        The tracker is (re)built from the file before the write reaches it, so
        the write itself is always seen as new. Returns what `write()` returned.
        """
        state = self._dbs.get(db) or self._db(db)
        if state.wal is None:
            state.wal = self._load_wal(db)
        written = write()
        for commit in state.wal.write(off, data[:written]):
            try:
                self._hand_over(db, commit.page_size, commit.commit_size, commit.pages)
                state.wal_unsynced = True
            except CaptureError:
                # SQLite is about to hear that this commit failed: make the
                # WAL agree (an invalid commit frame ends the valid chain
                # there, also for WAL recovery after a crash) and rebuild the
                # tracker from the file at the next write.
                self._invalidate_frame(db, commit.page_size, commit.last_frame)
                state.wal = None
                raise
        return written

    async def wal_write_held(self, db: str, off: int, data: bytes, write: Callable[[], int]) -> int:
        """`wal_write` for a database the gate holds: a write that completes a commit waits for the gate.

        The write is tracked before it is performed; a commit it completes is
        logged, confirmed, and only then written. If the gate (or the write)
        fails, the transaction is taken back, the commit frame is
        invalidated and the error raised: the WAL holds no commit.
        """
        state = self._dbs.get(db) or self._db(db)
        if state.wal_refuse:
            if off > WAL_HEADER_SIZE and (off - WAL_HEADER_SIZE) % state.wal_refuse:
                raise CaptureError(f"{db}: the rest of a WAL write whose commit failed")
            state.wal_refuse = 0
        if state.wal is None:
            state.wal = self._load_wal(db)
        try:
            commits = state.wal.write(off, data)
        except BaseException:
            state.wal = None
            raise
        if not commits:
            try:
                return write()
            except BaseException:
                state.wal = None  # the tracker saw a write the file did not get
                raise
        assert self._gate is not None
        first: _Held | None = None
        try:
            for commit in commits:
                held = self._hand_over(db, commit.page_size, commit.commit_size, commit.pages,
                                       retractable=first is None)
                first = first or held
            self.held = None  # confirmed right here, not by the caller
            assert held is not None
            await self._gate.confirm(db, held.txid, held.checksum)
            state.wal_unsynced = True
            written = write()
        except BaseException:
            self.held = None
            if first is not None:
                self._gate.retract(db, first.txid)
            self._invalidate_frame(db, commits[0].page_size, commits[0].last_frame,
                                   "its transaction was not replicated")
            state.wal = None
            state.wal_refuse = commits[0].page_size + FRAME_HEADER_SIZE
            raise
        if written != len(data):
            state.wal = None  # the tracker saw more than the file got: rebuild it from the file
        return written

    async def confirm(self) -> None:
        """Wait for the gate to confirm the transaction in `held`; on failure take it back and raise."""
        held, self.held = self.held, None
        if held is None or self._gate is None:
            return
        try:
            await self._gate.confirm(*held)
        except BaseException:
            self._gate.retract(held.db, held.txid)
            # The operation that would have committed is not performed: the journal stays hot.
            self._db(held.db).journal_magic = self._read_journal_magic(held.db)
            raise

    def _invalidate_frame(self, db: str, page_size: int, frame: int,
                          reason: str = "its transaction could not be logged") -> None:
        """Zero the salts of WAL frame `frame` (1-based) in the data dir, fsynced."""
        offset = WAL_HEADER_SIZE + (frame - 1) * (FRAME_HEADER_SIZE + page_size) + _FRAME_SALT_OFFSET
        fd = os.open(f"{db}-wal", os.O_WRONLY, dir_fd=self._dir_fd)
        try:
            os.pwrite(fd, bytes(8), offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.error("%s: WAL frame %d invalidated: %s", db, frame, reason)

    def wal_truncated(self, db: str, size: int) -> None:
        """Called after `db`'s WAL was truncated to `size` bytes."""
        state = self._db(db)
        if state.wal is not None:
            state.wal.truncate(size)

    def wal_unlinked(self, db: str) -> None:
        """Called after `db`'s WAL was deleted."""
        state = self._db(db)
        if state.wal is not None:
            state.wal.reset()

    def _load_wal(self, db: str) -> WalTracker:
        """A tracker that knows the frames already committed in the WAL file."""
        data = read_file(self._dir_fd, f"{db}-wal")
        if not data:
            return WalTracker()
        tracker, _ = WalTracker.from_wal(data)
        return tracker

    # ----------------------------------------------------- whole database

    def database_unlinked(self, db: str) -> None:
        """Called after database `db` was deleted."""
        self._dbs.pop(db, None)
        self._sink.drop(db)
        self._unsynced.add(db)

    def database_renamed(self, old: str, new: str) -> None:
        """Called after database `old` was renamed to `new`."""
        self._dbs.pop(new, None)
        state = self._dbs.pop(old, None)
        if state is not None:
            self._dbs[new] = state
        self._sink.rename(old, new)
        if old in self._unsynced:
            self._unsynced.discard(old)
            self._unsynced.add(new)

    # ------------------------------------------------------- durability

    def sync(self, db: str) -> None:
        """Make `db`'s log durable (SQLite fsynced its database or journal, or `log_sync_due`). Thread-safe."""
        self._unsynced.discard(db)
        state = self._dbs.get(db)
        if state is not None:
            state.wal_unsynced = False  # before the fsync: a commit logged meanwhile sets it again
        self._sink.sync(db)

    def log_sync_due(self, db: str) -> bool:
        """Whether `db`'s log must be fsynced (`sync`) before its WAL frames may be checkpointed or lost.

        True when WAL commits were logged since the last fsync of the log:
        until then their only durable copy may be the WAL (SQLite fsyncs it
        at each commit with `synchronous=FULL`, and the log is not fsynced
        then). The mount asks before writing or truncating the database in
        WAL mode, and before restarting (rewriting the header), truncating or
        deleting the WAL.
        """
        state = self._dbs.get(db)
        return state is not None and state.wal_unsynced

    def sync_pending(self) -> None:
        """SQLite fsynced the directory: make every log with unsynced rollback-journal commits durable."""
        for db in list(self._unsynced):
            self.sync(db)

    def _hand_over(self, db: str, page_size: int, commit_size: int, pages: Mapping[int, bytes],
                   *, retractable: bool = True) -> _Held | None:
        """Log the transaction; when the gate holds `db`, return its position (and set `held`)."""
        gate = self._gate
        holds = gate is not None and gate.holds(db)
        try:
            if holds:
                self._sink.commit(db, page_size, commit_size, pages, retractable=retractable)
            else:
                self._sink.commit(db, page_size, commit_size, pages)
        except Exception:
            log.exception("cannot record a transaction of %s; failing the application's commit", db)
            raise CaptureError(f"{db}: cannot record the transaction") from None
        if not holds:
            return None
        position = self._sink.position(db)
        assert position is not None
        self.held = _Held(db, *position)
        return self.held

    def _read_journal_magic(self, db: str) -> bytes:
        try:
            fd = os.open(f"{db}-journal", os.O_RDONLY, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return b""
        try:
            return os.pread(fd, len(JOURNAL_MAGIC), 0)
        finally:
            os.close(fd)
