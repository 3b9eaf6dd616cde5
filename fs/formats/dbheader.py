"""The 100-byte SQLite database header (https://sqlite.org/fileformat.html#the_database_header).

All fields are big-endian. `parse_db_header` accepts any buffer of at least
100 bytes (e.g. page 1) and raises `FormatError` when it is not a database.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fs.formats import FormatError, is_valid_page_size, lock_page

__all__ = [
    "DB_HEADER_SIZE",
    "DB_MAGIC",
    "JOURNAL_MODE_ROLLBACK",
    "JOURNAL_MODE_WAL",
    "DbHeader",
    "lock_page",
    "parse_db_header",
]

DB_MAGIC = b"SQLite format 3\x00"
DB_HEADER_SIZE = 100

#: Values of the write/read version bytes (18, 19).
JOURNAL_MODE_ROLLBACK = 1
JOURNAL_MODE_WAL = 2

# magic, page size, write/read version, reserved, payload fractions (3),
# change counter, size in pages, freelist trunk, freelist count, schema cookie,
# schema format, default cache size, largest root page, text encoding,
# user version, incremental vacuum, application id, 20 reserved bytes,
# version-valid-for, sqlite version number.
_HEADER = struct.Struct(">16sHBBBBBBIIIIIIIIIIII20xII")
assert _HEADER.size == DB_HEADER_SIZE


@dataclass(frozen=True, slots=True)
class DbHeader:
    """The decoded database header. `page_size` is in bytes (65536, not 1)."""

    page_size: int
    write_version: int
    read_version: int
    reserved_space: int
    change_counter: int
    header_page_count: int
    freelist_trunk: int
    freelist_count: int
    schema_cookie: int
    schema_format: int
    default_cache_size: int
    largest_root_page: int
    text_encoding: int
    user_version: int
    incremental_vacuum: int
    application_id: int
    version_valid_for: int
    sqlite_version: int

    @property
    def is_wal(self) -> bool:
        """True when the file is in WAL mode (write and read versions are 2)."""
        return self.write_version == JOURNAL_MODE_WAL and self.read_version == JOURNAL_MODE_WAL

    @property
    def page_count(self) -> int | None:
        """The size in pages from bytes 28..31, or None when SQLite would not trust it.

        SQLite uses it only when it is non-zero and version-valid-for (92..95)
        equals the change counter (24..27); otherwise it uses the file size.
        """
        if self.header_page_count and self.version_valid_for == self.change_counter:
            return self.header_page_count
        return None

    @property
    def lock_page(self) -> int:
        """The page holding byte 0x40000000 for this page size."""
        return lock_page(self.page_size)

    def effective_page_count(self, file_size: int) -> int:
        """The database size in pages as SQLite computes it: the header's, else the file's."""
        pages = self.page_count
        if pages is not None:
            return pages
        return file_size // self.page_size


def parse_db_header(data: bytes | bytearray | memoryview) -> DbHeader:
    """Decode the first 100 bytes of `data`.

    Raises FormatError when `data` is shorter than 100 bytes, the magic is
    wrong, or the page size is not a power of two in 512..65536.
    """
    if len(data) < DB_HEADER_SIZE:
        raise FormatError(f"database header needs {DB_HEADER_SIZE} bytes, got {len(data)}")
    fields = _HEADER.unpack_from(data, 0)
    if fields[0] != DB_MAGIC:
        raise FormatError(f"not an SQLite database: magic {bytes(fields[0])!r}")
    raw_page_size = fields[1]
    page_size = 65536 if raw_page_size == 1 else raw_page_size
    if not is_valid_page_size(page_size):
        raise FormatError(f"invalid page size {raw_page_size} in database header")
    (
        write_version,
        read_version,
        reserved_space,
        _max_payload,
        _min_payload,
        _leaf_payload,
        change_counter,
        header_page_count,
        freelist_trunk,
        freelist_count,
        schema_cookie,
        schema_format,
        default_cache_size,
        largest_root_page,
        text_encoding,
        user_version,
        incremental_vacuum,
        application_id,
        version_valid_for,
        sqlite_version,
    ) = fields[2:]
    return DbHeader(
        page_size=page_size,
        write_version=write_version,
        read_version=read_version,
        reserved_space=reserved_space,
        change_counter=change_counter,
        header_page_count=header_page_count,
        freelist_trunk=freelist_trunk,
        freelist_count=freelist_count,
        schema_cookie=schema_cookie,
        schema_format=schema_format,
        default_cache_size=default_cache_size,
        largest_root_page=largest_root_page,
        text_encoding=text_encoding,
        user_version=user_version,
        incremental_vacuum=incremental_vacuum,
        application_id=application_id,
        version_valid_for=version_valid_for,
        sqlite_version=sqlite_version,
    )
