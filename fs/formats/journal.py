"""The rollback journal (`<db>-journal`), as SQLite's pager.c writes and replays it.

Layout: one or more *segments*. Each segment starts at a sector boundary with
a header (magic, record count, checksum nonce, initial database size in
pages, sector size, page size) that occupies one whole sector, followed by
records: 4-byte pgno, the page's original content, 4-byte checksum. All
integers are big-endian. Sector and page size are taken from the first
header only.

Facts about the journal's life that the mount relies on (pager.c):

- With `synchronous` on, a transaction first writes the header with the magic
  and record count *zeroed*; the magic and count are written (a 12-byte write
  at the segment's offset) only when the journal is synced, just before the
  first page is written into the database. From then on the journal is *hot*:
  a crash makes the next opener roll the database back from it.
- With `synchronous=OFF` the header is written at once with the magic and a
  record count of 0xffffffff ("as many records as the file holds").
- The commit point is when the journal stops being hot: unlinked (DELETE),
  truncated to 0 (TRUNCATE, or PERSIST with journal_size_limit=0), or its
  first 28 bytes overwritten with zeros (PERSIST). A zeroed header alone is
  therefore not a commit: the mount must see the HOT -> not hot transition.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from fs.formats import FormatError, is_valid_page_size, lock_page

__all__ = [
    "JOURNAL_HEADER_SIZE",
    "JOURNAL_MAGIC",
    "NREC_TO_EOF",
    "Journal",
    "JournalHeader",
    "JournalRecord",
    "JournalState",
    "classify_journal",
    "iter_journal_records",
    "journal_checksum",
    "parse_journal",
    "parse_journal_header",
]

JOURNAL_MAGIC = b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7"
#: Bytes of the header that carry meaning (the rest of the sector is padding).
JOURNAL_HEADER_SIZE = 28
#: A record count meaning "every whole record up to the end of the file".
NREC_TO_EOF = 0xFFFFFFFF
#: Bytes PERSIST mode zeroes at offset 0 to commit.
PERSIST_ZEROED_BYTES = 28

_MIN_SECTOR_SIZE = 32
_MAX_SECTOR_SIZE = 0x10000
_HEADER = struct.Struct(">8sIIIII")
_U32 = struct.Struct(">I")


class JournalState(enum.Enum):
    """What the start of a journal file says."""

    EMPTY = "empty"  # shorter than the header fields: nothing to roll back
    ZEROED = "zeroed"  # magic is zero: not hot (start of a txn, or PERSIST commit)
    HOT = "hot"  # valid magic: SQLite would roll the database back from it
    INVALID = "invalid"  # neither: SQLite ignores it


@dataclass(frozen=True, slots=True)
class JournalHeader:
    """One segment header. `record_count` may be NREC_TO_EOF."""

    offset: int
    record_count: int
    nonce: int
    initial_page_count: int
    sector_size: int
    page_size: int

    @property
    def record_size(self) -> int:
        """Bytes per record: pgno + page + checksum."""
        return self.page_size + 8


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One journal record: the content page `pgno` had before the transaction."""

    offset: int
    pgno: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Journal:
    """A parsed journal: its segment headers and every valid record, in file order."""

    headers: tuple[JournalHeader, ...]
    records: tuple[JournalRecord, ...]

    @property
    def page_size(self) -> int:
        return self.headers[0].page_size

    @property
    def initial_page_count(self) -> int:
        """The database size in pages before the transaction (from the first header)."""
        return self.headers[0].initial_page_count

    def original_pages(self) -> dict[int, bytes]:
        """What rolling back would write: the first record of each page within the initial size."""
        pages: dict[int, bytes] = {}
        limit = self.initial_page_count
        for rec in self.records:
            if rec.pgno <= limit and rec.pgno not in pages:
                pages[rec.pgno] = rec.data
        return pages


def classify_journal(data: bytes | bytearray | memoryview) -> JournalState:
    """Classify the first bytes of a journal file (at least the first 8 are needed)."""
    if len(data) < len(JOURNAL_MAGIC):
        return JournalState.EMPTY
    magic = bytes(data[: len(JOURNAL_MAGIC)])
    if magic == JOURNAL_MAGIC:
        return JournalState.HOT
    if magic == bytes(len(JOURNAL_MAGIC)):
        return JournalState.ZEROED
    return JournalState.INVALID


def journal_checksum(nonce: int, page: bytes | bytearray | memoryview) -> int:
    """The record checksum: nonce + page[i] for i = size-200, size-400, ... > 0, mod 2**32."""
    return (nonce + sum(page[len(page) - 200 : 0 : -200])) & 0xFFFFFFFF


def parse_journal_header(
    data: bytes | bytearray | memoryview,
    offset: int = 0,
    *,
    sector_size: int | None = None,
    page_size: int | None = None,
) -> JournalHeader:
    """Decode the segment header at `offset`.

    For the first header (no `sector_size`/`page_size` given) the sector and
    page size are read from it and checked; later headers take them from the
    caller, as SQLite does. Raises FormatError on a short buffer, a wrong
    magic, or impossible sizes.
    """
    if offset < 0 or len(data) < offset + JOURNAL_HEADER_SIZE:
        raise FormatError(f"journal header at {offset} needs {JOURNAL_HEADER_SIZE} bytes")
    magic, nrec, nonce, initial, hdr_sector, hdr_page = _HEADER.unpack_from(data, offset)
    if magic != JOURNAL_MAGIC:
        raise FormatError(f"no journal header at offset {offset}: magic {bytes(magic).hex()}")
    if sector_size is None or page_size is None:
        sector_size, page_size = hdr_sector, hdr_page
        if not is_valid_page_size(page_size):
            raise FormatError(f"invalid page size {page_size} in journal header")
        if not _MIN_SECTOR_SIZE <= sector_size <= _MAX_SECTOR_SIZE or sector_size & (
            sector_size - 1
        ):
            raise FormatError(f"invalid sector size {sector_size} in journal header")
    return JournalHeader(
        offset=offset,
        record_count=nrec,
        nonce=nonce,
        initial_page_count=initial,
        sector_size=sector_size,
        page_size=page_size,
    )


def _next_header_offset(offset: int, sector_size: int) -> int:
    return -(-offset // sector_size) * sector_size


def iter_journal_records(
    data: bytes | bytearray | memoryview,
) -> Iterator[JournalHeader | JournalRecord]:
    """Yield each segment header, then its valid records, in file order, as SQLite replays them.

    The first header must be valid (else FormatError). Replay stops, without
    error, at the first invalid record (pgno 0 or the lock page, wrong
    checksum, short read) or at a segment whose header is missing, invalid or
    does not fit a whole sector in the file. Records whose pgno is beyond the
    initial size are yielded too (SQLite skips them; see Journal.original_pages).
    """
    size = len(data)
    header = parse_journal_header(data, 0)
    sector, page_size = header.sector_size, header.page_size
    skip_page = lock_page(page_size)
    rec_size = header.record_size
    view = memoryview(data)
    while True:
        if header.offset + sector > size:
            return
        yield header
        offset = header.offset + sector
        count = header.record_count
        if count == NREC_TO_EOF:
            count = (size - offset) // rec_size
        for _ in range(count):
            if offset + rec_size > size:
                return
            (pgno,) = _U32.unpack_from(data, offset)
            page = view[offset + 4 : offset + 4 + page_size]
            (cksum,) = _U32.unpack_from(data, offset + 4 + page_size)
            if pgno == 0 or pgno == skip_page or journal_checksum(header.nonce, page) != cksum:
                return
            yield JournalRecord(offset=offset, pgno=pgno, data=bytes(page))
            offset += rec_size
        if header.record_count == NREC_TO_EOF:
            return
        next_offset = _next_header_offset(offset, sector)
        try:
            header = parse_journal_header(
                data, next_offset, sector_size=sector, page_size=page_size
            )
        except FormatError:
            return


def parse_journal(data: bytes | bytearray | memoryview) -> Journal:
    """Parse a whole journal file into its headers and valid records.

    Raises FormatError when the file does not start with a valid header; use
    `classify_journal` first to tell a zeroed or empty journal from garbage.
    """
    headers: list[JournalHeader] = []
    records: list[JournalRecord] = []
    for item in iter_journal_records(data):
        if isinstance(item, JournalHeader):
            headers.append(item)
        else:
            records.append(item)
    if not headers:
        raise FormatError("journal header does not fit a whole sector in the file")
    return Journal(headers=tuple(headers), records=tuple(records))
