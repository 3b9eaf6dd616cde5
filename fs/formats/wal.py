"""The write-ahead log (`<db>-wal`) and `WalTracker`, which finds its commits.

Format (https://sqlite.org/fileformat.html#the_write_ahead_log): a 32-byte
header (magic, version 3007000, page size, checkpoint sequence, salt-1,
salt-2, checksum-1, checksum-2), then frames: a 24-byte header (pgno, commit
size, salt-1, salt-2, checksum-1, checksum-2) and one page. Integers are
big-endian; the checksum reads the data as 32-bit words in the byte order
given by the magic's low bit (1 = big-endian). The checksum is cumulative:
the header's covers its first 24 bytes; each frame's continues from the
previous frame's (or the header's) over the frame header's first 8 bytes and
the page. A frame is valid when its salts equal the header's, pgno != 0, and
its checksum continues the chain; a transaction is committed when its last
frame (commit size != 0) is valid.

The checksum is linear over Z/2**32: running it over a page from state s
gives A**m * s + C(page), where m is the number of word pairs and C(page) the
page's checksum from (0, 0). `WalTracker` keeps C(page) per pending frame, so
re-validating a chain after SQLite rewrites frame headers costs a few
multiplications per frame, and each page is summed at most once.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

import numpy as np

from fs.formats import FormatError, is_valid_page_size

__all__ = [
    "FRAME_HEADER_SIZE",
    "WAL_HEADER_SIZE",
    "WAL_MAGIC_BE",
    "WAL_MAGIC_LE",
    "WAL_VERSION",
    "FrameHeader",
    "WalCommit",
    "WalHeader",
    "WalScan",
    "WalTracker",
    "build_wal_header",
    "encode_frame_header",
    "frame_offset",
    "parse_frame_header",
    "parse_wal_header",
    "scan_wal",
    "wal_checksum",
]

logger = logging.getLogger(__name__)

WAL_MAGIC_LE: Final = 0x377F0682
WAL_MAGIC_BE: Final = 0x377F0683
WAL_VERSION: Final = 3007000
WAL_HEADER_SIZE: Final = 32
FRAME_HEADER_SIZE: Final = 24

_MASK = 0xFFFFFFFF
_WAL_HEADER = struct.Struct(">IIIIIIII")
_FRAME_HEADER = struct.Struct(">IIIIII")
_PAIR = {False: struct.Struct("<II"), True: struct.Struct(">II")}

Checksum = tuple[int, int]


# --- checksum -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _words_struct(nbytes: int, big_endian: bool) -> struct.Struct:
    return struct.Struct(f"{'>' if big_endian else '<'}{nbytes // 4}I")


def wal_checksum(
    data: bytes | bytearray | memoryview, big_endian: bool, s0: int = 0, s1: int = 0
) -> Checksum:
    """SQLite's WAL checksum of `data` continued from (s0, s1).

    For each pair of 32-bit words (x0, x1), read big-endian if `big_endian`
    else little-endian: s0 += x0 + s1; s1 += x1 + s0 (mod 2**32). `data` must
    be a multiple of 8 bytes long (FormatError otherwise).

    Inputs of `_VECTOR_MIN_BYTES` or more (pages) are summed with numpy as
    one dot product (see `_weights`); shorter ones (headers) in Python.
    """
    nbytes = len(data)
    if nbytes % 8:
        raise FormatError(f"WAL checksum needs a multiple of 8 bytes, got {nbytes}")
    if nbytes >= _VECTOR_MIN_BYTES:
        p0, p1 = _vector_sum(data, big_endian)
        if not (s0 or s1):
            return p0, p1
        a, b, c, d = _advance_matrix(nbytes // 8)
        return (a * s0 + b * s1 + p0) & _MASK, (c * s0 + d * s1 + p1) & _MASK
    words = _words_struct(nbytes, big_endian).unpack(data)
    if nbytes % 64 == 0:
        # Unrolled by 8 pairs, masking once per block: values stay below 2**45,
        # which CPython adds quickly; 8 separate masks per block cost ~30% more.
        it = iter(words)
        for a0, b0, a1, b1, a2, b2, a3, b3, a4, b4, a5, b5, a6, b6, a7, b7 in zip(*[it] * 16):
            s0 += a0 + s1
            s1 += b0 + s0
            s0 += a1 + s1
            s1 += b1 + s0
            s0 += a2 + s1
            s1 += b2 + s0
            s0 += a3 + s1
            s1 += b3 + s0
            s0 += a4 + s1
            s1 += b4 + s0
            s0 += a5 + s1
            s1 += b5 + s0
            s0 += a6 + s1
            s1 += b6 + s0
            s0 += a7 + s1
            s1 += b7 + s0
            s0 &= _MASK
            s1 &= _MASK
        return s0, s1
    it = iter(words)
    for x0, x1 in zip(it, it):
        s0 = (s0 + x0 + s1) & _MASK
        s1 = (s1 + x1 + s0) & _MASK
    return s0, s1


_VECTOR_MIN_BYTES = 256


@functools.lru_cache(maxsize=16)
def _weights(pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Coefficients of each word in the checksum of `pairs` word pairs, from (0, 0).

    One step is S' = A·S + (x0, x0 + x1) with A = [[1, 1], [1, 2]], so after n
    pairs S = Σ_i A**(n-1-i)·(x0_i, x0_i + x1_i): with A**k = [[a, b], [c, d]],
    s0 = Σ (a+b)·x0_i + b·x1_i and s1 = Σ (c+d)·x0_i + d·x1_i (mod 2**32).
    """
    coeffs = np.empty((pairs, 4), dtype=np.uint64)
    a, b, c, d = 1, 0, 0, 1
    for k in range(pairs):
        coeffs[pairs - 1 - k] = ((a + b) & _MASK, b, (c + d) & _MASK, d)
        a, b, c, d = (a + c) & _MASK, (b + d) & _MASK, (a + 2 * c) & _MASK, (b + 2 * d) & _MASK
    w = np.ascontiguousarray(coeffs.T)
    return w[0], w[1], w[2], w[3]


_WORD_DTYPE = {False: np.dtype("<u4"), True: np.dtype(">u4")}


@functools.lru_cache(maxsize=16)
def _word_weights(pairs: int) -> np.ndarray:
    """The (2·pairs) x 2 uint64 matrix mapping the data's 32-bit words to (s0, s1).

    Row 2i holds the weights of x0_i in s0 and s1, row 2i+1 those of x1_i.
    """
    w00, w01, w10, w11 = _weights(pairs)
    mat = np.empty((2 * pairs, 2), dtype=np.uint64)
    mat[0::2, 0] = w00
    mat[1::2, 0] = w01
    mat[0::2, 1] = w10
    mat[1::2, 1] = w11
    mat.setflags(write=False)
    return mat


def _vector_sum(data: bytes | bytearray | memoryview, big_endian: bool) -> Checksum:
    # One integer dot product: the uint32 words are promoted to uint64, whose
    # products and sums wrap mod 2**64, which keeps them right mod 2**32.
    # (A single numpy call chain: on the commit path, with cold caches, each
    # numpy call costs several times what it does in a benchmark loop.)
    words = np.frombuffer(data, dtype=_WORD_DTYPE[big_endian])
    s0, s1 = words.dot(_word_weights(len(words) // 2)).tolist()
    return s0 & _MASK, s1 & _MASK


@functools.lru_cache(maxsize=16)
def _advance_matrix(pairs: int) -> tuple[int, int, int, int]:
    """(a, b, c, d) with A**pairs = [[a, b], [c, d]] mod 2**32, A = [[1, 1], [1, 2]]."""
    result = (1, 0, 0, 1)
    base = (1, 1, 1, 2)
    while pairs:
        if pairs & 1:
            result = _matmul(result, base)
        base = _matmul(base, base)
        pairs >>= 1
    return result


def _matmul(
    x: tuple[int, int, int, int], y: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    a, b, c, d = x
    e, f, g, h = y
    return (
        (a * e + b * g) & _MASK,
        (a * f + b * h) & _MASK,
        (c * e + d * g) & _MASK,
        (c * f + d * h) & _MASK,
    )


# --- headers --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalHeader:
    """The 32-byte WAL header."""

    magic: int
    version: int
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    checksum1: int
    checksum2: int

    @property
    def big_endian(self) -> bool:
        """True when frame checksums read words big-endian (magic 0x377f0683)."""
        return bool(self.magic & 1)

    @property
    def checksum(self) -> Checksum:
        return self.checksum1, self.checksum2

    @property
    def salts(self) -> tuple[int, int]:
        return self.salt1, self.salt2

    @property
    def frame_size(self) -> int:
        return FRAME_HEADER_SIZE + self.page_size

    def to_bytes(self) -> bytes:
        return _WAL_HEADER.pack(
            self.magic,
            self.version,
            self.page_size,
            self.checkpoint_seq,
            self.salt1,
            self.salt2,
            self.checksum1,
            self.checksum2,
        )


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The 24-byte frame header. `commit_size` is non-zero only on a commit frame."""

    pgno: int
    commit_size: int
    salt1: int
    salt2: int
    checksum1: int
    checksum2: int

    @property
    def is_commit(self) -> bool:
        return self.commit_size != 0

    @property
    def checksum(self) -> Checksum:
        return self.checksum1, self.checksum2


def parse_wal_header(data: bytes | bytearray | memoryview, *, verify: bool = True) -> WalHeader:
    """Decode the WAL header from the first 32 bytes of `data`.

    Raises FormatError on a short buffer, an unknown magic or version, a page
    size SQLite cannot use, or (when `verify`) a header checksum mismatch; in
    each of these cases SQLite treats the WAL as empty.
    """
    if len(data) < WAL_HEADER_SIZE:
        raise FormatError(f"WAL header needs {WAL_HEADER_SIZE} bytes, got {len(data)}")
    hdr = WalHeader(*_WAL_HEADER.unpack_from(data, 0))
    if hdr.magic not in (WAL_MAGIC_LE, WAL_MAGIC_BE):
        raise FormatError(f"not a WAL header: magic {hdr.magic:#010x}")
    if hdr.version != WAL_VERSION:
        raise FormatError(f"unsupported WAL version {hdr.version}")
    if not is_valid_page_size(hdr.page_size):
        raise FormatError(f"invalid page size {hdr.page_size} in WAL header")
    if verify:
        expected = wal_checksum(memoryview(data)[:24], hdr.big_endian)
        if expected != hdr.checksum:
            raise FormatError(
                f"WAL header checksum mismatch: stored {hdr.checksum}, computed {expected}"
            )
    return hdr


def build_wal_header(
    page_size: int, checkpoint_seq: int, salt1: int, salt2: int, *, big_endian: bool = False
) -> WalHeader:
    """A WAL header with a valid checksum, as SQLite writes it when it (re)starts the log."""
    if not is_valid_page_size(page_size):
        raise FormatError(f"invalid page size {page_size}")
    magic = WAL_MAGIC_BE if big_endian else WAL_MAGIC_LE
    head = struct.pack(">IIIIII", magic, WAL_VERSION, page_size, checkpoint_seq, salt1, salt2)
    c1, c2 = wal_checksum(head, big_endian)
    return WalHeader(magic, WAL_VERSION, page_size, checkpoint_seq, salt1, salt2, c1, c2)


def parse_frame_header(data: bytes | bytearray | memoryview, offset: int = 0) -> FrameHeader:
    """Decode the 24-byte frame header at `offset` (no validation: see WalTracker)."""
    if offset < 0 or len(data) < offset + FRAME_HEADER_SIZE:
        raise FormatError(f"frame header at {offset} needs {FRAME_HEADER_SIZE} bytes")
    return FrameHeader(*_FRAME_HEADER.unpack_from(data, offset))


def encode_frame_header(
    header: WalHeader,
    previous: Checksum,
    pgno: int,
    commit_size: int,
    page: bytes | bytearray | memoryview,
) -> tuple[bytes, Checksum]:
    """The frame header SQLite writes for `page`, chained from checksum `previous`.

    Returns the 24 bytes and the frame's checksum (the next frame's `previous`).
    """
    if len(page) != header.page_size:
        raise FormatError(f"page is {len(page)} bytes, WAL page size is {header.page_size}")
    s = wal_checksum(struct.pack(">II", pgno, commit_size), header.big_endian, *previous)
    s = wal_checksum(page, header.big_endian, *s)
    return _FRAME_HEADER.pack(pgno, commit_size, header.salt1, header.salt2, *s), s


def frame_offset(frame: int, page_size: int) -> int:
    """Byte offset of 1-based frame number `frame` in a WAL of `page_size` pages."""
    if frame < 1:
        raise ValueError(f"frame numbers start at 1, got {frame}")
    return WAL_HEADER_SIZE + (frame - 1) * (FRAME_HEADER_SIZE + page_size)


# --- commits --------------------------------------------------------------------------------------


class WalCommit(NamedTuple):
    """One committed transaction found in the WAL (a NamedTuple: built once per commit, cheaply).

    `pages` holds the last version of each page the transaction wrote, only
    pages <= `commit_size` (the database size in pages after the commit).
    Frames `first_frame`..`last_frame` (1-based, as SQLite numbers them) are
    the transaction's, under the WAL header with `salts`/`checkpoint_seq`.
    `checksum` is the commit frame's, i.e. the chain value after the commit.
    """

    page_size: int
    commit_size: int
    pages: Mapping[int, bytes]
    first_frame: int
    last_frame: int
    salts: tuple[int, int]
    checkpoint_seq: int
    checksum: Checksum


class _Chain:
    """Validates frames one by one for a given WAL header."""

    __slots__ = (
        "big_endian", "checkpoint_seq", "frame_size", "header", "matrix", "page_size", "pair",
        "salts",
    )

    def __init__(self, header: WalHeader) -> None:
        self.header = header
        self.salts = header.salts
        self.checkpoint_seq = header.checkpoint_seq
        self.big_endian = header.big_endian
        self.page_size = header.page_size
        self.frame_size = header.frame_size
        self.pair = _PAIR[header.big_endian]
        self.matrix = _advance_matrix(header.page_size // 8)

    def page_sum(self, page: bytes | bytearray | memoryview) -> Checksum:
        """C(page): the page's checksum from (0, 0) (pages are >= 512 bytes: numpy)."""
        return _vector_sum(page, self.big_endian)

    def next(
        self, s: Checksum, frame: bytes | bytearray | memoryview, page_sum: Checksum
    ) -> tuple[Checksum, int, int] | None:
        """(checksum, pgno, commit size) if `frame` validly follows `s`, else None."""
        pgno, commit, salt1, salt2, c1, c2 = _FRAME_HEADER.unpack_from(frame, 0)
        hdr = self.header
        if pgno == 0 or salt1 != hdr.salt1 or salt2 != hdr.salt2:
            return None
        x0, x1 = self.pair.unpack_from(frame, 0)
        s0 = (s[0] + x0 + s[1]) & _MASK
        s1 = (s[1] + x1 + s0) & _MASK
        a, b, c, d = self.matrix
        p0, p1 = page_sum
        t0 = (a * s0 + b * s1 + p0) & _MASK
        t1 = (c * s0 + d * s1 + p1) & _MASK
        if t0 != c1 or t1 != c2:
            return None
        return (t0, t1), pgno, commit


def _make_commit(
    chain: _Chain, frames: list[tuple[int, bytes]], first: int, last: int, commit: int, s: Checksum
) -> WalCommit:
    pages: dict[int, bytes] = {}
    for pgno, page in frames:
        if pgno <= commit:
            pages[pgno] = page
    hdr = chain.header
    return WalCommit(
        page_size=hdr.page_size,
        commit_size=commit,
        pages=pages,
        first_frame=first,
        last_frame=last,
        salts=hdr.salts,
        checkpoint_seq=hdr.checkpoint_seq,
        checksum=s,
    )


@dataclass(frozen=True, slots=True)
class WalScan:
    """What `scan_wal` found: the header (None if invalid) and the committed transactions."""

    header: WalHeader | None
    commits: tuple[WalCommit, ...]
    mx_frame: int  # last committed frame, 0 if none
    checksum: Checksum  # chain value at mx_frame (the header's if none)
    last_frame: tuple[int, int, bytes] | None = None  # pgno, commit size, page of mx_frame


def scan_wal(data: bytes | bytearray | memoryview) -> WalScan:
    """Find every committed transaction in a whole WAL file image, as SQLite's recovery would.

    Walks frames from offset 32 until the first invalid or incomplete frame;
    frames after the last commit frame are ignored. A missing or invalid
    header yields no commits (SQLite ignores such a WAL).
    """
    try:
        header = parse_wal_header(data)
    except FormatError:
        return WalScan(None, (), 0, (0, 0))
    chain = _Chain(header)
    view = memoryview(data)
    fsize = header.frame_size
    s = header.checksum
    commits: list[WalCommit] = []
    txn: list[tuple[int, bytes]] = []
    committed, committed_s = 0, s
    last: tuple[int, int, bytes] | None = None
    frame = 1
    offset = WAL_HEADER_SIZE
    while offset + fsize <= len(view):
        buf = view[offset : offset + fsize]
        page = buf[FRAME_HEADER_SIZE:]
        step = chain.next(s, buf, chain.page_sum(page))
        if step is None:
            break
        s, pgno, commit = step
        txn.append((pgno, bytes(page)))
        if commit:
            if not _is_padding_repeat(last, txn, commit):
                commits.append(_make_commit(chain, txn, committed + 1, frame, commit, s))
            last = (pgno, commit, txn[-1][1])
            txn = []
            committed, committed_s = frame, s
        frame += 1
        offset += fsize
    return WalScan(header, tuple(commits), committed, committed_s, last)


def _is_padding_repeat(
    last: tuple[int, int, bytes] | None, txn: list[tuple[int, bytes]], commit: int
) -> bool:
    """True when `txn` is one frame repeating the previous commit frame (sector padding)."""
    return len(txn) == 1 and last is not None and last == (txn[0][0], commit, txn[0][1])


# --- tracker --------------------------------------------------------------------------------------


class _Coverage:
    """Which bytes of a fixed-size buffer have been written: sorted, merged intervals."""

    __slots__ = ("spans",)

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []

    def add(self, start: int, end: int) -> None:
        if not self.spans:
            self.spans = [(start, end)]
            return
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted([*self.spans, (start, end)]):
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        self.spans = merged

    def covers(self, start: int, end: int) -> bool:
        return any(lo <= start and end <= hi for lo, hi in self.spans)


class _WholeFrame:
    """An uncommitted frame written the usual way: from its start to its end, in order.

    SQLite writes a frame's 24-byte header, then its page; the kernel may cut
    either write at page-cache boundaries, so they arrive as several chunks,
    each starting where the previous one ended. The chunks (bytes objects,
    not copied) are kept until the frame is complete; then `head` and `page`
    are set (`page` is None until then). The page's checksum contribution
    (`page_sum`) is computed only if the general walk validates the frame.
    Any other write to the frame turns it into a `_PendingFrame`.
    """

    __slots__ = ("chunks", "filled", "head", "page", "page_sum")

    def __init__(self, chunk: bytes) -> None:
        self.chunks: list[bytes] = [chunk]
        self.filled = len(chunk)
        self.head = b""
        self.page: bytes | None = None
        self.page_sum: Checksum | None = None

    def finish(self) -> bytes:
        """Set `head` and `page` from the chunks (the frame is complete); return the page."""
        chunks = self.chunks
        head = chunks[0]
        if len(head) == FRAME_HEADER_SIZE:
            page = chunks[1] if len(chunks) == 2 else b"".join(chunks[1:])
        else:
            frame = b"".join(chunks)
            head = frame[:FRAME_HEADER_SIZE]
            page = frame[FRAME_HEADER_SIZE:]
        self.head = head
        self.page = page
        self.chunks = []
        return page


class _PendingFrame:
    """An uncommitted frame as far as it has been written (any chunking, rewrites)."""

    __slots__ = ("coverage", "data", "page_sum")

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.coverage = _Coverage()
        self.page_sum: Checksum | None = None

    def write(self, start: int, chunk: memoryview) -> None:
        end = start + len(chunk)
        self.data[start:end] = chunk
        self.coverage.add(start, end)
        if end > FRAME_HEADER_SIZE:
            self.page_sum = None

    def complete(self) -> bool:
        return self.coverage.covers(0, len(self.data))

    @classmethod
    def from_whole(cls, whole: _WholeFrame, size: int) -> _PendingFrame:
        """The general form of `whole`, for a write the fast path does not handle."""
        pending = cls(size)
        if whole.page is None:
            pending.data[: whole.filled] = b"".join(whole.chunks)
            pending.coverage.add(0, whole.filled)
        else:
            pending.data[:FRAME_HEADER_SIZE] = whole.head
            pending.data[FRAME_HEADER_SIZE:] = whole.page
            pending.coverage.add(0, size)
            pending.page_sum = whole.page_sum
        return pending


class WalTracker:
    """Follows the write() calls applied to one `-wal` file and reports each commit once.

    Feed it, in order, every write (`write`), truncation (`truncate`) and
    deletion (`reset`) the file undergoes. `write` returns the transactions
    that became committed by that write: a transaction is committed when the
    checksum chain from the header through its commit frame validates, which
    SQLite may achieve at the commit frame's page write or, when it rewrote
    pages of the uncommitted transaction in place, at the last frame-header
    rewrite (walRewriteChecksums). Writes may arrive in any chunking. The one
    exception to validating the chain: a one-frame transaction appended, in
    order, right after the last commit (by far the most common commit) is
    trusted to carry the checksum SQLite computed (see `_frame_complete`).

    State kept: the current header, the number and checksum of the last
    committed frame, and only the frames written since then. Committed frames
    are never touched again by SQLite until it writes a new header (after a
    checkpoint, with new salts): writes to them are ignored.

    When SQLite pads a commit to a sector boundary (devices without
    powersafe-overwrite, `synchronous=FULL`), it repeats the commit frame;
    each repeat is a valid single-frame commit of identical content and is
    not reported.
    """

    def __init__(self) -> None:
        self._hdr_buf = bytearray(WAL_HEADER_SIZE)
        self._hdr_coverage = _Coverage()
        self._chain: _Chain | None = None
        self._committed = 0
        self._checksum: Checksum = (0, 0)
        self._frames: dict[int, _PendingFrame | _WholeFrame] = {}
        self._last_frame: tuple[int, int, bytes] | None = None  # pgno, commit size, page

    @classmethod
    def from_wal(cls, data: bytes | bytearray | memoryview) -> tuple[WalTracker, list[WalCommit]]:
        """A tracker for an existing WAL file whose bytes are `data`, and the commits found in it.

        Uncommitted frames after the last commit are not kept: at start-up no
        transaction is in progress, so they are debris of an aborted one.
        """
        tracker = cls()
        if len(data) >= WAL_HEADER_SIZE:
            tracker._hdr_buf[:] = memoryview(data)[:WAL_HEADER_SIZE]
            tracker._hdr_coverage.add(0, WAL_HEADER_SIZE)
        scan = scan_wal(data)
        if scan.header is not None:
            tracker._chain = _Chain(scan.header)
            tracker._committed = scan.mx_frame
            tracker._checksum = scan.checksum
            tracker._last_frame = scan.last_frame
        return tracker, list(scan.commits)

    # -- observers --

    @property
    def header(self) -> WalHeader | None:
        """The current valid WAL header, or None (no header yet, or an invalid one)."""
        return self._chain.header if self._chain else None

    @property
    def mx_frame(self) -> int:
        """The last committed frame under the current header (0 if none)."""
        return self._committed

    @property
    def checksum(self) -> Checksum:
        """The checksum chain value at `mx_frame`."""
        return self._checksum

    @property
    def pending_frames(self) -> int:
        """How many uncommitted frames are buffered."""
        return len(self._frames)

    # -- inputs --

    def reset(self) -> None:
        """The WAL file was deleted (or truncated below its header): forget everything."""
        self._hdr_buf = bytearray(WAL_HEADER_SIZE)
        self._hdr_coverage = _Coverage()
        self._drop_generation()

    def truncate(self, size: int) -> None:
        """The WAL file was truncated (or extended) to `size` bytes."""
        if size < 0:
            raise ValueError(f"negative size {size}")
        if size < WAL_HEADER_SIZE:
            self.reset()
            return
        if self._chain is None:
            return
        fsize = self._chain.header.frame_size
        whole = (size - WAL_HEADER_SIZE) // fsize  # frames entirely within the file
        if whole < self._committed:
            logger.warning(
                "WAL truncated to %d bytes, cutting committed frames %d..%d; "
                "ignoring it until SQLite writes a new header",
                size,
                whole + 1,
                self._committed,
            )
            self._drop_generation()
            return
        for frame in [f for f in self._frames if f > whole]:
            del self._frames[frame]

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> list[WalCommit]:
        """Apply one write() of `data` at `offset`; return the transactions it committed."""
        chain = self._chain
        if chain is not None and offset >= WAL_HEADER_SIZE and type(data) is bytes and data:
            # Fast path: SQLite appending a frame as usual, i.e. writing an
            # uncommitted frame from its start to its end, in order (a header,
            # then a page, either maybe cut by the kernel). Anything else
            # (rewrites, writes across frames, a frame not written from its
            # start, other buffer types) takes the general path below.
            fsize = chain.frame_size
            frame, start = divmod(offset - WAL_HEADER_SIZE, fsize)
            frame += 1
            end = start + len(data)
            if frame > self._committed and end <= fsize:
                whole = self._frames.get(frame)
                if whole is None:
                    if start == 0:
                        whole = self._frames[frame] = _WholeFrame(data)
                        if end < fsize:
                            return []
                        return self._frame_complete(chain, frame, whole)
                elif type(whole) is _WholeFrame and whole.page is None and start == whole.filled:
                    whole.chunks.append(data)
                    whole.filled = end
                    if end < fsize:
                        return []
                    return self._frame_complete(chain, frame, whole)
        return self._write(offset, data)

    def _frame_complete(self, chain: _Chain, frame: int, whole: _WholeFrame) -> list[WalCommit]:
        """The fast path completed `whole` (frame `frame`); commit if it ends a transaction.

        A one-frame transaction appended right after the last commit is taken
        on SQLite's word: its salts and page number are checked, its checksum
        is not recomputed but continued from the frame header. SQLite writes a
        frame with a stale checksum only in a transaction that rewrote one of
        its own earlier frames (walRewriteChecksums), i.e. never as the first
        frame after a commit; recovery (`scan_wal`) verifies every checksum
        from the file. Any other frame keeps its page for the general walk,
        which verifies the chain (the page's sum is computed there, once).
        """
        page = whole.finish()
        head = whole.head
        if head[4:8] == b"\0\0\0\0":
            return []  # not a commit frame
        if frame != self._committed + 1:
            return self._commit_upto(frame, (frame,))  # several frames: the general walk
        pgno, commit, salt1, salt2, c1, c2 = _FRAME_HEADER.unpack(head)
        if pgno == 0 or (salt1, salt2) != chain.salts:
            return []
        s = (c1, c2)
        last = self._last_frame
        self._last_frame = (pgno, commit, page)
        self._committed = frame
        self._checksum = s
        self._frames.clear()
        if last is not None and last[0] == pgno and last[1] == commit and last[2] == page:
            logger.debug("WAL frame %d repeats the commit frame (padding)", frame)
            return []
        return [
            WalCommit(
                chain.page_size, commit, {pgno: page} if pgno <= commit else {}, frame, frame,
                chain.salts, chain.checkpoint_seq, s,
            )
        ]

    def _write(self, offset: int, data: bytes | bytearray | memoryview) -> list[WalCommit]:
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        view = memoryview(data).cast("B")
        end = offset + len(view)
        if offset < WAL_HEADER_SIZE and end > offset:
            cut = min(end, WAL_HEADER_SIZE)
            self._write_header(offset, view[: cut - offset])
            view = view[cut - offset :]
            offset = cut
        if not view or self._chain is None:
            if view:
                logger.debug("write at %d to a WAL without a valid header ignored", offset)
            return []
        fsize = self._chain.header.frame_size
        candidates: list[int] = []
        touched: list[int] = []
        pos = 0
        while pos < len(view):
            rel = offset + pos - WAL_HEADER_SIZE
            frame, start = divmod(rel, fsize)
            frame += 1
            n = min(fsize - start, len(view) - pos)
            if frame > self._committed:
                pending = self._frames.get(frame)
                if pending is None:
                    pending = self._frames[frame] = _PendingFrame(fsize)
                elif type(pending) is _WholeFrame:
                    pending = self._frames[frame] = _PendingFrame.from_whole(pending, fsize)
                pending.write(start, view[pos : pos + n])
                touched.append(frame)
                if pending.complete() and pending.data[4:8] != b"\0\0\0\0":
                    candidates.append(frame)
            pos += n
        if not candidates:
            return []
        return self._commit_upto(max(candidates), touched)

    def _commit_upto(self, target: int, touched: list[int] | tuple[int, ...]) -> list[WalCommit]:
        """Validate up to frame `target` after a write that touched frames `touched`."""
        before = self._committed
        commits = self._validate(target)
        if self._committed != before:
            # Frames past the new commit not written by this call are debris of
            # an aborted transaction: SQLite writes a transaction's frames after
            # its predecessor's commit, never before it.
            if self._committed >= max(touched):
                self._frames.clear()
                return commits
            keep = set(touched)
            for frame in list(self._frames):
                if frame <= self._committed or frame not in keep:
                    del self._frames[frame]
        return commits

    # -- internals --

    def _drop_generation(self) -> None:
        self._chain = None
        self._committed = 0
        self._checksum = (0, 0)
        self._frames.clear()
        self._last_frame = None

    def _write_header(self, offset: int, chunk: memoryview) -> None:
        self._hdr_buf[offset : offset + len(chunk)] = chunk
        self._hdr_coverage.add(offset, offset + len(chunk))
        if not self._hdr_coverage.covers(0, WAL_HEADER_SIZE):
            return
        try:
            header = parse_wal_header(self._hdr_buf)
        except FormatError as exc:
            logger.debug("WAL header write leaves no valid header: %s", exc)
            self._drop_generation()
            return
        if self._chain is not None and self._chain.header == header:
            return  # rewritten unchanged: same log generation
        self._drop_generation()
        self._chain = _Chain(header)
        self._checksum = header.checksum

    def _validate(self, target: int) -> list[WalCommit]:
        """Walk pending frames from the last commit up to `target`, committing where valid."""
        chain = self._chain
        assert chain is not None
        s = self._checksum
        commits: list[WalCommit] = []
        txn: list[tuple[int, bytes]] = []
        first = self._committed + 1
        frames = self._frames
        for frame in range(first, target + 1):
            pending = frames.get(frame)
            if pending is None:
                break
            if type(pending) is _WholeFrame:
                if pending.page is None:
                    break
                page = pending.page
                if pending.page_sum is None:
                    pending.page_sum = chain.page_sum(page)
                step = chain.next(s, pending.head, pending.page_sum)
            else:
                if not pending.complete():
                    break
                data = pending.data
                if pending.page_sum is None:
                    pending.page_sum = chain.page_sum(memoryview(data)[FRAME_HEADER_SIZE:])
                step = chain.next(s, data, pending.page_sum)
                page = bytes(data[FRAME_HEADER_SIZE:])
            if step is None:
                break
            s, pgno, commit = step
            txn.append((pgno, page))
            if commit:
                if _is_padding_repeat(self._last_frame, txn, commit):
                    logger.debug("WAL frame %d repeats the commit frame (padding)", frame)
                else:
                    commits.append(_make_commit(chain, txn, first, frame, commit, s))
                self._last_frame = (txn[-1][0], commit, txn[-1][1])
                self._committed = frame
                self._checksum = s
                txn = []
                first = frame + 1
        return commits
