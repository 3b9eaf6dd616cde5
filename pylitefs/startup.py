"""Bringing the data dir and the transaction logs into agreement before mounting.

For every database: roll back a hot journal (fs.recovery), compute the
committed content (database file + committed WAL frames), and load it into the
store. The log can lag the WAL by the last few commits — a crash after SQLite's
commit frame reached the data dir but before its transaction reached the log —
and those commits are then logged now. Any other disagreement is reported at
ERROR level and resolved by logging a full snapshot of the database as the
next TXID, so replicas resynchronise from it: never silently accepted.
"""

from __future__ import annotations

import logging
import os

from fs.formats import FormatError
from fs.formats.image import apply_pages
from fs.recovery import RecoveredDatabase, databases, read_file, recover
from replication.checksum import ChecksumError, PageHashes, database_checksum
from replication.store import ChecksumMismatchError, Store, StoreError

log = logging.getLogger(__name__)


def recover_databases(data_dir: str, store: Store) -> None:
    """Recover every database of `data_dir` into `store` (blocking: run in a thread)."""
    dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = []
        for db in databases(dir_fd):
            try:
                recovered = recover(dir_fd, db)
            except FormatError as exc:
                log.error("%s in the data dir is not a SQLite database (%s); leaving it alone", db, exc)
                continue
            _recover_one(store, recovered)
            names.append(db)
    finally:
        os.close(dir_fd)
    for db in store.databases():
        if db not in names:
            try:
                store.load(db, b"")
            except ChecksumMismatchError:
                log.warning("%s: deleted while the node was down; logging it as dropped", db)
                store.load(db, b"", reset=True)
    log.info("recovered %d database(s)", len(names))


def _recover_one(store: Store, rec: RecoveredDatabase) -> None:
    """Load `rec` into the store, explaining any difference between it and the log.

    In order: an exact match; the log lagging the WAL by its last commits;
    the log ahead of the database (cut back); else a full snapshot. Cutting
    comes after the WAL check because a WAL database can return to an earlier
    state, and a cut would then discard committed transactions.
    """
    try:
        store.load(rec.name, rec.image, cut=False)
        return
    except ChecksumMismatchError as exc:
        mismatch = exc
    logged_commits = _logged_wal_commits(rec, mismatch.logged)
    if logged_commits is not None:
        store.load(rec.name, _image_after(rec, logged_commits), cut=False)
        missing = rec.wal_commits[logged_commits:]
        for commit in missing:
            store.commit(rec.name, commit.page_size, commit.commit_size, commit.pages)
        log.warning("%s: logged %d committed WAL transaction(s) that had not reached the log",
                    rec.name, len(missing))
        return
    try:
        store.load(rec.name, rec.image, cut=True)
        return
    except ChecksumMismatchError:
        pass
    log.error("%s: the database does not match its log (logged checksum %016x at TXID %d, "
              "on disk %016x); logging a full snapshot so that replicas resynchronise",
              rec.name, mismatch.logged, mismatch.txid, mismatch.actual)
    store.load(rec.name, rec.image, reset=True)


def _logged_wal_commits(rec: RecoveredDatabase, logged_checksum: int) -> int | None:
    """How many of `rec`'s committed WAL transactions the log has: None if no prefix matches.

    The largest k below their number such that the database file with the
    first k applied has the checksum `logged_checksum` (the log's last). One
    pass, updating the page hashes commit by commit: a power loss can leave
    the log behind by every commit since the last checkpoint (fs.capture).
    """
    try:
        hashes = PageHashes.from_image(rec.database_file, rec.page_size) if rec.database_file else None
    except ChecksumError:
        return None
    found = 0 if (hashes.checksum if hashes is not None else 0) == logged_checksum else None
    for k, commit in enumerate(rec.wal_commits[:-1], start=1):
        if hashes is None:
            hashes = PageHashes(commit.page_size)
        elif hashes.page_size != commit.page_size:
            break  # cannot happen in WAL mode: nothing later can match either
        if hashes.apply(commit.pages, commit.commit_size) == logged_checksum:
            found = k
    return found


def _image_after(rec: RecoveredDatabase, commits: int) -> bytes:
    """The database file with only the first `commits` committed WAL transactions applied."""
    image = bytearray(rec.database_file)
    for commit in rec.wal_commits[:commits]:
        apply_pages(image, commit.page_size, commit.commit_size, commit.pages)
    return bytes(image)


def recover_replica_databases(data_dir: str, store: Store) -> None:
    """Bring a replica's copies back to the last logged transaction (blocking: run in a thread).

    A replica logs each transaction before it writes the pages (the log is
    fsynced soon after, before the transaction is acknowledged; the pages are
    never fsynced), so after a crash a copy is at its log's last TXID, or
    behind it and part-way through later ones. The logged transactions are
    then written again, oldest first: their pages are whole, so replaying a
    suffix that starts at or before the copy's state ends exactly at the last
    one. A copy that still does not match (changed behind the daemon's back, or
    a snapshot whose pages never reached the file) is reported at ERROR level
    and discarded with its log; the primary sends a snapshot when the replica
    connects.
    """
    dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = set(databases(dir_fd)) | set(store.databases())
        for db in sorted(names):
            try:
                image = read_file(dir_fd, db) or b""
                store.load(db, image, cut=False)
                continue
            except ChecksumMismatchError as exc:
                mismatch: Exception = exc
            except (StoreError, FormatError) as exc:
                mismatch = exc
            try:
                if _redo_log(dir_fd, store, db):
                    continue
            except Exception as exc:  # an unreadable log: handled like any mismatch below
                log.warning("%s: cannot replay the log onto the copy: %s", db, exc)
            log.error("%s: the local copy does not match its log (%s); discarding it, "
                      "the primary will send a snapshot", db, mismatch)
            _remove_database(dir_fd, db)
            store.forget(db)
    finally:
        os.close(dir_fd)


def _redo_log(dir_fd: int, store: Store, db: str) -> bool:
    """Write `db`'s logged transactions into its file again; True if it then matches the log."""
    last = store.last(db)
    if last is None:
        return False
    buf = bytearray(read_file(dir_fd, db) or b"")
    for txn in store.read(db):
        if txn.dropped:
            buf.clear()
        else:
            apply_pages(buf, txn.page_size, txn.commit_size, txn.pages)
    if last.dropped or not last.commit_size:
        image = b""
    elif database_checksum(buf, last.page_size) != last.post_checksum:
        return False
    else:
        image = bytes(buf)
    if image:
        fd = os.open(db, os.O_RDWR | os.O_CREAT, 0o644, dir_fd=dir_fd)
        try:
            os.pwrite(fd, image, 0)
            os.ftruncate(fd, len(image))
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        _remove_database(dir_fd, db)
    os.fsync(dir_fd)
    try:
        store.load(db, image, cut=False)
    except ChecksumMismatchError:
        return False
    log.warning("%s: the copy was not at its log's last TXID %d; rewrote it from the log (the node "
                "stopped while applying, or the file was changed behind its back)", db, last.txid)
    return True


def _remove_database(dir_fd: int, db: str) -> None:
    """Delete `db` and its WAL and shared memory from the data dir (durably)."""
    for name in (db, f"{db}-wal", f"{db}-shm"):
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
    os.fsync(dir_fd)
