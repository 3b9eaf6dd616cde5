"""A consistent copy of one database on the primary, taken under SQLite's own read locks.

`read_consistent` takes, through the mount and from a registered worker
thread, the locks that freeze the database's committed content
(`fs.locks.rollback_reader`, plus the `-shm` WRITE lock in WAL mode), reads
that content from the data dir (the database file with the committed frames
of its WAL; a hot journal's originals undone in memory, never in the file),
asks for the position while still holding the locks, and releases them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack

from fs.access import Access
from fs.formats.dbheader import JOURNAL_MODE_WAL
from fs.locks import DEFAULT_LOCK_TIMEOUT, EXCLUSIVE, SHM_WRITE, LockTimeout, held, rollback_reader
from fs.names import Kind, classify
from fs.recovery import committed_content

__all__ = ["read_consistent"]

_MODE_OFFSET = 18  # write and read versions
_MODE_TRIES = 3


def read_consistent(
    mount_dir: str,
    data_dir: str,
    db: str,
    access: Access,
    position: Callable[[], tuple[int, int] | None],
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> tuple[bytes, tuple[int, int] | None]:
    """(committed image of `db`, `position()` taken at the same instant).

    Blocking: call from a worker thread of the daemon serving `mount_dir`.
    Raises FileNotFoundError if `db` does not exist, LockTimeout if a writer
    keeps it locked longer than `lock_timeout` seconds.
    """
    if classify(db).kind is not Kind.DATABASE:
        raise ValueError(f"{db!r} is not a database name")
    with access.thread():
        deadline = time.monotonic() + lock_timeout
        dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        db_fd = shm_fd = None
        try:
            db_fd = os.open(os.path.join(mount_dir, db), os.O_RDONLY | os.O_CLOEXEC)
            for _ in range(_MODE_TRIES):
                if _is_wal(dir_fd, db) and shm_fd is None:
                    # Opened before locking: the locked section stays short.
                    shm_fd = os.open(os.path.join(mount_dir, f"{db}-shm"),
                                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                with ExitStack() as locks:
                    locks.enter_context(rollback_reader(db_fd, max(0.0, deadline - time.monotonic())))
                    if shm_fd is not None:
                        locks.enter_context(held(shm_fd, EXCLUSIVE, SHM_WRITE, 1, deadline, "WRITE"))
                    # The journal mode cannot change while SHARED is held (that needs EXCLUSIVE).
                    if shm_fd is not None or not _is_wal(dir_fd, db):
                        image = committed_content(dir_fd, db, undo_hot_journal=True).image
                        return image, position()
            raise LockTimeout(f"{db}: its journal mode keeps changing")
        finally:
            for fd in (shm_fd, db_fd, dir_fd):
                if fd is not None:
                    os.close(fd)


def _is_wal(dir_fd: int, db: str) -> bool:
    """Whether `db`'s header in the data dir says WAL mode (bytes 18 and 19 are 2)."""
    fd = os.open(db, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.pread(fd, 2, _MODE_OFFSET) == bytes([JOURNAL_MODE_WAL, JOURNAL_MODE_WAL])
    finally:
        os.close(fd)
