"""The transaction value and its self-checksummed record encoding (log and stream).

A record is a 20-byte header followed by a body:

    0  magic        b"PLTX"
    4  version      u8 (2)
    5  flags        u8 (bit 0: body is zlib-compressed)
    6  reserved     u16, zero
    8  body length  u32, big-endian
    12 body check   u32: the low 32 bits of XXH3-64 of the body as stored
    16 header crc32 u32 (CRC-32) of bytes 0..15

The header has its own CRC so that a damaged length is reported as corruption
instead of sending the reader past the end of the buffer. The body is a
msgpack map (see `_to_body`); it is unpacked with explicit limits.

Version 1 records (CRC-32 of the body, BLAKE2b page checksums in
`replication.checksum`) are not readable: their checksums mean something
else. A record with a valid header of another version raises
`UnsupportedRecordError`, which is not corruption: nothing is cut for it.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

import msgpack
import xxhash

from fs.formats import is_valid_page_size, lock_page

__all__ = [
    "DEFAULT_MAX_RECORD_SIZE",
    "RECORD_HEADER_SIZE",
    "RECORD_MAGIC",
    "CorruptRecordError",
    "RecordError",
    "Transaction",
    "TransactionError",
    "TruncatedRecordError",
    "UnsupportedRecordError",
    "decode_record",
    "encode_record",
    "iter_records",
    "record_size",
]

RECORD_MAGIC = b"PLTX"
RECORD_VERSION = 2
RECORD_HEADER_SIZE = 20
#: Largest body accepted by default (after decompression): 1 GiB.
DEFAULT_MAX_RECORD_SIZE = 1 << 30
#: Longest database name or node id, in bytes of UTF-8.
MAX_NAME_LEN = 1024

FLAG_ZLIB = 0x01
_KNOWN_FLAGS = FLAG_ZLIB
_HEADER = struct.Struct(">4sBBHIII")
assert _HEADER.size == RECORD_HEADER_SIZE
_U64 = 1 << 64


class TransactionError(ValueError):
    """A Transaction whose fields contradict each other or SQLite's limits."""


class RecordError(ValueError):
    """A record that cannot be decoded; `offset` is where it starts in the buffer."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (record at offset {offset})")
        self.offset = offset


class TruncatedRecordError(RecordError):
    """The buffer ends before the record does (a torn tail, or more bytes to come)."""


class CorruptRecordError(RecordError):
    """Bytes that are not a valid record: bad magic, CRC, msgpack, or field values."""


class UnsupportedRecordError(RecordError):
    """A well-formed record header of a record version this pylitefs does not read."""

    def __init__(self, version: int, offset: int) -> None:
        super().__init__(
            f"record version {version} (this pylitefs reads version {RECORD_VERSION} only)", offset
        )
        self.version = version


@dataclass(frozen=True, slots=True)
class Transaction:
    """One committed SQLite transaction of one database, as logged and replicated.

    `pages` maps page number to the page's full content after the commit
    (every page changed, none beyond `commit_size`, never the lock page);
    `commit_size` is the database size in pages after the commit.
    `pre_checksum`/`post_checksum` are the rolling checksums before and after
    (replication.checksum). `dropped` marks the deletion of the database: no
    pages, commit size 0. `timestamp_ns` is wall-clock nanoseconds.
    """

    db: str
    txid: int
    page_size: int
    commit_size: int
    pages: Mapping[int, bytes]
    timestamp_ns: int
    node_id: str
    pre_checksum: int
    post_checksum: int
    dropped: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.db, str) or not self.db or len(self.db.encode()) > MAX_NAME_LEN:
            raise TransactionError(f"invalid database name {self.db!r}")
        if not isinstance(self.node_id, str) or len(self.node_id.encode()) > MAX_NAME_LEN:
            raise TransactionError(f"invalid node id {self.node_id!r}")
        for name in ("txid", "page_size", "commit_size", "timestamp_ns"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TransactionError(f"{name} must be a non-negative int, got {value!r}")
        if self.txid < 1:
            raise TransactionError(f"txid starts at 1, got {self.txid}")
        if self.commit_size > 0xFFFFFFFF:
            raise TransactionError(f"commit size {self.commit_size} out of range")
        for name in ("pre_checksum", "post_checksum"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _U64:
                raise TransactionError(f"{name} must be a 64-bit unsigned int, got {value!r}")
        if not is_valid_page_size(self.page_size):
            raise TransactionError(f"invalid page size {self.page_size}")
        if self.dropped and (self.pages or self.commit_size):
            raise TransactionError("a dropped database has no pages and commit size 0")
        lock = lock_page(self.page_size)
        pages: dict[int, bytes] = {}
        for pgno, page in self.pages.items():
            if type(pgno) is not int or not 1 <= pgno <= self.commit_size or pgno == lock:
                raise TransactionError(
                    f"page number {pgno!r} outside 1..{self.commit_size} or the lock page"
                )
            if not isinstance(page, (bytes, bytearray, memoryview)) or len(page) != self.page_size:
                size = len(page) if isinstance(page, (bytes, bytearray, memoryview)) else None
                raise TransactionError(
                    f"page {pgno} is {size} bytes, page size is {self.page_size}"
                )
            pages[pgno] = page if type(page) is bytes else bytes(page)
        ordered = pages if list(pages) == sorted(pages) else dict(sorted(pages.items()))
        object.__setattr__(self, "pages", MappingProxyType(ordered))

    @classmethod
    def trusted(
        cls,
        db: str,
        txid: int,
        page_size: int,
        commit_size: int,
        pages: dict[int, bytes],
        timestamp_ns: int,
        node_id: str,
        pre_checksum: int,
        post_checksum: int,
    ) -> Transaction:
        """A transaction built WITHOUT the checks of the constructor, for callers that made them.

        Only for the capture path (`Store.commit`), which has already checked
        every field against what `__post_init__` requires. In particular
        `pages` must be a fresh dict (the transaction keeps it, read-only) in
        ascending page number order, its keys ints in 1..`commit_size` other
        than the lock page, its values `bytes` of `page_size` bytes. Anything
        decoded or otherwise untrusted goes through the constructor.
        """
        self = object.__new__(cls)
        set_db, set_txid, set_page_size, set_commit_size, set_pages, set_timestamp, set_node_id, \
            set_pre, set_post, set_dropped = _SLOT_SETTERS
        set_db(self, db)
        set_txid(self, txid)
        set_page_size(self, page_size)
        set_commit_size(self, commit_size)
        set_pages(self, MappingProxyType(pages))
        set_timestamp(self, timestamp_ns)
        set_node_id(self, node_id)
        set_pre(self, pre_checksum)
        set_post(self, post_checksum)
        set_dropped(self, False)
        return self

    def __reduce__(self) -> tuple[type[Transaction], tuple[Any, ...]]:
        # MappingProxyType cannot be pickled or deep-copied: hand over a dict.
        return type(self), tuple(
            dict(self.pages) if f.name == "pages" else getattr(self, f.name) for f in fields(self)
        )


#: The slots' own setters, in field order: `Transaction.trusted` sets the (frozen)
#: fields through them, at half the cost of `object.__setattr__` and its type lookup.
_SLOT_SETTERS = tuple(getattr(Transaction, f.name).__set__ for f in fields(Transaction))


def _to_body(txn: Transaction) -> dict[str, Any]:
    return {
        "db": txn.db,
        "txid": txn.txid,
        "page_size": txn.page_size,
        "commit_size": txn.commit_size,
        "ts": txn.timestamp_ns,
        "node": txn.node_id,
        "pre": txn.pre_checksum,
        "post": txn.post_checksum,
        "dropped": txn.dropped,
        "pgnos": list(txn.pages.keys()),
        "data": list(txn.pages.values()),
    }


_BODY_TYPES: dict[str, type] = {
    "db": str,
    "txid": int,
    "page_size": int,
    "commit_size": int,
    "ts": int,
    "node": str,
    "pre": int,
    "post": int,
    "dropped": bool,
    "pgnos": list,
    "data": list,
}


_packers = threading.local()
_HEAD_PREFIX = struct.Struct(">4sBBHII")
_CRC = struct.Struct(">I")
_xxh3 = xxhash.xxh3_64_intdigest


def _body_check(body: bytes | memoryview) -> int:
    """The header's check value of a stored body (low 32 bits of its XXH3-64)."""
    return _xxh3(body) & 0xFFFFFFFF


def packb(obj: Any) -> bytes:
    """msgpack.packb(obj, use_bin_type=True) with a reused Packer (one per thread).

    Shared by the log records here and the stream's frames (replication.wire).
    """
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    try:
        return packer.pack(obj)  # type: ignore[no-any-return]
    except BaseException:
        _packers.packer = None  # never reuse a packer whose buffer may hold a partial object
        raise


def encode_record(txn: Transaction, *, compress: bool = False) -> bytes:
    """The record bytes for `txn`; `compress` stores the body zlib-compressed (level 1)."""
    body = packb(_to_body(txn))
    flags = 0
    if compress:
        body = zlib.compress(body, 1)
        flags |= FLAG_ZLIB
    if len(body) > 0xFFFFFFFF:
        raise TransactionError(f"record body of {len(body)} bytes exceeds 4 GiB")
    head = _HEAD_PREFIX.pack(RECORD_MAGIC, RECORD_VERSION, flags, 0, len(body), _body_check(body))
    return b"".join((head, _CRC.pack(zlib.crc32(head)), body))


def _read_header(
    buf: bytes | bytearray | memoryview, offset: int, max_record_size: int
) -> tuple[int, int, int]:
    """(flags, body length, body check value) of the record at `offset`, checked."""
    if len(buf) - offset < RECORD_HEADER_SIZE:
        raise TruncatedRecordError(
            f"record header needs {RECORD_HEADER_SIZE} bytes, {len(buf) - offset} left", offset
        )
    magic, version, flags, reserved, length, body_crc, head_crc = _HEADER.unpack_from(buf, offset)
    if magic != RECORD_MAGIC:
        raise CorruptRecordError(f"bad record magic {bytes(magic)!r}", offset)
    if zlib.crc32(memoryview(buf)[offset : offset + 16]) != head_crc:
        raise CorruptRecordError("record header CRC mismatch", offset)
    if version != RECORD_VERSION:
        raise UnsupportedRecordError(version, offset)
    if flags & ~_KNOWN_FLAGS or reserved:
        raise CorruptRecordError(f"unknown record flags {flags:#x}/{reserved:#x}", offset)
    if length > max_record_size:
        raise CorruptRecordError(
            f"record body of {length} bytes exceeds the limit of {max_record_size}", offset
        )
    return flags, length, body_crc


def record_size(
    buf: bytes | bytearray | memoryview,
    offset: int = 0,
    *,
    max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
) -> int:
    """Total size (header + body) of the record at `offset`, from its header alone.

    Raises TruncatedRecordError if the header is incomplete, CorruptRecordError if it is bad.
    """
    _flags, length, _crc = _read_header(buf, offset, max_record_size)
    return RECORD_HEADER_SIZE + length


def decode_record(
    buf: bytes | bytearray | memoryview,
    offset: int = 0,
    *,
    max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
) -> tuple[Transaction, int]:
    """Decode the record at `offset`; return it and the offset just past it.

    Raises TruncatedRecordError when `buf` ends inside the record, and
    UnsupportedRecordError for a valid header of another record version, and
    CorruptRecordError for anything else that is wrong (magic, CRCs,
    flags, size limit, compression, msgpack, field types or values).
    """
    flags, length, body_crc = _read_header(buf, offset, max_record_size)
    start = offset + RECORD_HEADER_SIZE
    end = start + length
    if len(buf) < end:
        raise TruncatedRecordError(
            f"record body needs {length} bytes, {len(buf) - start} left", offset
        )
    body = memoryview(buf)[start:end]
    if _body_check(body) != body_crc:
        raise CorruptRecordError("record body checksum mismatch", offset)
    if flags & FLAG_ZLIB:
        body = memoryview(_inflate(body, max_record_size, offset))
    return _from_body(body, offset), end


def _inflate(body: memoryview, limit: int, offset: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise CorruptRecordError(f"bad compressed body: {exc}", offset) from None
    if len(out) > limit:
        raise CorruptRecordError(f"decompressed body exceeds the limit of {limit}", offset)
    if not inflater.eof or inflater.unused_data:
        raise CorruptRecordError("compressed body is incomplete or has trailing data", offset)
    return out


def _from_body(body: memoryview, offset: int) -> Transaction:
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_NAME_LEN,
            max_bin_len=65536,
            # One page number and one page per page of >= 512 bytes.
            max_array_len=len(body) // 512 + 16,
            max_map_len=len(_BODY_TYPES),
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError, StackError...
        raise CorruptRecordError(f"bad record body: {type(exc).__name__}: {exc}", offset) from None
    if not isinstance(obj, dict) or set(obj) != set(_BODY_TYPES):
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise CorruptRecordError(f"record body has the wrong fields: {keys}", offset)
    for key, kind in _BODY_TYPES.items():
        value = obj[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CorruptRecordError(f"record field {key!r} is {type(value).__name__}", offset)
    pgnos, data = obj["pgnos"], obj["data"]
    if len(pgnos) != len(data) or len(set(pgnos)) != len(pgnos):
        raise CorruptRecordError("record page numbers and pages do not match", offset)
    if not all(type(p) is int for p in pgnos) or not all(type(d) is bytes for d in data):
        raise CorruptRecordError("record page numbers or pages have the wrong types", offset)
    try:
        return Transaction(
            db=obj["db"],
            txid=obj["txid"],
            page_size=obj["page_size"],
            commit_size=obj["commit_size"],
            pages=dict(zip(pgnos, data, strict=True)),
            timestamp_ns=obj["ts"],
            node_id=obj["node"],
            pre_checksum=obj["pre"],
            post_checksum=obj["post"],
            dropped=obj["dropped"],
        )
    except TransactionError as exc:
        raise CorruptRecordError(f"invalid transaction: {exc}", offset) from None


def iter_records(
    buf: bytes | bytearray | memoryview,
    offset: int = 0,
    *,
    max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
) -> Iterator[tuple[int, Transaction]]:
    """Yield (offset, transaction) for consecutive records from `offset` to the end of `buf`.

    Stops cleanly at the exact end; raises TruncatedRecordError or
    CorruptRecordError (with `.offset`) at the first bad record.
    """
    while offset < len(buf):
        txn, end = decode_record(buf, offset, max_record_size=max_record_size)
        yield offset, txn
        offset = end
