"""Applying replicated transactions to a replica's databases, through its own mount (DESIGN §5).

The daemon writes *through its mount* from a worker thread registered with
`Access.thread()`: the mount passes those requests through (no capture, no
replica refusal), and the kernel's page cache — which every reader on this
host reads and mmaps, `-shm` included — is updated in place. Nothing is
changed behind the kernel's back, so nothing needs invalidating.

One `Applier.apply(db, txns)` applies consecutive transactions of one
database under one acquisition of SQLite's writer locks (`fs.locks`), taken
for the mode the replica's file is in *before* the batch:

- rollback mode: PENDING, then the SHARED range, exclusive. Readers re-read
  their cache when page 1's change counter moves, which every rollback-mode
  commit changes.
- WAL mode: the database's SHARED lock (as every WAL connection holds it: a
  `locking_mode=EXCLUSIVE` connection, which keeps no wal-index and would
  never notice an apply, makes applies wait until it closes), WRITE and
  CKPT exclusive, then READ0..READ4 exclusive. If a
  reader is inside a transaction, the new wal-index header is first written
  into copy 1 of the `-shm` header only: while the copies differ every new
  reader retries (walIndexTryHdr), so the readers inside drain and the READ
  locks cannot starve (fences are bounded: `fs.locks.FENCE_LIMIT`). Then
  the pages are written, and the header published: copy 0 (both copies in
  one write when there was no fence), and the checkpoint info reset as
  wal.c's walRestartHdr leaves it for an empty WAL if it is not already (a
  stale nBackfill above mxFrame would make a later checkpoint skip frames).
  The new header is the old one with change counter + 1, mxFrame 0 and
  nPage the new size: readers see it changed, drop their page cache and
  mmap, and take the database size from nPage. A header SQLite's recovery
  built from the empty WAL (page size 0) is valid too.
  The applier holds DMS shared for as long as it keeps a `-shm` open: no
  connection can then re-initialise the wal-index (only the first to attach
  does), so the header it last published is what the file holds and is not
  read again. A `-shm` without a valid header is left to the readers, whose
  recovery needs the WRITE lock: never while an apply runs.

The replica's WAL stays empty: `<db>-wal` exists (empty) exactly while page 1
says WAL — SQLite cannot open a WAL database whose WAL it may not create —
and a stale `<db>-journal` is removed the first time a database is applied
to (a replica's SQLite never writes one; a leftover would look hot).

Descriptors stay open between calls, one database descriptor and one `-shm`
descriptor per database (measured: reopening them costs 6 FUSE requests and
~0.55 ms per apply). They are valid while this node is a replica; `close()`
the applier when the node stops being one (a primary's SQLite may delete and
recreate `-wal`/`-shm`, and the DMS lock would keep a stale wal-index alive).

Limit: WAL connections opened before the primary left WAL mode keep their
database SHARED lock (and their WAL mode), so rollback-mode applies wait
(LockTimeout) until they close (measured).

A transaction with `dropped=True` deletes the database and its companions.
Nothing is fsynced: the node logs and fsyncs transactions before applying
them and re-applies them after a crash.

`Applier.settle(db, data_dir_fd)` is for a primary that was just fenced or
demoted, before anything is applied: an application's transaction may have
been cut in the middle (a hot `-journal` and a partly written database in
rollback mode; uncommitted frames in the WAL), and the WAL holds committed
frames not yet checkpointed, which the applier (database file only, WAL
empty) would ignore. Under the writer locks of the file's current mode (as
`apply`), settle computes the committed content from the data dir
(`fs.recovery.committed_content`, hot journal undone, committed WAL frames
applied), writes through the mount only the pages that differ and cuts the
file to its size, fsyncs it, then empties the WAL (kept, empty, while the
database is in WAL mode), removes the journal, and publishes the wal-index
header (mxFrame 0, nPage). The fsync comes first so that a crash leaves
either the journal/WAL that recovery replays to the same content, or the
content itself. A database with no `-journal` and an empty or absent WAL is
left untouched (nothing written, no lock taken). It must be called once the
mount refuses application writes (`Access.writable()` False): then nothing
but the daemon changes the files.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fs.access import Access
from fs.formats import FormatError, is_valid_page_size, lock_page
from fs.formats.dbheader import JOURNAL_MODE_WAL
from fs.formats.shm import (
    INDEX_HEADER_SIZE,
    SHM_HEADER_SIZE,
    CheckpointInfo,
    WalIndexHeader,
    parse_checkpoint_info,
    parse_shm_header,
)
from fs.locks import DEFAULT_LOCK_TIMEOUT, SHARED, SHM_DMS, acquire, rollback_reader, rollback_writer, wal_writer
from fs.names import Kind, classify
from fs.recovery import committed_content

if TYPE_CHECKING:  # fs does not depend on replication at run time
    from replication.txn import Transaction

log = logging.getLogger(__name__)

__all__ = ["Applier", "ApplyError", "merge"]

_WRITE_VERSION_OFFSET = 18
_READ_VERSION_OFFSET = 19
#: Pages per pwritev call (well under IOV_MAX, 1024).
_MAX_IOV = 256
_FILE_MODE = 0o644
#: Bytes compared and rewritten at a time by `settle` when the content states no page size.
_FALLBACK_CHUNK = 4096


class ApplyError(Exception):
    """Transactions that cannot be applied as given (wrong database, not a database name)."""


@dataclass(frozen=True, slots=True)
class Merged:
    """Consecutive transactions of one database folded into one change of its file.

    Applying it (truncate to `shrink_to` pages if the file is longer, write
    `pages`, set the size to `commit_size` pages) leaves the file exactly as
    applying the transactions one by one would.
    """

    page_size: int
    commit_size: int
    shrink_to: int
    pages: dict[int, bytes]


def merge(txns: Sequence[Transaction]) -> Merged:
    """Fold `txns` (consecutive, none dropped) into one change: later pages win.

    A page beyond a later transaction's commit size is forgotten (the file
    was cut there), `shrink_to` is the smallest size the file had within the
    batch, and a change of page size rewrites the file from empty.
    """
    first = txns[0]
    page_size = first.page_size
    shrink_to = first.commit_size
    pages: dict[int, bytes] = {}
    top = 0  # highest page number in `pages`
    for txn in txns:
        if txn.dropped:
            raise ApplyError(f"{txn.db}: a dropped transaction cannot be merged")
        if txn.page_size != page_size:
            page_size = txn.page_size
            pages.clear()
            top = shrink_to = 0
        shrink_to = min(shrink_to, txn.commit_size)
        if top > txn.commit_size:
            for pgno in [p for p in pages if p > txn.commit_size]:
                del pages[pgno]
            top = max(pages, default=0)
        if txn.pages:
            pages.update(txn.pages)
            top = max(top, max(txn.pages))
    return Merged(page_size, txns[-1].commit_size, shrink_to, pages)


@dataclass(slots=True, eq=False)
class _Target:
    """One database of the mount as the applier keeps it open."""

    fd: int  # the database, read-write, opened through the mount
    size: int  # its size in bytes, as the applier left it
    wal_mode: bool  # page 1 says WAL
    wal_exists: bool
    journal_checked: bool = False
    # The `-shm`, with DMS held shared for as long as it is open: no SQLite
    # connection can then re-initialise the wal-index, so `shm_header`, the
    # header the applier last published there, is what the file holds.
    shm_fd: int | None = None
    shm_header: WalIndexHeader | None = None

    def close(self) -> None:
        for fd in (self.fd, self.shm_fd):
            if fd is not None:
                os.close(fd)
        self.shm_fd = None


class _ShmUpdate:
    """The wal-index header change of one WAL-mode apply (see the module docstring)."""

    def __init__(self, target: _Target, n_page: int) -> None:
        assert target.shm_fd is not None
        self._target = target
        self._fd = target.shm_fd
        #: The database's size in pages once applied; may be set until `publish`.
        self.n_page = n_page
        self._read = False
        self._old: WalIndexHeader | None = None
        self._ckpt: CheckpointInfo | None = None  # None: already as after_restart
        self._fenced: WalIndexHeader | None = None  # what `fence` wrote into copy 1

    def _load(self) -> None:
        """The header now in the `-shm`: the one the applier last published, else read."""
        if self._read:
            return
        self._read = True
        if self._target.shm_header is not None:
            self._old = self._target.shm_header
            return
        data = os.pread(self._fd, SHM_HEADER_SIZE, 0)
        try:
            self._old = parse_shm_header(data)
            ckpt = parse_checkpoint_info(data)
        except FormatError:
            return  # no valid wal-index: every reader must recover it (needs WRITE: ours)
        if ckpt.after_restart() != ckpt:
            self._ckpt = ckpt

    def fence(self) -> Callable[[], None] | None:
        """Write copy 1 of the new header if the `-shm` holds a valid one; return the undo."""
        self._load()
        old = self._old
        if old is None:
            return None
        self._target.shm_header = None  # until published
        fenced = old.after_apply(self.n_page)
        os.pwrite(self._fd, fenced.to_bytes(), INDEX_HEADER_SIZE)
        self._fenced = fenced

        def undo() -> None:
            os.pwrite(self._fd, old.to_bytes(), INDEX_HEADER_SIZE)
            self._target.shm_header = old

        return undo

    def publish(self) -> None:
        """Write copy 0 (and copy 1 if not fenced, and the checkpoint info if needed)."""
        self._load()
        if self._old is None:
            return
        new = self._old.after_apply(self.n_page)
        one = new.to_bytes()
        self._target.shm_header = None
        if self._ckpt is not None:
            os.pwrite(self._fd, one + one + self._ckpt.after_restart().to_bytes(), 0)
        elif self._fenced == new:
            os.pwrite(self._fd, one, 0)
        else:
            # Not fenced (no reader could take a READ lock since before), or
            # fenced with another nPage (settle learns it after the locks):
            # one write, both copies.
            os.pwrite(self._fd, one + one, 0)
        self._target.shm_header = new


class Applier:
    """Writes replicated transactions into the databases of the mount at `mount_dir`.

    Blocking; call from a worker thread (never from the thread serving the
    mount). Calls are serialised.
    """

    def __init__(self, mount_dir: str, access: Access, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self._mount_dir = mount_dir
        self._access = access
        self._lock_timeout = lock_timeout
        self._targets: dict[str, _Target] = {}
        self._mutex = threading.Lock()
        # db -> (TXID, checksum) of the last transaction applied by this applier.
        self._applied: dict[str, tuple[int, int]] = {}

    def apply(self, db: str, txns: Sequence[Transaction]) -> None:
        """Apply consecutive transactions of `db`, in order, each run of them under one lock.

        Raises LockTimeout when SQLite's locks cannot be taken in time (a
        long read transaction), OSError on I/O errors; either way the caller
        retries the same transactions later (applying is idempotent).
        """
        if not txns:
            return
        if any(txn.db != db for txn in txns):
            raise ApplyError(f"transactions of other databases given to apply({db!r})")
        if classify(db).kind is not Kind.DATABASE:
            raise ApplyError(f"{db!r} is not a database name")
        with self._mutex, self._access.thread():
            self._applied.pop(db, None)  # unknown until the batch is through
            run: list[Transaction] = []
            for txn in txns:
                if txn.dropped:
                    if run:
                        self._apply_run(db, merge(run))
                        run = []
                    self._drop(db)
                else:
                    run.append(txn)
            if run:
                self._apply_run(db, merge(run))
            last = txns[-1]
            if not last.dropped:
                self._applied[db] = (last.txid, last.post_checksum)

    def read_applied(self, db: str, data_dir_fd: int) -> tuple[bytes, tuple[int, int] | None]:
        """(`db`'s content in the data dir, the position this applier last applied to it), at one instant.

        Taken between two applies, so the content is exactly that position's
        (None when this applier has applied nothing to `db` since it was
        created or since `settle`/`forget`: the caller's position then holds).
        For scrubbing a replica: its files change only through the applier.
        """
        with self._mutex:
            return committed_content(data_dir_fd, db).image, self._applied.get(db)

    def settle(self, db: str, data_dir_fd: int) -> bytes:
        """Make `db`'s file in the mount hold exactly its committed content; return that content.

        For a node that was just fenced (see the module docstring): a hot
        journal is rolled back, committed WAL frames are written into the
        database file, and the WAL is emptied. `data_dir_fd` is the data
        dir, where the committed content is read (`fs.recovery`). A database
        that does not exist is b"" (a leftover `-journal` or `-wal` of it is
        removed). Raises LockTimeout or OSError as `apply` does; settling
        again after an error is safe.
        """
        if classify(db).kind is not Kind.DATABASE:
            raise ApplyError(f"{db!r} is not a database name")
        with self._mutex, self._access.thread():
            self._applied.pop(db, None)
            # Reopen: whatever the applier knew of the file predates the primary's term.
            target = self._targets.pop(db, None)
            if target is not None:
                target.close()
            if not _exists(data_dir_fd, db):
                for name in (f"{db}-journal", f"{db}-wal"):
                    if _exists(data_dir_fd, name):
                        _unlink_quietly(self._path(name))
                return b""
            if not _exists(data_dir_fd, f"{db}-journal") and _size(data_dir_fd, f"{db}-wal") == 0:
                # Nothing to undo nor to move: nothing can change it while fenced.
                image = committed_content(data_dir_fd, db).image
                if _says_wal(image[:_READ_VERSION_OFFSET + 1]) and not _exists(data_dir_fd, f"{db}-wal"):
                    # A primary's last connection deleted it; a replica's readers cannot create it.
                    _create_empty(self._path(f"{db}-wal"))
                return image
            return self._settle(db, data_dir_fd)

    def _settle(self, db: str, data_dir_fd: int) -> bytes:
        target = self._target(db)
        target.journal_checked = True  # removed below
        shm: _ShmUpdate | None = None
        lock: AbstractContextManager[None]
        if target.wal_mode:
            self._open_shm(db, target)
            assert target.shm_fd is not None
            shm = _ShmUpdate(target, 0)  # nPage known once the content is read, under the locks
            lock = _wal_apply_locks(target.fd, target.shm_fd, self._lock_timeout, shm)
        else:
            lock = rollback_writer(target.fd, self._lock_timeout)
        try:
            with lock:
                rec = committed_content(data_dir_fd, db, undo_hot_journal=True)
                image = rec.image
                page_size = rec.page_size if is_valid_page_size(rec.page_size) else _FALLBACK_CHUNK
                pages = _changed_pages(rec.database_file, image, page_size)
                if pages:
                    _write_pages(target.fd, page_size, pages)
                if len(image) != len(rec.database_file):
                    os.ftruncate(target.fd, len(image))
                if pages or len(image) != len(rec.database_file):
                    os.fsync(target.fd)  # before the journal or the WAL that could redo it goes
                target.size = len(image)
                final_wal = _says_wal(image[:_READ_VERSION_OFFSET + 1])
                wal = self._path(f"{db}-wal")
                if final_wal and target.wal_exists and os.stat(wal).st_size:
                    os.truncate(wal, 0)
                self._match_wal(db, target, final_wal)
                _unlink_quietly(self._path(f"{db}-journal"))
                if shm is not None:
                    shm.n_page = len(image) // page_size
                    shm.publish()
                target.wal_mode = final_wal
        except BaseException:
            self._targets.pop(db, None)
            target.close()
            raise
        log.info("%s: settled to its committed content (%d pages rewritten, %d bytes)",
                 db, len(pages), len(image))
        return image

    def forget(self, db: str) -> None:
        """Close `db`'s descriptors (e.g. before something else than the applier changes it)."""
        with self._mutex:
            self._applied.pop(db, None)
            target = self._targets.pop(db, None)
            if target is not None:
                target.close()

    def close(self) -> None:
        """Close every descriptor; the applier can still be used (it reopens them)."""
        with self._mutex:
            targets, self._targets = self._targets, {}
            for target in targets.values():
                target.close()

    def __del__(self) -> None:
        try:
            for target in self._targets.values():
                target.close()
        except Exception:  # interpreter shutdown: nothing sensible left to do
            pass

    # ------------------------------------------------------------ internals

    def _path(self, name: str) -> str:
        return os.path.join(self._mount_dir, name)

    def _target(self, db: str) -> _Target:
        target = self._targets.get(db)
        if target is not None:
            return target
        fd = os.open(self._path(db), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, _READ_VERSION_OFFSET + 1, 0) if size else b""
            wal_exists = os.path.exists(self._path(f"{db}-wal"))
        except BaseException:
            os.close(fd)
            raise
        target = self._targets[db] = _Target(fd, size, _says_wal(head), wal_exists)
        return target

    def _apply_run(self, db: str, change: Merged) -> None:
        target = self._target(db)
        page1 = change.pages.get(1)
        final_wal = _says_wal(page1) if page1 is not None else target.wal_mode
        final_size = change.commit_size * change.page_size
        shm: _ShmUpdate | None = None
        lock: AbstractContextManager[None]
        if target.wal_mode:
            if target.shm_fd is None:
                self._open_shm(db, target)
                assert target.shm_fd is not None
            shm = _ShmUpdate(target, change.commit_size)
            lock = _wal_apply_locks(target.fd, target.shm_fd, self._lock_timeout, shm)
        else:
            lock = rollback_writer(target.fd, self._lock_timeout)
        try:
            with lock:
                shrink = change.shrink_to * change.page_size
                if shrink < target.size:
                    os.ftruncate(target.fd, shrink)
                    target.size = shrink
                target.size = max(target.size, _write_pages(target.fd, change.page_size, change.pages))
                if target.size != final_size:
                    os.ftruncate(target.fd, final_size)
                    target.size = final_size
                if not target.journal_checked:
                    _unlink_quietly(self._path(f"{db}-journal"))
                    target.journal_checked = True
                self._match_wal(db, target, final_wal)
                if shm is not None:
                    shm.publish()
                target.wal_mode = final_wal
        except BaseException:
            # What the applier knows of the file (size, mode) may be wrong now:
            # reopen next time. The locks were released by the `with` above.
            self._targets.pop(db, None)
            target.close()
            raise

    def _match_wal(self, db: str, target: _Target, wal_mode: bool) -> None:
        """`<db>-wal` exists (empty when created) exactly while the database is in WAL mode."""
        if wal_mode and not target.wal_exists:
            _create_empty(self._path(f"{db}-wal"))
            target.wal_exists = True
        elif not wal_mode and target.wal_exists:
            _unlink_quietly(self._path(f"{db}-wal"))
            target.wal_exists = False

    def _open_shm(self, db: str, target: _Target) -> None:
        """Open (create) `db`'s `-shm` and take DMS shared for as long as it stays open."""
        fd = os.open(self._path(f"{db}-shm"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        try:
            # A connection holding DMS exclusive is initialising the file: wait for it.
            acquire(fd, SHARED, SHM_DMS, 1, time.monotonic() + self._lock_timeout, "DMS")
        except BaseException:
            os.close(fd)
            raise
        target.shm_fd = fd
        target.shm_header = None

    def _drop(self, db: str) -> None:
        target = self._targets.pop(db, None)
        if target is not None:
            target.close()
        for name in (db, f"{db}-wal", f"{db}-shm", f"{db}-journal"):
            _unlink_quietly(self._path(name))
        log.info("%s: dropped", db)


@contextmanager
def _wal_apply_locks(db_fd: int, shm_fd: int, timeout: float, shm: _ShmUpdate) -> Iterator[None]:
    """The database's SHARED lock, as every WAL connection holds it, then `wal_writer`.

    SHARED keeps the apply out while a `locking_mode=EXCLUSIVE` connection
    (which uses no wal-index and holds the database EXCLUSIVE) is open:
    it would never notice the change.
    """
    deadline = time.monotonic() + timeout
    with rollback_reader(db_fd, timeout), \
            wal_writer(shm_fd, max(0.0, deadline - time.monotonic()), fence=shm.fence, take_dms=False):
        yield


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _size(dir_fd: int, name: str) -> int:
    """The size of `name` in the data dir, 0 if it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


def _changed_pages(old: bytes, new: bytes, page_size: int) -> dict[int, bytes]:
    """The pages of `new` whose bytes differ from `old` (page by page), never the lock page."""
    skip = lock_page(page_size) if is_valid_page_size(page_size) else 0
    pages = {}
    for pgno in range(1, (len(new) + page_size - 1) // page_size + 1):
        start = (pgno - 1) * page_size
        page = new[start : start + page_size]
        if pgno != skip and old[start : start + page_size] != page:
            pages[pgno] = page
    return pages


def _says_wal(page1: bytes | None) -> bool:
    """True when page 1 (or the start of the file) says WAL mode (bytes 18 and 19 are 2)."""
    return (
        page1 is not None
        and len(page1) > _READ_VERSION_OFFSET
        and page1[_WRITE_VERSION_OFFSET] == JOURNAL_MODE_WAL
        and page1[_READ_VERSION_OFFSET] == JOURNAL_MODE_WAL
    )


def _write_pages(fd: int, page_size: int, pages: dict[int, bytes]) -> int:
    """Write `pages` with one pwritev per run of consecutive page numbers; the end offset reached."""
    end = 0
    run: list[bytes] = []
    run_start = 0
    previous = -1
    for pgno in sorted(pages):
        if run and (pgno != previous + 1 or len(run) >= _MAX_IOV):
            end = max(end, _write_all(fd, run, (run_start - 1) * page_size))
            run = []
        if not run:
            run_start = pgno
        run.append(pages[pgno])
        previous = pgno
    if run:
        end = max(end, _write_all(fd, run, (run_start - 1) * page_size))
    return end


def _write_all(fd: int, buffers: list[bytes], offset: int) -> int:
    """pwritev all of `buffers` at `offset` (finishing a short write); the end offset."""
    total = sum(len(b) for b in buffers)
    written = os.pwritev(fd, buffers, offset) if len(buffers) > 1 else os.pwrite(fd, buffers[0], offset)
    if written < total:
        rest = b"".join(buffers)[written:]
        while rest:
            n = os.pwrite(fd, rest, offset + written)
            written += n
            rest = rest[n:]
    return offset + total


def _create_empty(path: str) -> None:
    """Create the file at `path` if it does not exist (through the mount: an empty `-wal`)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
