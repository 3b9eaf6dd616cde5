"""The append-only transaction log of one database (DESIGN §4).

A log file is the concatenation of `replication.txn` records, one per
transaction, with consecutive TXIDs and a checksum chain: the pre-checksum of
each record equals the post-checksum of the one before. The first record need
not be TXID 1: retention (`compact`) drops the oldest records and a log may
start anywhere (`first_txid`).

Opening a log reads and validates every record. What follows the last good
record is cut off (the file is truncated there):

- a torn tail (the file ends inside a record, or the last record is damaged
  and only zeros or the end of the file follow it) is what a crash leaves
  behind while a record was being appended: a WARNING;
- a bad record followed by more data, or a break in the TXID/checksum chain,
  is corruption: an ERROR, and everything after it is cut too (the cut bytes
  are kept next to the log as `<log>.cut-<offset>-<time>` for inspection);
- a record of another record version (`UnsupportedRecordError`): LogError,
  nothing is cut.

Space is allocated ahead: when a small record does not fit, `append` first
writes zeros past it (as many bytes as the log holds, 64 KiB to
`PREALLOCATE`), then writes the record over them. So most appends overwrite
blocks the file already has, and the `sync` after them flushes data only
(fdatasync): an append that grows a file makes its fsync wait for a
file-system journal commit as well, about twice as long on the build machine
(~210 µs against ~125 µs per 4 KiB record). A zero tail after the last record
is that free space: opening keeps it, quietly; only a damaged record before
it is a torn tail. A read-only open reads the file instead of mapping it.

Durability: `append` writes the record with one pwrite() (no fsync); `sync`
fdatasyncs the file, and fsyncs the directory when the file was created or
replaced.

Retention: the log is append-only, so `compact` copies the records it keeps
into a new file, fsyncs it and renames it over the log. A replica that asks
for TXIDs older than `first_txid` cannot be served from the log
(`read` raises `TxidUnavailableError`): it gets a snapshot instead.

Threads: `append` must be called by one thread at a time (the committing
thread); every other method is safe from any thread, also concurrently with
`append`. `sync` fdatasyncs a duplicate descriptor, outside the lock, so it never
blocks appends. `compact` copies the bulk of the log without the lock and
holds it only to copy the records appended meanwhile, fsync and rename: an
append waits for that one fsync. Readers keep reading the file they started
with, even if it is replaced.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from types import TracebackType

from fs.formats.image import apply_pages
from fs.recovery import read_fd
from replication.txn import (
    DEFAULT_MAX_RECORD_SIZE,
    RECORD_HEADER_SIZE,
    CorruptRecordError,
    RecordError,
    Transaction,
    TruncatedRecordError,
    UnsupportedRecordError,
    decode_record,
    encode_record,
    record_size,
)

__all__ = ["LogClosedError", "LogError", "TransactionLog", "TxidUnavailableError"]

log = logging.getLogger(__name__)

_COPY_CHUNK = 1 << 20
#: Bytes of zeros written ahead of the records (see the module's docstring):
#: as many as the log holds, between these bounds; a record larger than the
#: upper one is appended as it is.
PREALLOCATE = 1 << 20
_MIN_PREALLOCATE = 64 << 10
#: Retention by age rewrites the log only once the records it drops are at
#: least this share of its bytes (see `TransactionLog.compact`).
COMPACT_FRACTION = 0.5


class LogError(Exception):
    """A transaction log that cannot do what was asked."""


class LogClosedError(LogError):
    """The log was closed (or replaced by a rename)."""


class TxidUnavailableError(LogError):
    """The log no longer (or not yet) holds the requested TXID."""


class _ChainError(CorruptRecordError):
    """A valid record that does not continue the log (TXID or checksum chain broken)."""


class TransactionLog:
    """One database's append-only log of transaction records. Use `TransactionLog.open`."""

    def __init__(self, path: str, fd: int, *, max_record_size: int) -> None:
        self.path = path
        self._fd = fd
        self._max_record_size = max_record_size
        self._lock = threading.Lock()
        self._compact_lock = threading.Lock()  # one compaction at a time
        # One entry per record, index = txid - first_txid.
        self._offsets = array("Q")
        self._timestamps = array("q")
        self._first_txid = 1
        self._size = 0  # end of the last record
        self._allocated = 0  # end of the file: zeros from `_size` on
        self._last: Transaction | None = None
        self._broken: str | None = None  # why appends are refused
        # Appends counted, and how many of them an fsync covered.
        self._appends = 0
        self._synced_appends = 0
        #: fdatasyncs `sync` made (each covers every record appended before it).
        self.fsyncs = 0
        # The directory entry must be fsynced up to this epoch.
        self._dir_epoch = 0
        self._dir_synced_epoch = 0
        # Counts `truncate_after` cuts: a compaction that saw another count
        # copied records that are gone, and gives up.
        self._truncations = 0

    # ------------------------------------------------------------ opening

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
        readonly: bool = False,
    ) -> TransactionLog:
        """Open (creating if needed) the log at `path`, validate it and cut a bad tail.

        With `readonly` (tools reading a live node's log): the file must
        exist, nothing is ever written, and reading stops quietly before a
        bad or incomplete tail (the node may be appending to it right now).
        The file is read into memory for the scan (a mapping could fault if
        the node cut the file meanwhile).
        """
        path = os.fspath(path)
        created = False
        if readonly:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self = cls(path, fd, max_record_size=max_record_size)
            self._broken = "opened read-only"
            try:
                self._scan(readonly=True)
            except BaseException:
                os.close(fd)
                raise
            return self
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            flags = os.O_RDWR | os.O_CLOEXEC | os.O_CREAT | os.O_EXCL
            fd = os.open(path, flags, 0o644)
            created = True
        self = cls(path, fd, max_record_size=max_record_size)
        try:
            if created:
                self._dir_epoch = 1
            else:
                self._scan()
        except BaseException:
            os.close(fd)
            raise
        return self

    def _scan(self, *, readonly: bool = False) -> None:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        if readonly:
            # Read, not mapped: the node may cut the file meanwhile (a retraction,
            # a failed append), and a mapped page past the new end is a SIGBUS.
            data = read_fd(self._fd, size)
            good, _free = self._scan_records(memoryview(data), len(data), readonly=True)
            self._size = self._allocated = good
            return
        with mmap.mmap(self._fd, size, prot=mmap.PROT_READ) as buf:
            view = memoryview(buf)
            try:
                good, free = self._scan_records(view, size)
            finally:
                view.release()
        if good < size and not free:
            os.ftruncate(self._fd, good)
            os.fsync(self._fd)
        self._size = good
        self._allocated = size if free else good

    def _scan_records(self, view: memoryview, size: int, *, readonly: bool = False) -> tuple[int, bool]:
        """Index the valid records of `view`; return where the good part ends, and whether
        only zeros (space allocated ahead) follow it there."""
        offset = 0
        prev: Transaction | None = None
        foreign = ""
        while offset < size:
            try:
                txn, end = decode_record(view, offset, max_record_size=self._max_record_size)
                if prev is not None:
                    self._check_follows(prev, txn, offset)
            # Log the reason as a string: the exception's traceback holds
            # views of the mmap, which must be gone before it is closed.
            except UnsupportedRecordError as exc:
                foreign = str(exc)  # raised below, once no frame of the decoder holds the mmap
            except RecordError as exc:
                if _all_zeros(view[offset:size]):  # the space allocated ahead: no record here
                    return offset, True
                if readonly:  # the node may be appending right now: stop quietly
                    log.debug("%s: read-only scan stops at offset %d: %s", self.path, offset, str(exc))
                elif isinstance(exc, TruncatedRecordError):
                    log.warning("%s: cutting a torn last record at offset %d (%d bytes): %s",
                                self.path, offset, size - offset, str(exc))
                elif not isinstance(exc, _ChainError) and self._is_torn_tail(view, offset, size):
                    log.warning("%s: cutting a damaged last record at offset %d (%d bytes): %s",
                                self.path, offset, size - offset, str(exc))
                else:
                    kept = self._keep_cut_bytes(view, offset)
                    log.error(
                        "%s: CORRUPT record at offset %d: %s; cutting it and EVERYTHING after "
                        "it (%d bytes, TXIDs after %s are lost from the log; cut bytes kept in %s)",
                        self.path, offset, str(exc), size - offset,
                        prev.txid if prev is not None else "none", kept)
                return offset, False
            if foreign:
                # Not damage: another pylitefs wrote it. Cutting would throw the history away.
                raise LogError(
                    f"{self.path}: {foreign}: written by another version of pylitefs; not opened "
                    "and nothing changed (use that version to export its databases, or move the "
                    "data dir away to start afresh)"
                )
            if prev is None:
                self._first_txid = txn.txid
            self._offsets.append(offset)
            self._timestamps.append(txn.timestamp_ns)
            self._last = prev = txn
            offset = end
        return offset, False

    def _is_torn_tail(self, view: memoryview, offset: int, size: int) -> bool:
        """True when the bad record at `offset` looks like an interrupted append.

        That is: nothing but zeros (space allocated ahead, or left by a crash
        that extended the file) follows the record or, when its header cannot
        be read, follows the header's bytes: an append killed inside them (a
        page boundary can fall there) leaves a piece of header, then the zeros.
        A real record's body never starts with a zero byte (msgpack map or zlib data).
        """
        try:
            end = offset + record_size(view, offset, max_record_size=self._max_record_size)
        except RecordError:
            end = offset + RECORD_HEADER_SIZE
        return end >= size or _all_zeros(view[end:size])

    def _keep_cut_bytes(self, view: memoryview, offset: int) -> str:
        name = f"{self.path}.cut-{offset}-{time.time_ns()}"
        try:
            with open(name, "xb") as f:
                f.write(view[offset:])
        except OSError as exc:
            return f"nowhere ({exc})"
        return name

    def _check_follows(self, prev: Transaction, txn: Transaction, offset: int) -> None:
        if txn.txid != prev.txid + 1:
            raise _ChainError(f"TXID {txn.txid} does not follow {prev.txid}", offset)
        if txn.pre_checksum != prev.post_checksum:
            raise _ChainError(
                f"TXID {txn.txid} pre-checksum {txn.pre_checksum:016x} is not the post-checksum "
                f"{prev.post_checksum:016x} of TXID {prev.txid}",
                offset,
            )

    # ------------------------------------------------------------ state

    @property
    def last(self) -> Transaction | None:
        """The last transaction in the log, or None when it is empty."""
        return self._last

    @property
    def first_txid(self) -> int:
        """TXID of the first record (of the next one when the log is empty)."""
        return self._first_txid

    @property
    def next_txid(self) -> int:
        """TXID the next appended record must have (any TXID >= 1 when the log is empty)."""
        return self._first_txid + len(self._offsets)

    @property
    def size(self) -> int:
        """Bytes of valid records in the file."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def __len__(self) -> int:
        return len(self._offsets)

    # ------------------------------------------------------------ writing

    def append(self, txn: Transaction) -> None:
        """Write `txn` at the end of the log (one pwrite(), no fsync; zeros ahead first, now and then).

        The log must be empty or `txn` must continue it (TXID last + 1, pre-
        checksum = last post-checksum); ValueError otherwise. On an I/O error
        the file is truncated back, so no partial record stays, and the error
        is raised; if even that fails, the log refuses further appends.
        """
        last = self._last
        if last is not None:
            if txn.txid != last.txid + 1:
                raise ValueError(f"{self.path}: TXID {txn.txid} does not follow {last.txid}")
            if txn.pre_checksum != last.post_checksum:
                raise ValueError(
                    f"{self.path}: TXID {txn.txid} pre-checksum {txn.pre_checksum:016x} is not "
                    f"the last post-checksum {last.post_checksum:016x}"
                )
        record = encode_record(txn)
        with self._lock:
            if self._fd < 0:
                raise LogClosedError(f"{self.path} is closed")
            if self._broken is not None:
                raise LogError(f"{self.path}: refusing appends: {self._broken}")
            start = self._size
            end = start + len(record)
            try:
                if end > self._allocated and len(record) <= PREALLOCATE:
                    self._allocate(start + min(PREALLOCATE, max(_MIN_PREALLOCATE, end)))
                written = os.pwrite(self._fd, record, start)
                if written != len(record):
                    view = memoryview(record)
                    while written < len(record):
                        n = os.pwrite(self._fd, view[written:], start + written)
                        if n == 0:
                            raise OSError(errno.EIO, "pwrite() wrote nothing")
                        written += n
            except BaseException:
                self._truncate_back(start)
                raise
            if last is None:
                self._first_txid = txn.txid
            self._offsets.append(start)
            self._timestamps.append(txn.timestamp_ns)
            self._size = end
            self._allocated = max(self._allocated, end)
            self._last = txn
            self._appends += 1

    def truncate_after(self, txid: int) -> int:
        """Remove every record after TXID `txid` (fsynced); returns how many were removed.

        For recovery, and for a commit that synchronous replication failed:
        the database turned out not to have them (SQLite rolled the
        transaction back, or a crash lost it before it was durable). `txid`
        0 empties a log that starts at TXID 1.
        """
        with self._lock:
            if self._fd < 0:
                raise LogClosedError(f"{self.path} is closed")
            keep = txid - self._first_txid + 1
            if keep < 1 and not (txid == 0 and self._first_txid == 1):
                raise TxidUnavailableError(f"{self.path}: TXID {txid} is not in the log")
            removed = len(self._offsets) - keep
            if removed <= 0:
                return 0
            cut = self._offsets[keep]
            self._truncations += 1
            os.ftruncate(self._fd, cut)
            os.fsync(self._fd)
            self._allocated = cut
            if keep == 0:
                self._last = None
            else:
                last_offset = self._offsets[keep - 1]
                buf = os.pread(self._fd, cut - last_offset, last_offset)
                self._last, _ = decode_record(buf, max_record_size=self._max_record_size)
            # New arrays: readers and a compaction under way hold the old ones.
            self._offsets = self._offsets[:keep]
            self._timestamps = self._timestamps[:keep]
            self._size = cut
            return removed

    def bytes_after(self, txid: int) -> int:
        """Bytes of the records with a TXID above `txid` (all of them if `txid` is before the first)."""
        with self._lock:
            index = max(0, txid - self._first_txid + 1)
            return self._size - self._offsets[index] if index < len(self._offsets) else 0

    def _allocate(self, end: int) -> None:
        """Extend the file with zeros up to `end` (under the lock). Best effort: a
        full disk only leaves the record to grow the file itself."""
        offset = self._allocated
        try:
            while offset < end:
                offset += os.pwrite(self._fd, _zeros(min(end - offset, PREALLOCATE)), offset)
        except OSError as exc:
            log.debug("%s: cannot allocate ahead to %d bytes: %s", self.path, end, exc)
        self._allocated = max(self._allocated, offset)

    def _truncate_back(self, size: int) -> None:
        self._allocated = size
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            self._broken = f"cannot cut a failed append back to {size} bytes: {exc}"
            log.error("%s: %s", self.path, self._broken)

    def sync(self) -> None:
        """Make every record appended so far durable (fdatasync; and the directory if needed).

        Safe from any thread, also while `append` runs: it fsyncs a duplicate
        descriptor. Returns at once when nothing was appended since the last
        sync. On a closed log it succeeds if everything appended was synced.
        """
        with self._lock:
            appends = self._appends
            dir_epoch = self._dir_epoch
            need_file = appends > self._synced_appends
            need_dir = dir_epoch > self._dir_synced_epoch
            if not (need_file or need_dir):
                return
            if self._fd < 0:
                raise LogClosedError(f"{self.path} was closed with records not synced")
            fd = os.dup(self._fd) if need_file else -1
        if need_file:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        if need_dir:
            _fsync_dir(os.path.dirname(self.path) or ".")
        with self._lock:
            self._synced_appends = max(self._synced_appends, appends)
            self.fsyncs += need_file
            self._dir_synced_epoch = max(self._dir_synced_epoch, dir_epoch)

    def close(self) -> None:
        """Close the file (without fsync; call `sync` first for durability). Idempotent."""
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> TransactionLog:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------ reading

    def __iter__(self) -> Iterator[Transaction]:
        return self.read()

    def read(self, from_txid: int | None = None) -> Iterator[Transaction]:
        """Transactions from `from_txid` (default: the first) to the last one present now.

        Reads from disk (one pread per record), so call it off the event loop
        for long logs. Records appended later are not included (use the
        store's listeners for those). Raises TxidUnavailableError at once
        when `from_txid` is before `first_txid` (it was compacted away) or
        after `next_txid`.
        """
        with self._lock:
            if self._fd < 0:
                raise LogClosedError(f"{self.path} is closed")
            first, offsets, end = self._first_txid, self._offsets, self._size
            count = len(offsets)
            start = 0 if from_txid is None else from_txid - first
            if start < 0 or start > count:
                raise TxidUnavailableError(
                    f"{self.path}: TXID {from_txid} is not in the log "
                    f"(it holds {first}..{first + count - 1})"
                )
            fd = os.dup(self._fd)
        return self._read(fd, offsets, start, count, end)

    def _read(
        self, fd: int, offsets: array[int], start: int, count: int, end: int
    ) -> Iterator[Transaction]:
        try:
            for i in range(start, count):
                offset = offsets[i]
                stop = offsets[i + 1] if i + 1 < count else end
                buf = os.pread(fd, stop - offset, offset)
                if len(buf) != stop - offset:
                    raise TruncatedRecordError(
                        f"{self.path}: file shrank under the reader", offset
                    )
                txn, _ = decode_record(buf, max_record_size=self._max_record_size)
                yield txn
        finally:
            os.close(fd)

    # ------------------------------------------------------------ retention

    def compact(self, retain_seconds: float, max_bytes: int | None, now_ns: int,
                keep_from: Callable[[], int | None] | None = None) -> int:
        """Drop the oldest records older than `retain_seconds` or beyond `max_bytes` in total.

        The newest record is always kept, and so is every record from TXID
        `keep_from()` on (asked under the log's lock, as the records to keep
        are chosen, so that an append racing the compaction is seen). TXIDs
        continue (`first_txid` moves). Rewrites the kept records into `<path>.compact`, fsyncs it and
        renames it over the log. Returns the number of records dropped.
        Blocking: run it in a worker thread; appends may go on meanwhile.

        Records past their age alone are dropped only once they make up at
        least half of the log's bytes (`COMPACT_FRACTION`): every rewrite then
        copies at most as much as it frees, so a record is copied a bounded
        number of times, and a log holds up to about twice the retention
        (instead of the whole log being rewritten at every pass). A log
        larger than `max_bytes` is cut back to it at once.
        """
        with self._compact_lock:
            return self._compact(retain_seconds, max_bytes, now_ns, keep_from)

    def _compact(self, retain_seconds: float, max_bytes: int | None, now_ns: int,
                 keep_from: Callable[[], int | None] | None) -> int:
        with self._lock:
            if self._fd < 0:
                raise LogClosedError(f"{self.path} is closed")
            offsets, timestamps, count = self._offsets, self._timestamps, len(self._offsets)
            size = self._size
            floor = keep_from() if keep_from is not None else None
            first_txid = self._first_txid
            truncations = self._truncations
            old_fd = os.dup(self._fd)
        try:
            cut = _records_to_drop(offsets, timestamps, count, size,
                                   now_ns - int(retain_seconds * 1e9), max_bytes)
            if floor is not None:
                cut = max(0, min(cut, floor - first_txid))
            if cut == 0:
                return 0
            over_limit = max_bytes is not None and size > max_bytes
            if not over_limit and offsets[cut] < COMPACT_FRACTION * size:
                return 0  # not worth a rewrite yet
            return self._rewrite(old_fd, cut, offsets[cut], size, truncations)
        finally:
            os.close(old_fd)

    def _rewrite(self, old_fd: int, cut: int, base: int, copied_to: int, truncations: int) -> int:
        """Copy the records from `base` into a new file and rename it over the log.

        Gives up (returns 0, nothing changed) when `truncate_after` cut the log
        meanwhile: the bytes copied without the lock may be records that are
        gone, with others appended in their place since.
        """
        tmp = self.path + ".compact"
        fd = os.open(tmp, os.O_RDWR | os.O_CLOEXEC | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _copy(old_fd, fd, base, copied_to)
            os.fsync(fd)
            with self._lock:
                if self._fd < 0:
                    raise LogClosedError(f"{self.path} was closed during compaction")
                if self._truncations != truncations:
                    raise LogError(f"{self.path}: records were taken back during compaction")
                size = self._size
                if size < copied_to:  # cannot happen: failed appends cut back to >= copied_to
                    raise LogError(f"{self.path} shrank during compaction")
                if size > copied_to:
                    _copy(old_fd, fd, copied_to, size)
                    os.fsync(fd)
                os.rename(tmp, self.path)
                old, self._fd = self._fd, fd
                fd = -1
                self._offsets = array("Q", (o - base for o in self._offsets[cut:]))
                self._timestamps = self._timestamps[cut:]
                self._first_txid += cut
                self._size = self._allocated = size - base
                self._synced_appends = self._appends
                self._dir_epoch += 1
                os.close(old)
        except BaseException as exc:
            if fd >= 0:
                os.close(fd)
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            if isinstance(exc, LogError) and self._truncations != truncations:
                # Also a copy that found the file shorter: retention tries again later.
                log.info("%s: records were taken back during compaction; it is given up", self.path)
                return 0
            raise
        self.sync()  # the directory entry of the renamed file
        log.info("%s: retention dropped %d records; the log now starts at TXID %d",
                 self.path, cut, self._first_txid)
        return cut


def _records_to_drop(
    offsets: array[int], timestamps: array[int], count: int, size: int,
    cutoff_ns: int, max_bytes: int | None,
) -> int:
    """How many of the oldest records retention drops (never the newest)."""
    cut = 0
    while cut < count - 1 and timestamps[cut] < cutoff_ns:
        cut += 1
    if max_bytes is not None:
        while cut < count - 1 and size - offsets[cut] > max_bytes:
            cut += 1
    return cut


def _copy(src: int, dst: int, start: int, end: int) -> None:
    offset = start
    while offset < end:
        chunk = os.pread(src, min(_COPY_CHUNK, end - offset), offset)
        if not chunk:
            raise LogError(f"log file ended at {offset} while copying up to {end}")
        view = memoryview(chunk)
        while view:
            n = os.write(dst, view)
            view = view[n:]
        offset += len(chunk)


def _all_zeros(view: memoryview) -> bool:
    """True when `view` holds nothing but zero bytes (or nothing)."""
    for offset in range(0, len(view), PREALLOCATE):
        # bytes.startswith compares with memcmp: ~75x faster than memoryview ==.
        if not _ZEROS.startswith(view[offset : offset + PREALLOCATE]):
            return False
    return True


_ZEROS = bytes(PREALLOCATE)


def _zeros(n: int) -> memoryview:
    """`n` (<= PREALLOCATE) zero bytes, without building them each time."""
    return memoryview(_ZEROS)[:n]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replay(txlog: TransactionLog, upto_txid: int | None = None) -> bytes:
    """The database image after TXID `upto_txid` (default: the last) rebuilt from `txlog`.

    Applies every transaction from TXID 1; raises TxidUnavailableError if the
    log no longer starts there (retention) or does not reach `upto_txid`.
    """
    last = txlog.last
    if last is None:
        return b""
    if txlog.first_txid != 1:
        raise TxidUnavailableError(f"{txlog.path}: the log starts at TXID {txlog.first_txid}, not 1")
    if upto_txid is not None and not 1 <= upto_txid <= last.txid:
        raise TxidUnavailableError(f"{txlog.path}: no TXID {upto_txid} (the log holds 1..{last.txid})")
    image = bytearray()
    page_size = 0
    for txn in txlog.read():
        if upto_txid is not None and txn.txid > upto_txid:
            break
        if txn.dropped or txn.page_size != page_size:
            image = bytearray()  # a new page size comes with every page
            page_size = txn.page_size
        apply_pages(image, page_size, txn.commit_size, txn.pages)
    return bytes(image)
