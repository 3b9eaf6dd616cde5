"""The primary's transaction store: numbers, checksums and logs each committed transaction.

`Store` is the mount's `CommitSink` (fs/capture.py). Per database it keeps
an append-only `TransactionLog` in `<root>/logs/<db>.log`, and in memory the
per-page hashes (`PageHashes`) from which each transaction's rolling checksum
is computed. TXIDs are consecutive per database name, also across a drop and
a later re-creation; the log is the source of truth for them.

At startup the node calls `load(db, image)` for every database with the
committed database image: the store checks it against the log's last
checksum (`ChecksumMismatchError` if they differ — never silently accepted),
or, for a database with no log yet, logs one snapshot transaction holding
every page, so that replaying a log from TXID 1 always rebuilds the database.

Threads: `commit`, `retract`, `keep`, `drop`, `rename`, `load`, `add_listener`,
`remove_listener`, `replay` and `close` run on one thread (the mount's trio
thread); `sync`, `position`, `read`, `databases` and `compact` are safe from
any thread, concurrently with those (`sync` and `compact` block on disk I/O:
run them in a worker thread). Listeners are called synchronously on the
committing thread, after the record is appended and before `commit` returns.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

from fs.formats import FormatError, lock_page
from fs.formats.dbheader import parse_db_header
from replication.checksum import PageHashes
from replication.log import LogClosedError, TransactionLog, TxidUnavailableError, _fsync_dir, replay
from replication.txn import Transaction

__all__ = [
    "DEFAULT_RETENTION_SECONDS",
    "ChecksumMismatchError",
    "DivergedError",
    "Listener",
    "Store",
    "StoreError",
]

log = logging.getLogger(__name__)

#: How long transactions stay in a log by default (seconds).
DEFAULT_RETENTION_SECONDS = 600.0
LOG_SUFFIX = ".log"
#: A replica's log replaced by a snapshot is kept under this suffix until the next one.
REPLACED_SUFFIX = ".replaced"

Listener = Callable[[Transaction], None]
ImageSource = bytes | bytearray | memoryview | Callable[[], bytes | bytearray | memoryview]


class StoreError(Exception):
    """A store operation that cannot be done (bad name, database not loaded, ...)."""


class DivergedError(StoreError):
    """A replicated transaction does not continue this database's history (TXID or checksum)."""


class ChecksumMismatchError(StoreError):
    """A database's content does not match the checksum its log ends with."""

    def __init__(self, db: str, txid: int, logged: int, actual: int) -> None:
        super().__init__(
            f"{db}: the database's checksum {actual:016x} is not the checksum "
            f"{logged:016x} its log ends with at TXID {txid}"
        )
        self.db = db
        self.txid = txid
        self.logged = logged
        self.actual = actual


@dataclass(slots=True, eq=False)
class _Db:
    log: TransactionLog
    # The database's page hashes, or None when it has no content in the log
    # (nothing logged yet, or the last transaction dropped it).
    hashes: PageHashes | None
    # False while the log says the database exists but load() has not
    # computed its hashes: commits are refused.
    loaded: bool
    # (db, node id) for which a transaction passed Transaction's full checks
    # (the name and the node id are the only fields `_fast_pages` does not cover).
    checked: tuple[str, str] | None = None
    # (TXID, page hashes before it) of the last `retractable` commit: what `retract` restores.
    undo: tuple[int, PageHashes | None] | None = None


class Store:
    """Per-database transaction logs under `<root>/logs`, and their rolling checksums."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        node_id: str,
        *,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        retention_max_bytes: int | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.root = os.fspath(root)
        self.node_id = node_id
        self.retention_seconds = retention_seconds
        self.retention_max_bytes = retention_max_bytes
        self._clock = clock
        self.logs_dir = os.path.join(self.root, "logs")
        self._dbs: dict[str, _Db] = {}
        self._listeners: tuple[Listener, ...] = ()
        if not os.path.isdir(self.logs_dir):
            os.makedirs(self.logs_dir, exist_ok=True)
            _fsync_dir(self.root)
            _fsync_dir(os.path.dirname(os.path.abspath(self.root)))

    # ------------------------------------------------------------ CommitSink

    def commit(self, db: str, page_size: int, commit_size: int, pages: Mapping[int, bytes],
               *, retractable: bool = False) -> None:
        """Log a committed transaction of `db` (appended, not fsynced, when this returns).

        `pages` holds the final content of every changed page, `commit_size`
        the database size in pages after it. A transaction that changes the
        page size must hold every page (except the lock page). Raises on any
        failure, leaving the log and the in-memory state as they were. With
        `retractable`, `retract` can take it (and any later one) back until
        the next retractable commit (a copy of the page hashes is kept: 8
        bytes per page).
        """
        state = self._dbs.get(db) or self._open(db)
        if not state.loaded:
            raise StoreError(f"{db}: its log has transactions but load() was not called")
        last = state.log.last
        txid = last.txid + 1 if last is not None else 1
        hashes = state.hashes
        undone = state.undo
        if retractable:  # set before the append: a compaction under way keeps the record before it
            state.undo = (txid, hashes.copy() if hashes is not None else None)
        try:
            txn = self._log_commit(state, db, txid, page_size, commit_size, pages, hashes)
        except BaseException:
            state.undo = undone  # nothing was logged: nothing new to take back
            raise
        if self._listeners:
            self._notify(txn)

    def _log_commit(self, state: _Db, db: str, txid: int, page_size: int, commit_size: int,
                    pages: Mapping[int, bytes], hashes: PageHashes | None) -> Transaction:
        """Encode and append TXID `txid` of `db`, then account for it in `state`; the transaction."""
        pre = hashes.checksum if hashes is not None else 0
        if hashes is None or hashes.page_size != page_size:
            if hashes is not None:
                _check_full(db, page_size, commit_size, pages)
            hashes = PageHashes(page_size)
        update = hashes.plan(pages, commit_size)
        timestamp = self._clock()
        node_id = self.node_id
        ordered = (
            _fast_pages(pages, page_size, commit_size, hashes.lock_page)
            if state.checked == (db, node_id) and type(timestamp) is int and timestamp >= 0
            else None
        )
        if ordered is not None:
            # Every field checked here or guaranteed by construction (TXID and
            # checksums from the log and PageHashes): skip the re-validation.
            txn = Transaction.trusted(
                db, txid, page_size, commit_size, ordered, timestamp, node_id, pre, update.checksum
            )
        else:
            txn = Transaction(
                db=db,
                txid=txid,
                page_size=page_size,
                commit_size=commit_size,
                pages=pages,
                timestamp_ns=timestamp,
                node_id=node_id,
                pre_checksum=pre,
                post_checksum=update.checksum,
            )
            state.checked = (db, node_id)
        state.log.append(txn)
        hashes.apply_update(update)
        state.hashes = hashes
        return txn

    def retract(self, db: str, txid: int) -> None:
        """Remove TXID `txid` of `db` and anything logged after it: their commit failed (blocking: fsyncs).

        `txid` must be the last `retractable` commit of `db`; StoreError
        otherwise, changing nothing. The position and the checksums go back
        to what they were before it. Listeners are not told: the caller ends
        whatever may have sent the transaction on.
        """
        state = self._dbs.get(db)
        last = state.log.last if state is not None else None
        if state is None or state.undo is None or state.undo[0] != txid or last is None or last.txid < txid:
            raise StoreError(f"{db}: TXID {txid} is not a transaction that can be taken back")
        try:
            state.log.truncate_after(txid - 1)
        except TxidUnavailableError:
            raise StoreError(f"{db}: TXID {txid - 1} is no longer in the log (retention): "
                             f"cannot take TXID {txid} back") from None
        state.hashes = state.undo[1]
        state.undo = None
        log.warning("%s: took back TXID %d..%d: their commit failed", db, txid, last.txid)

    def keep(self, db: str, txid: int) -> None:
        """TXID `txid` of `db` (a `retractable` commit) stays: forget what `retract` would need."""
        state = self._dbs.get(db)
        if state is not None and state.undo is not None and state.undo[0] == txid:
            state.undo = None

    def append(self, txn: Transaction) -> None:
        """Log a transaction received from the primary, after checking it continues `txn.db` exactly.

        For replicas. The TXID must follow the last one (any TXID on an empty
        log), the pre-checksum must be this database's checksum, and the
        checksum computed from the pages must be the transaction's
        post-checksum; otherwise DivergedError, changing nothing (the replica
        then needs a snapshot). Appended, not fsynced, when this returns.
        """
        db = txn.db
        state = self._dbs.get(db) or self._open(db)
        if not state.loaded:
            raise StoreError(f"{db}: its log has transactions but load() was not called")
        last = state.log.last
        if last is not None and txn.txid != last.txid + 1:
            raise DivergedError(f"{db}: TXID {txn.txid} does not follow TXID {last.txid}")
        hashes = state.hashes
        pre = hashes.checksum if hashes is not None else 0
        if txn.pre_checksum != pre:
            raise DivergedError(f"{db}: TXID {txn.txid} starts from checksum {txn.pre_checksum:016x}, "
                                f"this copy is at {pre:016x}")
        if txn.dropped:
            state.log.append(txn)
            state.hashes = None
            self._notify(txn)
            return
        if hashes is None or hashes.page_size != txn.page_size:
            if hashes is not None:
                _check_full(db, txn.page_size, txn.commit_size, txn.pages)
            hashes = PageHashes(txn.page_size)
        update = hashes.plan(txn.pages, txn.commit_size)
        if update.checksum != txn.post_checksum:
            raise DivergedError(f"{db}: TXID {txn.txid} leads to checksum {update.checksum:016x}, "
                                f"not {txn.post_checksum:016x} as on the primary")
        state.log.append(txn)
        hashes.apply_update(update)
        state.hashes = hashes
        self._notify(txn)

    def reset(self, txn: Transaction) -> None:
        """Replace `txn.db`'s history with `txn`, a snapshot (every page) or a drop.

        For replicas. The checksum is recomputed from the snapshot's pages;
        DivergedError if that is not its post-checksum (nothing changed
        then). The log becomes one record (fsynced): the drop, or for a
        snapshot a *base* record — its TXID, size and checksum without the
        pages, which the database file holds once the caller has written
        them. (Logging every page again would double the cost of a snapshot
        and exceed the record limit past 1 GiB; the price is that a crash
        while the snapshot's pages are written leaves a copy that matches
        nothing, which startup discards, and the primary sends the snapshot
        again.) A transaction with commit size 0 and no pages means the
        database does not exist. Blocking.
        """
        db = txn.db
        _check_name(db)
        hashes: PageHashes | None = None
        if not txn.dropped and txn.commit_size:
            hashes = PageHashes(txn.page_size)
            _check_full(db, txn.page_size, txn.commit_size, txn.pages)
            update = hashes.plan(txn.pages, txn.commit_size)
            if update.checksum != txn.post_checksum:
                raise DivergedError(f"{db}: snapshot at TXID {txn.txid} has checksum "
                                    f"{update.checksum:016x}, not {txn.post_checksum:016x}")
            hashes.apply_update(update)
        base = txn if hashes is None else replace(txn, pages={}, pre_checksum=0)
        path = self._path(db)
        tmp = path + ".reset"
        _write_log(tmp, [base])
        old = self._dbs.pop(db, None)
        if old is not None:
            old.log.close()
        if os.path.exists(path):  # kept for inspection: what this copy had before (replaced each time)
            os.replace(path, self.replaced_path(db))
        os.rename(tmp, path)
        _fsync_dir(self.logs_dir)
        self._dbs[db] = _Db(TransactionLog.open(path), hashes, True)
        self._notify(txn)

    def replaced_path(self, db: str) -> str:
        """Where `reset` keeps the log it replaced (the newest only)."""
        return self._path(db) + REPLACED_SUFFIX

    def forget(self, db: str) -> None:
        """Delete `db`'s log and state (a replica discarding a copy it cannot trust)."""
        _check_name(db)
        state = self._dbs.pop(db, None)
        if state is not None:
            state.log.close()
        _unlink_quietly(self._path(db))
        _fsync_dir(self.logs_dir)

    def last(self, db: str) -> Transaction | None:
        """The last logged transaction of `db` (opening its log if needed), or None.

        Never creates a log: None also for a database the store has never seen.
        """
        state = self._dbs.get(db)
        if state is None:
            if not os.path.exists(self._path(db)):
                return None
            state = self._open(db)
        return state.log.last

    def positions(self) -> dict[str, tuple[int, int]]:
        """(TXID, checksum) of every database with a log (any thread)."""
        out = {}
        for db in self.databases():
            pos = self.position(db)
            if pos is not None:
                out[db] = pos
        return out

    def fsyncs(self) -> dict[str, int]:
        """fdatasyncs of each open log since it was opened (any thread)."""
        return {db: state.log.fsyncs for db, state in list(self._dbs.items())}

    def drop(self, db: str) -> None:
        """Log that `db` was deleted (a dropped transaction); a no-op if it has no content."""
        state = self._dbs.get(db) or self._open(db)
        last = state.log.last
        if last is None or last.dropped:
            return
        self._append(state, self._dropped(db, last))
        state.hashes = None
        state.loaded = True

    def sync(self, db: str) -> None:
        """fsync `db`'s log (any thread; returns at once when nothing is new)."""
        state = self._dbs.get(db)
        if state is not None:
            state.log.sync()

    def rename(self, old: str, new: str) -> None:
        """The database `old` is now called `new`: its log and state move with it.

        The records are rewritten under the new name (TXIDs and checksums
        unchanged) into `new`'s log, replacing whatever `new` had; `old`'s log
        becomes one dropped transaction, so its TXIDs stay monotonic. A
        replica that held `new` before notices the change through its
        checksums and needs a snapshot. Blocking (copies and fsyncs the log).
        """
        _check_name(old)
        _check_name(new)
        if old == new:
            return
        src = self._dbs.get(old) or self._open(old)
        last = src.log.last
        if last is None or last.dropped:
            # Nothing known was renamed: `new` now holds an unlogged file.
            self.drop(new)
            return
        if not src.loaded:
            raise StoreError(f"{old}: its log has transactions but load() was not called")
        src.log.sync()
        tombstone = self._dropped(old, last)
        new_path = self._path(new)
        new_tmp = new_path + ".rename"
        old_tmp = src.log.path + ".rename"
        try:
            _write_log(new_tmp, (replace(txn, db=new) for txn in src.log.read()))
            _write_log(old_tmp, [tombstone])
        except BaseException:
            for tmp in (new_tmp, old_tmp):
                _unlink_quietly(tmp)
            raise
        # Closed first, so that a compaction running in another thread cannot
        # rename its copy over the files replaced here.
        src.log.close()
        dst = self._dbs.pop(new, None)
        if dst is not None:
            dst.log.close()
        # A crash between the two renames leaves `old` dropped and `new` with
        # its previous log (or none): load() then reports a mismatch for `new`
        # (or snapshots it): never a silently wrong history.
        os.rename(old_tmp, src.log.path)
        os.rename(new_tmp, new_path)
        _fsync_dir(self.logs_dir)
        self._dbs[old] = _Db(TransactionLog.open(self._path(old)), None, True)
        self._dbs[new] = _Db(TransactionLog.open(new_path), src.hashes, True)
        self._notify(tombstone)
        # `new` has another history now: listeners see its last transaction
        # (replica sessions compare it with what they sent, and resynchronise).
        if last is not None:
            self._notify(replace(last, db=new))

    def bytes_after(self, db: str, txid: int) -> int:
        """Bytes of `db`'s logged transactions after TXID `txid` (0 for a database without a log)."""
        state = self._dbs.get(db)
        return state.log.bytes_after(txid) if state is not None else 0

    def position(self, db: str) -> tuple[int, int] | None:
        """(TXID, post-checksum) of `db`'s last transaction, or None (any thread)."""
        state = self._dbs.get(db)
        last = state.log.last if state is not None else None
        return None if last is None else (last.txid, last.post_checksum)

    # ------------------------------------------------------------ listeners

    def add_listener(self, callback: Listener) -> None:
        """Call `callback(txn)` after every transaction is appended (on the committing thread).

        A listener must be quick and must not raise: an exception is logged
        and ignored (the transaction is already logged).
        """
        self._listeners = (*self._listeners, callback)

    def remove_listener(self, callback: Listener) -> None:
        self._listeners = tuple(cb for cb in self._listeners if cb is not callback)

    def _notify(self, txn: Transaction) -> None:
        for callback in self._listeners:
            try:
                callback(txn)
            except Exception:
                log.exception("transaction listener %r failed on %s TXID %d",
                              callback, txn.db, txn.txid)

    # ------------------------------------------------------------ startup

    def databases(self) -> list[str]:
        """Names of the databases that have a log, on disk or open."""
        names = {n[: -len(LOG_SUFFIX)] for n in os.listdir(self.logs_dir) if n.endswith(LOG_SUFFIX)}
        return sorted(names | set(self._dbs))

    def load(
        self, db: str, image: ImageSource, *, reset: bool = False, cut: bool = True
    ) -> tuple[int, int] | None:
        """Open `db`'s log (cutting a torn tail) and check it against the committed image.

        `image` is the database's committed content (bytes, or a callable
        returning them; empty when the file does not exist). Equal checksums:
        ready. Empty log: one snapshot transaction with every page is logged
        (TXID 1). The image equal to an earlier logged position (and `cut`):
        the transactions after it, which the database does not have, are cut
        from the log with a WARNING. Other checksums: ChecksumMismatchError —
        or, with `reset`, an ERROR log line and a snapshot transaction that
        continues the TXIDs. Returns the position afterwards.
        """
        if callable(image):
            image = image()
        hashes = _image_hashes(db, image)
        actual = hashes.checksum if hashes is not None else 0
        state = self._dbs.get(db) or self._open(db)
        state.loaded = False
        last = state.log.last
        if last is None or last.dropped:
            if hashes is not None:
                if last is not None and not reset:
                    raise ChecksumMismatchError(db, last.txid, last.post_checksum, actual)
                self._snapshot(state, db, image, hashes, last)
        elif last.post_checksum != actual and cut and self._cut_unapplied_tail(db, state.log, actual):
            pass
        elif last.post_checksum != actual:
            if not reset:
                raise ChecksumMismatchError(db, last.txid, last.post_checksum, actual)
            log.error("%s: database checksum %016x is not %016x logged at TXID %d; "
                      "logging a snapshot of the database as TXID %d",
                      db, actual, last.post_checksum, last.txid, last.txid + 1)
            if hashes is None:
                self._append(state, self._dropped(db, last))
            else:
                self._snapshot(state, db, image, hashes, last)
        state.hashes = hashes
        state.loaded = True
        state.log.sync()
        return self.position(db)

    @staticmethod
    def _cut_unapplied_tail(db: str, txlog: TransactionLog, actual: int) -> bool:
        """Cut the log back to the last TXID whose checksum is the database's; True if found.

        The log runs ahead of the database when a transaction was logged but
        SQLite never completed its commit (the daemon died between logging and
        the journal's removal, and the hot journal was rolled back), or when a
        crash lost a commit the log had (`synchronous=OFF`/`NORMAL`).
        """
        match = None
        for txn in txlog.read():
            if txn.dropped:
                match = None  # never cut back across a drop
            elif txn.post_checksum == actual:
                match = txn.txid
        if match is None:
            return False
        removed = txlog.truncate_after(match)
        log.warning("%s: the database is at TXID %d; removed %d logged transaction(s) after it "
                    "that SQLite never committed or a crash lost", db, match, removed)
        return True

    def _snapshot(
        self, state: _Db, db: str, image: bytes | bytearray | memoryview,
        hashes: PageHashes, last: Transaction | None,
    ) -> None:
        page_size = hashes.page_size
        lock = lock_page(page_size)
        view = memoryview(image)
        pages = {
            pgno: bytes(view[(pgno - 1) * page_size : pgno * page_size])
            for pgno in range(1, hashes.commit_size + 1)
            if pgno != lock
        }
        self._append(state, Transaction(
            db=db,
            txid=last.txid + 1 if last is not None else 1,
            page_size=page_size,
            commit_size=hashes.commit_size,
            pages=pages,
            timestamp_ns=self._clock(),
            node_id=self.node_id,
            pre_checksum=last.post_checksum if last is not None else 0,
            post_checksum=hashes.checksum,
        ))

    # ------------------------------------------------------------ reading

    def read(self, db: str, from_txid: int | None = None) -> Iterator[Transaction]:
        """`db`'s logged transactions from `from_txid` (see TransactionLog.read)."""
        state = self._dbs.get(db)
        if state is None:
            raise StoreError(f"{db}: no such database in the store")
        return state.log.read(from_txid)

    def replay(self, db: str, upto_txid: int | None = None) -> bytes:
        """The database image after TXID `upto_txid` (default: the last), from the log.

        Raises StoreError if the log no longer starts at TXID 1 (retention) or
        does not reach `upto_txid`.
        """
        state = self._dbs.get(db) or self._open(db)
        try:
            return replay(state.log, upto_txid)
        except TxidUnavailableError as exc:
            raise StoreError(f"{db}: {exc}") from None

    # ------------------------------------------------------------ retention

    def compact(self, now_ns: int | None = None) -> dict[str, int]:
        """Apply retention to every log; return the records dropped per database.

        Blocking (rewrites files): run it in a worker thread.
        """
        now = self._clock() if now_ns is None else now_ns
        dropped: dict[str, int] = {}
        for db, state in list(self._dbs.items()):
            def keep_from(state: _Db = state) -> int | None:
                """A commit that waits for its replicas may be taken back: keep the record before it."""
                undo = state.undo
                return undo[0] - 1 if undo is not None else None

            try:
                n = state.log.compact(self.retention_seconds, self.retention_max_bytes, now, keep_from)
            except LogClosedError:
                continue  # renamed or closed meanwhile
            if n:
                dropped[db] = n
        return dropped

    def close(self) -> None:
        """fsync and close every log."""
        dbs, self._dbs = self._dbs, {}
        for state in dbs.values():
            try:
                state.log.sync()
            finally:
                state.log.close()

    # ------------------------------------------------------------ helpers

    def _path(self, db: str) -> str:
        return os.path.join(self.logs_dir, db + LOG_SUFFIX)

    def _open(self, db: str) -> _Db:
        _check_name(db)
        txlog = TransactionLog.open(self._path(db))
        last = txlog.last
        state = _Db(txlog, None, last is None or last.dropped)
        self._dbs[db] = state
        return state

    def _append(self, state: _Db, txn: Transaction) -> None:
        state.log.append(txn)
        self._notify(txn)

    def _dropped(self, db: str, last: Transaction) -> Transaction:
        return Transaction(
            db=db,
            txid=last.txid + 1,
            page_size=last.page_size,
            commit_size=0,
            pages={},
            timestamp_ns=self._clock(),
            node_id=self.node_id,
            pre_checksum=last.post_checksum,
            post_checksum=0,
            dropped=True,
        )


def _check_name(db: str) -> None:
    if not db or "/" in db or "\0" in db or db in (".", ".."):
        raise StoreError(f"invalid database name {db!r}")


def _fast_pages(
    pages: Mapping[int, bytes], page_size: int, commit_size: int, lock: int
) -> dict[int, bytes] | None:
    """`pages` as a new dict in page number order if `Transaction.trusted` may take it, else None.

    None (the caller then uses the checking constructor) unless every page
    number is an int in 1..`commit_size` other than the lock page, every
    page is `bytes` of `page_size` bytes, and `page_size`/`commit_size`
    are ints within range.
    """
    if type(page_size) is not int or type(commit_size) is not int or commit_size > 0xFFFFFFFF:
        return None
    ordered: dict[int, bytes] = {}
    prev = 0
    in_order = True
    for pgno, page in pages.items():
        if (
            type(pgno) is not int
            or not 0 < pgno <= commit_size
            or pgno == lock
            or type(page) is not bytes
            or len(page) != page_size
        ):
            return None
        if pgno < prev:
            in_order = False
        prev = pgno
        ordered[pgno] = page
    return ordered if in_order else dict(sorted(ordered.items()))


def _check_full(db: str, page_size: int, commit_size: int, pages: Mapping[int, bytes]) -> None:
    expected = commit_size - (1 if lock_page(page_size) <= commit_size else 0)
    if len(pages) != expected:
        raise StoreError(
            f"{db}: a transaction that changes the page size must hold every page: "
            f"got {len(pages)} of {expected}"
        )


def _image_hashes(db: str, image: bytes | bytearray | memoryview) -> PageHashes | None:
    if not len(image):
        return None
    try:
        page_size = parse_db_header(image).page_size
    except FormatError as exc:
        raise StoreError(f"{db}: not a database: {exc}") from None
    if len(image) % page_size:
        raise StoreError(f"{db}: image of {len(image)} bytes is not whole {page_size}-byte pages")
    return PageHashes.from_image(image, page_size)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _write_log(path: str, txns: Iterator[Transaction] | list[Transaction]) -> None:
    """Write `txns` as a fresh, fsynced log file at `path` (replacing any leftover)."""
    _unlink_quietly(path)
    with TransactionLog.open(path) as txlog:
        for txn in txns:
            txlog.append(txn)
        txlog.sync()
