"""Startup recovery of the databases in a data dir, before the mount serves anything.

For each database: a hot rollback journal is played back into the database
file exactly as SQLite would (the interrupted transaction never committed),
then the committed content is computed — the database file with the
committed frames of its WAL applied — so the node can compare it with the
last position in the log.

A file in the data dir that is not a SQLite database raises FormatError.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from fs.formats import FormatError
from fs.formats.dbheader import parse_db_header
from fs.formats.image import apply_pages
from fs.formats.journal import Journal, JournalState, classify_journal, parse_journal
from fs.formats.wal import WalCommit, WalTracker
from fs.names import Kind, classify, is_valid

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecoveredDatabase:
    """A database as it is committed on disk after recovery."""

    name: str
    page_size: int
    database_file: bytes  # the database file as it is on disk
    image: bytes  # database file with the committed WAL frames applied
    wal_commits: tuple[WalCommit, ...]  # committed transactions still in the WAL, oldest first


def databases(dir_fd: int) -> Iterator[str]:
    """Names of the databases stored in the data dir (regular files only)."""
    for name in sorted(os.listdir(dir_fd)):
        if is_valid(name) and classify(name).kind is Kind.DATABASE:
            if stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                yield name


def read_file(dir_fd: int, name: str) -> bytes | None:
    """The whole content of `name` in the data dir, or None if it does not exist."""
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        return read_fd(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def read_fd(fd: int, size: int) -> bytes:
    """Up to `size` bytes from the start of `fd`: fewer if the file is shorter (it shrank meanwhile).

    Loops over pread: one call returns at most ~2 GiB on Linux.
    """
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 30), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def hot_journal(dir_fd: int, db: str) -> Journal | None:
    """`db`'s `-journal` if it is hot (SQLite would roll the database back from it), else None."""
    journal_name = f"{db}-journal"
    data = read_file(dir_fd, journal_name)
    if data is None or classify_journal(data) is not JournalState.HOT:
        return None
    try:
        return parse_journal(data)
    except FormatError as exc:
        log.warning("%s: journal has a hot header but cannot be parsed (%s); leaving it to SQLite",
                    journal_name, exc)
        return None


def roll_back_hot_journal(dir_fd: int, db: str) -> bool:
    """Play a hot `-journal` back into `db` and delete it; True if it was hot.

    As SQLite's own playback: the database is restored page by page to its
    content before the interrupted transaction and truncated to its original
    size (also to zero pages), fsynced, and only then is the journal removed
    (and the directory fsynced).
    """
    journal_name = f"{db}-journal"
    journal = hot_journal(dir_fd, db)
    if journal is None:
        return False
    fd = os.open(db, os.O_RDWR, dir_fd=dir_fd)
    try:
        pages = journal.original_pages()
        for pgno, page in pages.items():
            os.pwrite(fd, page, (pgno - 1) * journal.page_size)
        # As SQLite's pager_playback: always, also to 0 for a new database.
        os.ftruncate(fd, journal.initial_page_count * journal.page_size)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(journal_name, dir_fd=dir_fd)
    os.fsync(dir_fd)
    log.warning("%s: rolled back an interrupted transaction from its hot journal (%d pages)",
                db, len(pages))
    return True


def recover(dir_fd: int, db: str) -> RecoveredDatabase:
    """Roll back `db`'s hot journal, then return its committed content."""
    roll_back_hot_journal(dir_fd, db)
    return committed_content(dir_fd, db)


def committed_content(dir_fd: int, db: str, *, undo_hot_journal: bool = False) -> RecoveredDatabase:
    """`db`'s committed content as the files hold it now, without changing any file.

    The database file with the committed frames of its WAL applied. With
    `undo_hot_journal`, a hot journal's original pages are first played back
    into the in-memory image (never into the file), as SQLite's rollback
    would: the committed content while the caller holds a SHARED lock, when a
    hot journal is either a dead writer's (the file holds uncommitted pages)
    or a live writer's that cannot have written the database yet (a no-op).
    """
    database_file = read_file(dir_fd, db) or b""
    journal = hot_journal(dir_fd, db) if undo_hot_journal else None
    wal = read_file(dir_fd, f"{db}-wal")
    if journal is None and not wal:
        # Nothing to undo or redo: the file as it is, not copied twice (a
        # snapshot of a large database waits for this).
        page_size = parse_db_header(database_file).page_size if len(database_file) >= 100 else 0
        return RecoveredDatabase(db, page_size, database_file, database_file, ())
    image = bytearray(database_file)
    if journal is not None:
        page_size = journal.page_size
        pages = journal.original_pages()
        end = max([journal.initial_page_count, *pages]) * page_size
        if len(image) < end:
            image.extend(bytes(end - len(image)))
        for pgno, page in pages.items():
            image[(pgno - 1) * page_size : pgno * page_size] = page
        del image[journal.initial_page_count * page_size :]
    page_size = parse_db_header(image).page_size if len(image) >= 100 else 0
    commits: tuple[WalCommit, ...] = ()
    if wal:
        _, found = WalTracker.from_wal(wal)
        commits = tuple(found)
        for commit in commits:
            apply_pages(image, commit.page_size, commit.commit_size, commit.pages)
            page_size = commit.page_size
    return RecoveredDatabase(db, page_size, database_file, bytes(image), commits)
