"""SQLite on-disk formats, sans-IO: bytes in, frozen values out.

Modules:

- `dbheader`: the 100-byte database header, the lock page.
- `journal`: the rollback journal (header, records, segments).
- `wal`: the WAL header, frames, checksum, and `WalTracker`, which turns the
  stream of write() calls applied to a `-wal` file into committed transactions.
- `shm`: the wal-index header and checkpoint info in the `-shm` file.

Nothing here opens a file or a socket. Malformed input raises `FormatError`
(a `ValueError`), never `IndexError` or `struct.error`.
"""

from __future__ import annotations

#: Smallest and largest SQLite page sizes.
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 65536

#: Byte offset of SQLite's PENDING lock byte; the page holding it is never written.
PENDING_BYTE = 0x40000000


class FormatError(ValueError):
    """Bytes that are not what the SQLite file format says they must be."""


def is_valid_page_size(page_size: int) -> bool:
    """True when `page_size` is a power of two between 512 and 65536."""
    return MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE and page_size & (page_size - 1) == 0


def check_page_size(page_size: int) -> int:
    """Return `page_size` unchanged, or raise FormatError if SQLite cannot use it."""
    if not isinstance(page_size, int) or not is_valid_page_size(page_size):
        raise FormatError(f"invalid page size {page_size!r}: must be a power of two in 512..65536")
    return page_size


def lock_page(page_size: int) -> int:
    """The 1-based number of the page holding byte 0x40000000 (never written by SQLite)."""
    return PENDING_BYTE // check_page_size(page_size) + 1


__all__ = [
    "MAX_PAGE_SIZE",
    "MIN_PAGE_SIZE",
    "PENDING_BYTE",
    "FormatError",
    "check_page_size",
    "is_valid_page_size",
    "lock_page",
]
