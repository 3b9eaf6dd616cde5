"""The wal-index header and checkpoint info at the start of the `-shm` file.

Layout (wal.c, native byte order of the host):

- 0..47 and 48..95: two copies of WalIndexHdr — iVersion (3007000), unused,
  iChange, isInit (u8), bigEndCksum (u8), szPage (u16), mxFrame, nPage,
  aFrameCksum[2], aSalt[2], aCksum[2]. aCksum is the WAL checksum, in native
  word order, of the first 40 bytes. szPage is the page size, except that
  65536 is stored as 1 (`(sz & 0xff00) | (sz >> 16)`). aSalt holds the WAL
  header's salt bytes verbatim (big-endian); `WalIndexHeader.salt1/2` are
  their integer values, like `WalHeader.salt1/2`.
- 96..135: WalCkptInfo — nBackfill, aReadMark[5], aLock[8] (bytes used only
  as lock targets), nBackfillAttempted, notUsed0.

SQLite writes copy 1 then copy 0; a reader accepts the header when both
copies are equal, isInit is set and the checksum matches, and it drops its
page cache when the header differs from the one it last saw. A replica that
changed the database file behind SQLite's back therefore publishes
`header.after_apply(n_page)` (change counter + 1, mxFrame 0) — DESIGN §5.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, replace

from fs.formats import FormatError, is_valid_page_size
from fs.formats.wal import WAL_VERSION, wal_checksum

__all__ = [
    "CKPT_INFO_OFFSET",
    "CKPT_INFO_SIZE",
    "INDEX_HEADER_SIZE",
    "READMARK_NOT_USED",
    "SHM_HEADER_SIZE",
    "CheckpointInfo",
    "WalIndexHeader",
    "build_index_headers",
    "parse_checkpoint_info",
    "parse_index_header",
    "parse_shm_header",
]

INDEX_HEADER_SIZE = 48
CKPT_INFO_OFFSET = 2 * INDEX_HEADER_SIZE
CKPT_INFO_SIZE = 40
#: Bytes of the `-shm` file covered by this module (both header copies + ckpt info).
SHM_HEADER_SIZE = CKPT_INFO_OFFSET + CKPT_INFO_SIZE
READMARK_NOT_USED = 0xFFFFFFFF

_NATIVE_BIG_ENDIAN = sys.byteorder == "big"
# version, unused, change, isInit, bigEndCksum, szPage, mxFrame, nPage, frame cksum[2]
_HDR_HEAD = struct.Struct("=IIIBBHIIII")
_HDR_CKSUM = struct.Struct("=II")
_SALTS = struct.Struct(">II")
_CKPT = struct.Struct("=I5I8sII")
assert _HDR_HEAD.size == 32 and _CKPT.size == CKPT_INFO_SIZE


def _encode_page_size(page_size: int) -> int:
    return (page_size & 0xFF00) | (page_size >> 16)


def _decode_page_size(raw: int) -> int:
    return (raw & 0xFE00) + ((raw & 0x0001) << 16)


@dataclass(frozen=True, slots=True)
class WalIndexHeader:
    """One copy of the wal-index header. `page_size` is in bytes (65536, not 1)."""

    version: int
    unused: int
    change_counter: int
    is_init: int
    big_endian_checksum: int
    page_size: int
    mx_frame: int
    n_page: int
    frame_checksum: tuple[int, int]
    salt1: int
    salt2: int
    checksum: tuple[int, int]

    def _head(self) -> bytes:
        return _HDR_HEAD.pack(
            self.version,
            self.unused,
            self.change_counter,
            self.is_init,
            self.big_endian_checksum,
            _encode_page_size(self.page_size),
            self.mx_frame,
            self.n_page,
            *self.frame_checksum,
        ) + _SALTS.pack(self.salt1, self.salt2)

    def compute_checksum(self) -> tuple[int, int]:
        """The checksum SQLite expects in `checksum` for the other fields."""
        return wal_checksum(self._head(), _NATIVE_BIG_ENDIAN)

    @property
    def checksum_ok(self) -> bool:
        return self.checksum == self.compute_checksum()

    def to_bytes(self) -> bytes:
        """The 48 bytes of one copy, with the stored `checksum` as is."""
        return self._head() + _HDR_CKSUM.pack(*self.checksum)

    def with_checksum(self) -> WalIndexHeader:
        """This header with `checksum` recomputed."""
        return replace(self, checksum=self.compute_checksum())

    def after_apply(self, n_page: int) -> WalIndexHeader:
        """The header a replica publishes after changing the database to `n_page` pages.

        Change counter + 1 (wrapping at 2**32), mxFrame 0, nPage set, isInit 1,
        and a valid checksum; salts, page size and frame checksum are kept.
        """
        if not 0 <= n_page <= 0xFFFFFFFF:
            raise ValueError(f"n_page {n_page} out of range")
        return replace(
            self,
            change_counter=(self.change_counter + 1) & 0xFFFFFFFF,
            is_init=1,
            mx_frame=0,
            n_page=n_page,
        ).with_checksum()


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """The WalCkptInfo block at bytes 96..135."""

    n_backfill: int
    read_marks: tuple[int, int, int, int, int]
    lock_bytes: bytes
    n_backfill_attempted: int
    not_used0: int

    def after_restart(self) -> CheckpointInfo:
        """The block as SQLite's walRestartHdr leaves it for an empty WAL (mxFrame 0).

        nBackfill and nBackfillAttempted 0, read mark 1 = 0, read marks 2..4
        unused; read mark 0 and the lock bytes are kept.
        """
        m0 = self.read_marks[0]
        marks = (m0, 0, READMARK_NOT_USED, READMARK_NOT_USED, READMARK_NOT_USED)
        return replace(self, n_backfill=0, read_marks=marks, n_backfill_attempted=0)

    def to_bytes(self) -> bytes:
        return _CKPT.pack(
            self.n_backfill,
            *self.read_marks,
            self.lock_bytes,
            self.n_backfill_attempted,
            self.not_used0,
        )


def parse_index_header(data: bytes | bytearray | memoryview, offset: int = 0) -> WalIndexHeader:
    """Decode one 48-byte wal-index header copy at `offset` (no checksum check: see checksum_ok).

    Raises FormatError when fewer than 48 bytes are available.
    """
    if offset < 0 or len(data) < offset + INDEX_HEADER_SIZE:
        raise FormatError(f"wal-index header at {offset} needs {INDEX_HEADER_SIZE} bytes")
    version, unused, change, is_init, big_end, raw_size, mx, n_page, fc1, fc2 = (
        _HDR_HEAD.unpack_from(data, offset)
    )
    salt1, salt2 = _SALTS.unpack_from(data, offset + 32)
    c1, c2 = _HDR_CKSUM.unpack_from(data, offset + 40)
    return WalIndexHeader(
        version=version,
        unused=unused,
        change_counter=change,
        is_init=is_init,
        big_endian_checksum=big_end,
        page_size=_decode_page_size(raw_size),
        mx_frame=mx,
        n_page=n_page,
        frame_checksum=(fc1, fc2),
        salt1=salt1,
        salt2=salt2,
        checksum=(c1, c2),
    )


def parse_shm_header(data: bytes | bytearray | memoryview) -> WalIndexHeader:
    """The wal-index header a SQLite reader would accept from the start of a `-shm` file.

    Raises FormatError unless both copies are present and byte-identical,
    isInit is set, the checksum matches, the version is 3007000 and the page
    size is valid (or 0 with mxFrame 0: a recovered empty WAL) — the cases in
    which SQLite would not trust the header.
    """
    if len(data) < 2 * INDEX_HEADER_SIZE:
        raise FormatError(f"wal-index needs {2 * INDEX_HEADER_SIZE} bytes, got {len(data)}")
    view = memoryview(data)
    if view[:INDEX_HEADER_SIZE] != view[INDEX_HEADER_SIZE : 2 * INDEX_HEADER_SIZE]:
        raise FormatError("the two wal-index header copies differ (a write in progress?)")
    hdr = parse_index_header(data)
    if not hdr.is_init:
        raise FormatError("wal-index header is not initialised")
    if not hdr.checksum_ok:
        raise FormatError("wal-index header checksum mismatch")
    if hdr.version != WAL_VERSION:
        raise FormatError(f"unsupported wal-index version {hdr.version}")
    # SQLite's recovery of an empty WAL zeroes the header before publishing
    # it (walIndexRecover): page size 0 with no frame is what every replica
    # reader builds from the replica's empty WAL, and SQLite trusts it.
    if not is_valid_page_size(hdr.page_size) and (hdr.page_size or hdr.mx_frame):
        raise FormatError(f"invalid page size {hdr.page_size} in wal-index header")
    return hdr


def build_index_headers(header: WalIndexHeader) -> bytes:
    """The 96 bytes (two identical copies) to write at offset 0 of the `-shm` file.

    SQLite writes copy 1 before copy 0 so that a torn update is detected; a
    caller writing through a shared mapping should do the same (bytes
    48..95 first, then 0..47).
    """
    one = header.to_bytes()
    return one + one


def parse_checkpoint_info(data: bytes | bytearray | memoryview) -> CheckpointInfo:
    """Decode the WalCkptInfo block at bytes 96..135 of a `-shm` file image."""
    if len(data) < SHM_HEADER_SIZE:
        raise FormatError(f"checkpoint info needs {SHM_HEADER_SIZE} bytes, got {len(data)}")
    n_backfill, m0, m1, m2, m3, m4, locks, attempted, unused = _CKPT.unpack_from(
        data, CKPT_INFO_OFFSET
    )
    return CheckpointInfo(
        n_backfill=n_backfill,
        read_marks=(m0, m1, m2, m3, m4),
        lock_bytes=bytes(locks),
        n_backfill_attempted=attempted,
        not_used0=unused,
    )
