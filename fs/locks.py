"""SQLite's file locks, taken by the daemon itself through its own mount (DESIGN §3, §5).

pyfuse3 has no lock operations, so the kernel keeps every POSIX and OFD lock
of the mount itself: coherent for all processes on this host. The daemon
takes SQLite's locks exactly as SQLite does, on descriptors it opened
*through the mount* from a registered worker thread. It uses OFD locks
(`F_OFD_SETLK`): they belong to the open file description, so closing some
other descriptor of the same file never drops them, and the kernel checks
them against SQLite's classic POSIX locks on the same inode.

Every acquisition has a deadline: non-blocking tries with short, growing
sleeps, then `LockTimeout`. Nothing here blocks forever.

Lock sets:

- `rollback_writer`: PENDING exclusive (new readers stop), then the SHARED
  range exclusive (wait for the readers inside a transaction) — SQLite's
  EXCLUSIVE lock.
- `wal_writer`: DMS shared (no connection re-initialises the `-shm` under
  us), WRITE and CKPT exclusive, then READ0..READ4 exclusive. RECOVER is
  deliberately not taken: no recovery can start while WRITE is held, and a
  reader that finds the wal-index header changing checks RECOVER to choose
  between retrying at once (free) and reporting SQLITE_BUSY_RECOVERY to the
  application's busy handler (held). See `wal_writer` for the `fence` hook
  that keeps the READ locks from starving.
- `rollback_reader`: PENDING shared, SHARED range shared, PENDING released —
  SQLite's SHARED lock; commits wait until it is released.
- `wal_reader`: the database's SHARED lock (as every WAL connection holds it:
  the last connection closing cannot then checkpoint and delete the WAL),
  then the `-shm` WRITE lock exclusive: no commit and no WAL restart until
  released, while checkpoints (which only copy committed frames the WAL
  still holds) may run.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from fs.formats import PENDING_BYTE

__all__ = [
    "PENDING_BYTE",
    "RESERVED_BYTE",
    "SHARED_FIRST",
    "SHARED_SIZE",
    "SHM_CKPT",
    "SHM_DMS",
    "SHM_READ0",
    "SHM_READ_COUNT",
    "SHM_RECOVER",
    "SHM_WRITE",
    "LockTimeout",
    "acquire",
    "held",
    "rollback_reader",
    "rollback_writer",
    "try_lock",
    "unlock",
    "wal_reader",
    "wal_writer",
]

#: Database file (os_unix.c): PENDING, RESERVED, then the 510-byte SHARED range.
RESERVED_BYTE = PENDING_BYTE + 1
SHARED_FIRST = PENDING_BYTE + 2
SHARED_SIZE = 510
#: `-shm` file (wal.c: WALINDEX_LOCK_OFFSET 120): WRITE, CKPT, RECOVER, READ0..4, then DMS.
SHM_WRITE = 120
SHM_CKPT = 121
SHM_RECOVER = 122
SHM_READ0 = 123
SHM_READ_COUNT = 5
SHM_DMS = 128

#: Default seconds to wait for a lock before LockTimeout.
DEFAULT_LOCK_TIMEOUT = 10.0
#: Longest a wal-index fence stays up at a time. A WAL reader that cannot
#: start retries on its own (walTryBeginRead, ignoring busy_timeout) and gives
#: up with SQLITE_PROTOCOL after ~10 s of growing sleeps: a fence must come
#: down well before, for long enough (FENCE_PAUSE) for the spinning readers,
#: by then sleeping tens of milliseconds between tries, to get in.
FENCE_LIMIT = 0.5
FENCE_PAUSE = 0.1
_FIRST_SLEEP = 20e-6
_MAX_SLEEP = 2e-4

SHARED = fcntl.F_RDLCK
EXCLUSIVE = fcntl.F_WRLCK

# struct flock on Linux (x86-64 and arm64): short l_type, short l_whence,
# off_t l_start, off_t l_len, pid_t l_pid (must be 0 for OFD locks).
_FLOCK = struct.Struct("hhqqi4x")
_BUSY = (errno.EAGAIN, errno.EACCES)


class LockTimeout(TimeoutError):
    """A lock could not be acquired before its deadline (someone holds a conflicting one)."""


def _flock(kind: int, start: int, length: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, start, length, 0)


def try_lock(fd: int, kind: int, start: int, length: int = 1) -> bool:
    """Take an OFD lock (`SHARED` or `EXCLUSIVE`) on bytes start..start+length-1; False if busy."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(kind, start, length))
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise
    return True


def unlock(fd: int, start: int, length: int = 1) -> None:
    """Release this descriptor's OFD lock on the range (never fails for a lock not held)."""
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, start, length))


def acquire(fd: int, kind: int, start: int, length: int, deadline: float, what: str) -> None:
    """Take a lock, retrying with short growing sleeps until `deadline` (time.monotonic), else LockTimeout."""
    sleep = _FIRST_SLEEP
    while not try_lock(fd, kind, start, length):
        now = time.monotonic()
        if now >= deadline:
            raise LockTimeout(f"cannot take the {what} lock: held by another process")
        time.sleep(min(sleep, deadline - now))
        sleep = min(sleep * 2, _MAX_SLEEP)


@contextmanager
def held(fd: int, kind: int, start: int, length: int, deadline: float, what: str = "") -> Iterator[None]:
    """Hold a lock for the block, acquired before `deadline` (time.monotonic) or LockTimeout."""
    acquire(fd, kind, start, length, deadline, what or f"{start}+{length}")
    try:
        yield
    finally:
        unlock(fd, start, length)


@contextmanager
def rollback_writer(db_fd: int, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """SQLite's EXCLUSIVE lock on a rollback-mode database (`db_fd` opened read-write)."""
    deadline = time.monotonic() + timeout
    with held(db_fd, EXCLUSIVE, PENDING_BYTE, 1, deadline, "PENDING"), \
            held(db_fd, EXCLUSIVE, SHARED_FIRST, SHARED_SIZE, deadline, "SHARED (exclusive)"):
        yield


@contextmanager
def wal_writer(
    shm_fd: int,
    timeout: float = DEFAULT_LOCK_TIMEOUT,
    fence: Callable[[], Callable[[], None] | None] | None = None,
    *,
    take_dms: bool = True,
) -> Iterator[None]:
    """Exclusive access to a WAL database's wal-index and, through it, its database file.

    Once DMS, WRITE and CKPT are held, READ0..READ4 are tried once; if a
    reader is inside a transaction, `fence` (if given) runs before they are
    waited for. The applier uses it to write copy 1 of the new wal-index
    header: while the two copies differ, every new reader retries instead of
    taking a READ lock (wal.c, walIndexTryHdr), so the readers already inside
    a transaction drain and the READ locks cannot starve. It returns an undo
    callable (or None when it fenced nothing): a fence stays up at most
    FENCE_LIMIT seconds, then is undone for FENCE_PAUSE and raised again,
    until `timeout`.

    `take_dms=False`: the caller already holds DMS shared on `shm_fd` and
    keeps it (releasing it here would drop the caller's lock).
    """
    deadline = time.monotonic() + timeout
    with ExitStack() as stack:
        if take_dms:
            stack.enter_context(held(shm_fd, SHARED, SHM_DMS, 1, deadline, "DMS"))
        stack.enter_context(held(shm_fd, EXCLUSIVE, SHM_WRITE, 2, deadline, "WRITE and CKPT"))
        if not try_lock(shm_fd, EXCLUSIVE, SHM_READ0, SHM_READ_COUNT):
            _wait_for_readers(shm_fd, deadline, fence)
        stack.callback(unlock, shm_fd, SHM_READ0, SHM_READ_COUNT)
        yield


def _wait_for_readers(
    shm_fd: int, deadline: float, fence: Callable[[], Callable[[], None] | None] | None,
) -> None:
    """Take READ0..4 exclusive behind fences of at most FENCE_LIMIT seconds each."""
    while True:
        undo = fence() if fence is not None else None
        limit = min(deadline, time.monotonic() + FENCE_LIMIT) if undo is not None else deadline
        try:
            acquire(shm_fd, EXCLUSIVE, SHM_READ0, SHM_READ_COUNT, limit, "READ0..4")
            return
        except LockTimeout:
            if undo is not None:
                undo()
            if time.monotonic() + FENCE_PAUSE >= deadline:
                raise
        except BaseException:
            if undo is not None:
                undo()
            raise
        time.sleep(FENCE_PAUSE)


def _shared(db_fd: int, deadline: float) -> ExitStack:
    """SQLite's SHARED lock: PENDING shared while the SHARED range is taken, then released."""
    stack = ExitStack()
    with held(db_fd, SHARED, PENDING_BYTE, 1, deadline, "PENDING (shared)"):
        acquire(db_fd, SHARED, SHARED_FIRST, SHARED_SIZE, deadline, "SHARED")
    stack.callback(unlock, db_fd, SHARED_FIRST, SHARED_SIZE)
    return stack


@contextmanager
def rollback_reader(db_fd: int, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """SQLite's SHARED lock on a database: no commit can happen while it is held."""
    with _shared(db_fd, time.monotonic() + timeout):
        yield


@contextmanager
def wal_reader(db_fd: int, shm_fd: int, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """A WAL database's committed content frozen: SHARED on the database, WRITE on the `-shm`."""
    deadline = time.monotonic() + timeout
    with _shared(db_fd, deadline), held(shm_fd, EXCLUSIVE, SHM_WRITE, 1, deadline, "WRITE"):
        yield
