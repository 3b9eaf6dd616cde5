"""The replication stream protocol, sans-IO (DESIGN §6): frames, messages, handshake.

Bytes in, messages out. Nothing here touches a socket or trio: the adapter
(`replication.stream`) writes what `encode_message` returns and feeds what it
receives to a `FrameDecoder`, so the codec can be tested and fuzzed alone.

Frames
------
A frame is a 4-byte big-endian body length, then the body: a msgpack map
whose key "t" names the message type ("hello", "txn", "snap-begin", ...) and
whose other keys are exactly the message's fields (none missing, none extra).
A receiver refuses a frame from its length alone when it announces more than
its limit (`MAX_FRAME_SIZE` by default), and unpacks a body with msgpack
limits derived from the body's length, so a hostile frame cannot make it
allocate more than a small multiple of the frame's size (see `_unpack`). Anything invalid raises
`ProtocolError`, whose message names the bad field; the connection is then
closed (there is no recovery inside a stream) and the decoder must not be
used again.

Handshake
---------
::

    replica                                        primary
    Hello(version, cluster_id, node_id, nonce_r, url)  ---->
                 <----  Challenge(version, cluster_id, node_id, nonce_p, proof_p, term)
    Auth(proof_r, positions)                      ---->
                 <----  Welcome()   or   Refused(reason)

    proof_p = proof(secret, "primary", cluster_id, primary's node_id, nonce_p, nonce_r)
    proof_r = proof(secret, "replica", cluster_id, replica's node_id, nonce_r, nonce_p)

The secret is never sent: each side proves it knows the cluster secret with
an HMAC over both fresh nonces, so a recorded proof is useless on another
connection, and the role in the HMAC stops a proof being reflected back to
the side that made it. Both proofs use the primary's cluster id (the
Challenge's): a replica that does not know it yet sends an empty cluster id
in its Hello and adopts the primary's; one that knows it refuses another.
The replica checks proof_p before it sends its positions. Either side may
send `Refused` instead of its next message (version, cluster, failed proof)
and close the connection.

The handshake authenticates the peers, not the channel: frames after it carry
no MAC. On an untrusted network run the stream over a VPN or TLS.

Replication
-----------
After Welcome the primary sends, per database, the transactions after the
replica's position (each transaction record, `replication.txn.encode_record`,
split into `TxnChunk`s of at most `CHUNK_SIZE` bytes; `TxnAssembler` joins
them) or a snapshot (`SnapshotBegin`, `SnapshotPages`..., `SnapshotEnd`;
`SnapshotAssembler`) when its log does not reach back or the checksums
disagree; then live transactions, and a `Heartbeat` with its positions now and
then. The replica sends an `Ack` with what it has applied, and `Resync(db)`
when a transaction does not continue its copy's history. The chunks of one
transaction are consecutive, and so are the page batches of one snapshot;
other kinds of message (a heartbeat) may come between them.

A position is (txid, checksum) of one database: the last applied TXID (0:
none) and the rolling checksum after it (`replication.checksum`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, TypeAlias

import msgpack

from fs.formats import is_valid_page_size, lock_page
from replication.txn import (
    DEFAULT_MAX_RECORD_SIZE,
    MAX_NAME_LEN,
    RECORD_HEADER_SIZE,
    RecordError,
    Transaction,
    TransactionError,
    decode_record,
    packb,
    record_size,
)

__all__ = [
    "CHUNK_SIZE",
    "MAX_BATCH_PAGES",
    "MAX_FRAME_SIZE",
    "NONCE_SIZE",
    "PROOF_SIZE",
    "PROTOCOL_VERSION",
    "ROLES",
    "Ack",
    "Auth",
    "Challenge",
    "FrameDecoder",
    "FrameTooLarge",
    "Heartbeat",
    "Hello",
    "Message",
    "ProtocolError",
    "Refused",
    "Forget",
    "Resync",
    "SnapshotAssembler",
    "SnapshotBegin",
    "SnapshotEnd",
    "SnapshotPages",
    "TxnAssembler",
    "TxnChunk",
    "Welcome",
    "check_proof",
    "encode_frame",
    "encode_message",
    "new_nonce",
    "proof",
    "snapshot_messages",
    "txn_chunks",
]

PROTOCOL_VERSION = 2  # 2: log record version 2 (XXH3 checksums)
#: Default hard limit of one frame's body, in bytes.
MAX_FRAME_SIZE = 16 * 1024 * 1024
#: Bytes of transaction record per TxnChunk; also the default snapshot batch size.
CHUNK_SIZE = 1 << 20
NONCE_SIZE = 16
#: Most pages in one SnapshotPages message (a receiver refuses more).
MAX_BATCH_PAGES = 4096
#: Length of a proof (HMAC-SHA256).
PROOF_SIZE = 32
#: The roles a proof is made for.
ROLES = ("primary", "replica")

_LENGTH = struct.Struct(">I")
_HEADER_SIZE = _LENGTH.size
_MAX_TXID = (1 << 63) - 1
_MAX_U64 = (1 << 64) - 1
_MAX_U32 = (1 << 32) - 1
_PROOF_DOMAIN = b"pylitefs stream proof v1"


class ProtocolError(Exception):
    """The peer sent something invalid; str() says what, for a log line."""


class FrameTooLarge(ProtocolError):
    """A frame's length prefix announces more than the receiver's limit."""


# --- Messages ---------------------------------------------------------------
#
# Constructors do not check their arguments (they are built by this node's
# own code); decoding checks every field and raises ProtocolError.


@dataclass(frozen=True, slots=True)
class Hello:
    """Replica -> primary, the first frame: who it is, its nonce, and its HTTP URL (shown in /status)."""

    version: int
    cluster_id: str
    node_id: str
    nonce: bytes
    url: str


@dataclass(frozen=True, slots=True)
class Challenge:
    """Primary -> replica: who the primary is, its nonce, its proof and its lease term."""

    version: int
    cluster_id: str
    node_id: str
    nonce: bytes
    proof: bytes
    term: int


@dataclass(frozen=True, slots=True)
class Auth:
    """Replica -> primary: the replica's proof and its (txid, checksum) per database."""

    proof: bytes
    positions: dict[str, tuple[int, int]]


@dataclass(frozen=True, slots=True)
class Welcome:
    """Primary -> replica: the replica is accepted; replication follows."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Either way: the sender will not go on (why, for a log line); the connection closes."""

    reason: str


@dataclass(frozen=True, slots=True)
class TxnChunk:
    """Primary -> replica: a piece of one transaction record; `last` on its final piece."""

    db: str
    txid: int
    data: bytes
    last: bool


@dataclass(frozen=True, slots=True)
class SnapshotBegin:
    """Primary -> replica: a full copy of `db` as of `txid` follows.

    Commit size 0 (no pages) means the database was dropped as of `txid`. A
    page the snapshot does not carry is a page of zeros.
    """

    db: str
    txid: int
    page_size: int
    commit_size: int
    checksum: int


@dataclass(frozen=True, slots=True)
class SnapshotPages:
    """Primary -> replica: some pages of the open snapshot, in ascending page number order."""

    db: str
    pgnos: list[int]
    pages: list[bytes] | list[memoryview]  # bytes when received; views of the image when sent


@dataclass(frozen=True, slots=True)
class SnapshotEnd:
    """Primary -> replica: the snapshot of `db` is complete."""

    db: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Primary -> replica: the primary's positions, and its wall clock in nanoseconds."""

    positions: dict[str, tuple[int, int]]
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class Ack:
    """Replica -> primary: the positions it has applied (the databases that moved)."""

    positions: dict[str, tuple[int, int]]


@dataclass(frozen=True, slots=True)
class Forget:
    """Primary -> replica: this primary has no database `db`; discard the copy and its log."""

    db: str


@dataclass(frozen=True, slots=True)
class Resync:
    """Replica -> primary: send me a snapshot of `db` (its history diverged from mine)."""

    db: str


Message: TypeAlias = (
    Hello
    | Challenge
    | Auth
    | Welcome
    | Refused
    | TxnChunk
    | SnapshotBegin
    | SnapshotPages
    | SnapshotEnd
    | Heartbeat
    | Ack
    | Forget
    | Resync
)


# --- Field checks -----------------------------------------------------------


class _Invalid(Exception):
    """A field value is wrong; the message says what it must be."""


_Check = Callable[[Any], Any]


def _uint(low: int, high: int) -> _Check:
    def check(value: Any) -> int:
        if type(value) is not int or not low <= value <= high:
            raise _Invalid(f"must be an int in {low}..{high}")
        return value

    return check


def _exact_bytes(size: int) -> _Check:
    def check(value: Any) -> bytes:
        if type(value) is not bytes or len(value) != size:
            raise _Invalid(f"must be {size} bytes")
        return value

    return check


def _nonempty_bytes(value: Any) -> bytes:
    if type(value) is not bytes or not value:
        raise _Invalid("must be non-empty bytes")
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise _Invalid("must be a bool")
    return value


def _text(value: Any) -> str:
    if type(value) is not str:
        raise _Invalid("must be a string")
    return value


def _name(value: Any) -> str:
    """A cluster or node id: at most MAX_NAME_LEN bytes of UTF-8, no NUL (may be empty)."""
    if type(value) is not str or "\0" in value or len(value.encode()) > MAX_NAME_LEN:
        raise _Invalid(f"must be a string of at most {MAX_NAME_LEN} bytes without NUL")
    return value


def _is_db_name(value: Any) -> bool:
    return (
        type(value) is str
        and value not in ("", ".", "..")
        and "/" not in value
        and "\0" not in value
        and len(value.encode()) <= MAX_NAME_LEN
    )


def _db(value: Any) -> str:
    if not _is_db_name(value):
        raise _Invalid(
            f"must be a database name (1..{MAX_NAME_LEN} bytes, no '/' or NUL, not '.' or '..')"
        )
    return value


def _page_size(value: Any) -> int:
    if type(value) is not int or not is_valid_page_size(value):
        raise _Invalid("must be a power of two in 512..65536")
    return value


def _positions(value: Any) -> dict[str, tuple[int, int]]:
    if type(value) is not dict:
        raise _Invalid("must be a map of database name to [txid, checksum]")
    out: dict[str, tuple[int, int]] = {}
    for db, position in value.items():
        if not _is_db_name(db):
            raise _Invalid(f"has an invalid database name {_show(db)}")
        if (
            type(position) is not list
            or len(position) != 2
            or type(position[0]) is not int
            or type(position[1]) is not int
            or not 0 <= position[0] <= _MAX_TXID
            or not 0 <= position[1] <= _MAX_U64
        ):
            raise _Invalid(
                f"of {db!r} must be [txid 0..{_MAX_TXID}, checksum 0..{_MAX_U64}], "
                f"got {_show(position)}"
            )
        out[db] = (position[0], position[1])
    return out


def _pgnos(value: Any) -> list[int]:
    if type(value) is not list or not all(type(p) is int and 1 <= p <= _MAX_U32 for p in value):
        raise _Invalid(f"must be a list of page numbers in 1..{_MAX_U32}")
    return value


def _pages(value: Any) -> list[bytes]:
    if type(value) is not list or not all(type(p) is bytes for p in value):
        raise _Invalid("must be a list of bytes")
    return value


def _show(value: Any) -> str:
    """A short description of a received value, for an error message."""
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- Encoding and decoding --------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Spec:
    tag: str
    cls: type
    checks: tuple[tuple[str, _Check], ...]
    names: tuple[str, ...] = field(init=False)
    keys: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(name for name, _check in self.checks)
        assert names == tuple(f.name for f in fields(self.cls)), self.cls
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "keys", frozenset(("t", *names)))


_SPECS = (
    _Spec("hello", Hello, (
        ("version", _uint(0, _MAX_U32)),
        ("cluster_id", _name),
        ("node_id", _name),
        ("nonce", _exact_bytes(NONCE_SIZE)),
        ("url", _name),
    )),
    _Spec("challenge", Challenge, (
        ("version", _uint(0, _MAX_U32)),
        ("cluster_id", _name),
        ("node_id", _name),
        ("nonce", _exact_bytes(NONCE_SIZE)),
        ("proof", _exact_bytes(PROOF_SIZE)),
        ("term", _uint(0, _MAX_U64)),
    )),
    _Spec("auth", Auth, (("proof", _exact_bytes(PROOF_SIZE)), ("positions", _positions))),
    _Spec("welcome", Welcome, ()),
    _Spec("refused", Refused, (("reason", _text),)),
    _Spec("txn", TxnChunk, (
        ("db", _db),
        ("txid", _uint(1, _MAX_TXID)),
        ("data", _nonempty_bytes),
        ("last", _bool),
    )),
    _Spec("snap-begin", SnapshotBegin, (
        ("db", _db),
        ("txid", _uint(1, _MAX_TXID)),
        ("page_size", _page_size),
        ("commit_size", _uint(0, _MAX_U32)),
        ("checksum", _uint(0, _MAX_U64)),
    )),
    _Spec("snap-pages", SnapshotPages, (("db", _db), ("pgnos", _pgnos), ("pages", _pages))),
    _Spec("snap-end", SnapshotEnd, (("db", _db),)),
    _Spec("hb", Heartbeat, (("positions", _positions), ("timestamp_ns", _uint(0, _MAX_U64)))),
    _Spec("ack", Ack, (("positions", _positions),)),
    _Spec("forget", Forget, (("db", _db),)),
    _Spec("resync", Resync, (("db", _db),)),
)
_BY_TAG: dict[str, _Spec] = {spec.tag: spec for spec in _SPECS}
_BY_CLASS: dict[type, _Spec] = {spec.cls: spec for spec in _SPECS}

def encode_message(msg: Message, *, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """One frame: 4-byte big-endian body length, then the msgpack body (a map with a "t" type key).

    Raises TypeError for an object that is not a message, and ValueError for
    a body over `max_frame_size` (a frame the peer would refuse). The fields
    are not checked: the receiver does that.
    """
    prefix, body = encode_frame(msg, max_frame_size=max_frame_size)
    return prefix + body


def encode_frame(msg: Message, *, max_frame_size: int = MAX_FRAME_SIZE) -> tuple[bytes, bytes]:
    """`encode_message(msg)` in two parts, (length prefix, body): a writer may send them unjoined."""
    spec = _BY_CLASS.get(type(msg))
    if spec is None:
        raise TypeError(f"not a stream message: {msg!r:.80}")
    body: dict[str, Any] = {"t": spec.tag}
    for name in spec.names:
        body[name] = getattr(msg, name)
    packed = packb(body)
    if len(packed) > max_frame_size:
        raise ValueError(
            f"{spec.tag!r} message of {len(packed)} bytes exceeds the frame limit of {max_frame_size}"
        )
    return _LENGTH.pack(len(packed)), packed


def _unpack(body: memoryview) -> Any:
    """The msgpack object in `body`, unpacked with limits derived from its size."""
    size = len(body)
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=size,
            max_bin_len=size,
            # msgpack preallocates the list an array header announces, nested
            # up to ~1024 deep before it gives up: bound each by what a valid
            # message can hold (page lists of pages >= 512 bytes, at most
            # MAX_BATCH_PAGES; [txid, checksum] pairs; +16 so that a short
            # wrong array reaches the field checks and their clearer errors).
            # A hostile frame then costs at most 1024 * MAX_BATCH_PAGES * 8
            # bytes (32 MiB) of transient lists, a small one ~16 times its size.
            max_array_len=min(size // 512 + 16, MAX_BATCH_PAGES),
            # A map entry takes >= 2 bytes.
            max_map_len=size // 2,
            max_ext_len=0,
        )
    except Exception as exc:  # ValueError subclasses, TypeError, StackError, UnicodeDecodeError...
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ProtocolError(f"frame body is not valid msgpack: {detail}") from None


def _decode(obj: Any) -> Message:
    """The message in an unpacked frame body, with every field checked."""
    if type(obj) is not dict:
        raise ProtocolError(f"frame body is a {type(obj).__name__}, not a map")
    tag = obj.get("t")
    spec = _BY_TAG.get(tag) if type(tag) is str else None
    if spec is None:
        raise ProtocolError(f"unknown message type {_show(tag)}")
    if obj.keys() != spec.keys:
        missing = ", ".join(sorted(map(repr, spec.keys - obj.keys())))
        extra = ", ".join(sorted(_show(k) for k in obj.keys() - spec.keys))
        problems = [f"missing fields {missing}"] if missing else []
        problems += [f"unknown fields {extra}"] if extra else []
        raise ProtocolError(f"{tag!r} message: {'; '.join(problems)}")
    values = []
    for name, check in spec.checks:
        value = obj[name]
        try:
            values.append(check(value))
        except _Invalid as exc:
            raise ProtocolError(f"{tag!r} message: field {name!r} {exc}, got {_show(value)}") from None
    if spec.cls is SnapshotPages and len(values[1]) != len(values[2]):
        raise ProtocolError(
            f"'snap-pages' message: {len(values[1])} page numbers but {len(values[2])} pages"
        )
    return spec.cls(*values)  # type: ignore[no-any-return]


class FrameDecoder:
    """Turns received bytes into messages: `feed` what arrives, then `next_message` until None.

    At most one frame is held beyond what the caller feeds between two calls
    of `next_message`: a frame's length is checked against `max_frame_size`
    as soon as its 4-byte prefix is in. After a ProtocolError the decoder is
    unusable (the stream has lost its framing or its trust).
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        if not 0 < max_frame_size <= _MAX_U32:
            raise ValueError(f"max_frame_size must be in 1..{_MAX_U32}, got {max_frame_size}")
        self.max_frame_size = max_frame_size
        # Bytes from `_start` on in `_buffer`, then the pieces fed since, joined
        # (one copy) only when a frame needs them: a buffer grown piece by
        # piece would be copied again at each growth, a large frame many times.
        self._buffer = b""
        self._start = 0
        self._pieces: list[bytes] = []
        self._pieces_size = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as messages."""
        return len(self._buffer) - self._start + self._pieces_size

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (never raises for their content: `next_message` does)."""
        if not data:
            return
        data = data if type(data) is bytes else bytes(data)
        if self._start == len(self._buffer) and not self._pieces:
            self._buffer, self._start = data, 0
        else:
            self._pieces.append(data)
            self._pieces_size += len(data)

    def _have(self, size: int) -> bool:
        """True when `size` bytes from `_start` are in `_buffer` (joining the fed pieces if needed)."""
        held = len(self._buffer) - self._start
        if held >= size:
            return True
        if held + self._pieces_size < size:
            return False
        rest = memoryview(self._buffer)[self._start:]
        self._buffer = b"".join([rest, *self._pieces])
        rest.release()
        self._start = 0
        self._pieces = []
        self._pieces_size = 0
        return True

    def next_message(self) -> Message | None:
        """The next complete message, or None when more bytes are needed.

        Raises FrameTooLarge as soon as a length prefix exceeds the limit, and
        ProtocolError for an empty frame or a body that is not a valid message.
        """
        if not self._have(_HEADER_SIZE):
            return None
        (size,) = _LENGTH.unpack_from(self._buffer, self._start)
        if size > self.max_frame_size:
            raise FrameTooLarge(
                f"frame of {size} bytes announced, more than the limit of {self.max_frame_size}"
            )
        if size == 0:
            raise ProtocolError("empty frame (length 0)")
        if not self._have(_HEADER_SIZE + size):
            return None
        start = self._start + _HEADER_SIZE
        end = start + size
        with memoryview(self._buffer) as view, view[start:end] as body:
            obj = _unpack(body)
        if end == len(self._buffer):
            self._buffer, self._start = b"", 0
        else:
            self._start = end
        return _decode(obj)

    def close(self) -> None:
        """The peer closed the connection: raises ProtocolError if it stopped inside a frame."""
        have = self.buffered
        if have:
            self._have(min(have, _HEADER_SIZE))
            if have >= _HEADER_SIZE:
                (size,) = _LENGTH.unpack_from(self._buffer, self._start)
                detail = f"{have - _HEADER_SIZE} of {size} body bytes received"
            else:
                detail = f"{have} of {_HEADER_SIZE} length bytes received"
            raise ProtocolError(f"connection closed in the middle of a frame ({detail})")


# --- Transactions -------------------------------------------------------------


def txn_chunks(db: str, txid: int, record: bytes, chunk_size: int = CHUNK_SIZE) -> Iterator[TxnChunk]:
    """The TxnChunks of one transaction record, in order; only the final one has `last`.

    A record gives at least one chunk; a record of at most `chunk_size` bytes
    gives exactly one, whose data is `record` itself (no copy).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if not record:
        raise ValueError("empty transaction record")
    size = len(record)
    for start in range(0, size, chunk_size):
        end = start + chunk_size
        yield TxnChunk(db, txid, record[start:end], end >= size)


class TxnAssembler:
    """Reassembles TxnChunk messages into Transactions: `feed(chunk)` -> Transaction | None.

    Checks that the chunks of one transaction are consecutive (same db and
    txid until `last`), that the record's header is valid and its total size
    within `max_record_size` (the body limit of `replication.txn`) before
    buffering more, then decodes it (CRCs, fields) and checks that the
    transaction's db and txid are the chunks'. Anything wrong raises
    ProtocolError and drops the partial record.
    """

    def __init__(self, max_record_size: int = DEFAULT_MAX_RECORD_SIZE) -> None:
        self.max_record_size = max_record_size
        self._key: tuple[str, int] | None = None
        self._parts = bytearray()
        self._expected: int | None = None  # record size, once its header is in

    @property
    def pending(self) -> tuple[str, int] | None:
        """(db, txid) of the transaction whose chunks are being collected, or None."""
        return self._key

    def feed(self, chunk: TxnChunk) -> Transaction | None:
        """Add `chunk`; return the transaction when it was the last one, else None."""
        try:
            return self._feed(chunk)
        except ProtocolError:
            self._reset()
            raise

    def _reset(self) -> None:
        self._key = None
        self._parts = bytearray()
        self._expected = None

    def _feed(self, chunk: TxnChunk) -> Transaction | None:
        key = (chunk.db, chunk.txid)
        if self._key is None:
            if chunk.last:  # the usual case: a whole record in one chunk, no copy
                return self._decode(key, chunk.data)
            self._key = key
        elif key != self._key:
            raise ProtocolError(
                f"chunk of {chunk.db} TXID {chunk.txid} while {self._key[0]} TXID {self._key[1]} "
                "is incomplete"
            )
        parts = self._parts
        total = len(parts) + len(chunk.data)
        if self._expected is None and total > RECORD_HEADER_SIZE + self.max_record_size:
            raise ProtocolError(
                f"transaction {chunk.db} TXID {chunk.txid}: chunks exceed the record limit of "
                f"{RECORD_HEADER_SIZE + self.max_record_size} bytes"
            )
        if self._expected is not None and total > self._expected:
            raise ProtocolError(
                f"transaction {chunk.db} TXID {chunk.txid}: chunks exceed the record's "
                f"{self._expected} bytes"
            )
        parts += chunk.data
        if self._expected is None and total >= RECORD_HEADER_SIZE:
            try:
                self._expected = record_size(parts, max_record_size=self.max_record_size)
            except RecordError as exc:
                raise ProtocolError(f"transaction {chunk.db} TXID {chunk.txid}: {exc}") from None
            if total > self._expected:
                raise ProtocolError(
                    f"transaction {chunk.db} TXID {chunk.txid}: chunks exceed the record's "
                    f"{self._expected} bytes"
                )
        if not chunk.last:
            return None
        record = bytes(parts)
        self._reset()
        return self._decode(key, record)

    def _decode(self, key: tuple[str, int], record: bytes) -> Transaction:
        db, txid = key
        try:
            txn, end = decode_record(record, max_record_size=self.max_record_size)
        except RecordError as exc:
            raise ProtocolError(f"transaction {db} TXID {txid}: {exc}") from None
        if end != len(record):
            raise ProtocolError(
                f"transaction {db} TXID {txid}: {len(record) - end} bytes after the record"
            )
        if (txn.db, txn.txid) != key:
            raise ProtocolError(
                f"chunks of {db} TXID {txid} hold a record of {txn.db} TXID {txn.txid}"
            )
        return txn


# --- Snapshots ----------------------------------------------------------------


def snapshot_messages(
    db: str,
    txid: int,
    page_size: int,
    commit_size: int,
    checksum: int,
    pages: Iterable[tuple[int, bytes]] | Iterable[tuple[int, memoryview]],
    batch_bytes: int = CHUNK_SIZE,
) -> Iterator[Message]:
    """SnapshotBegin, SnapshotPages..., SnapshotEnd for a copy of `db` as of `txid`.

    `pages` yields (pgno, content) in ascending order, lazily consumed; the
    lock page, if given, is skipped (a Transaction cannot hold it), and pages
    not given are pages of zeros. Each SnapshotPages holds as many pages as
    fit in `batch_bytes` (at least one, at most MAX_BATCH_PAGES). Raises ValueError for pages out of
    order, outside 1..`commit_size`, or not `page_size` bytes long.
    """
    if not is_valid_page_size(page_size):
        raise ValueError(f"invalid page size {page_size}")
    lock = lock_page(page_size)
    yield SnapshotBegin(db, txid, page_size, commit_size, checksum)
    pgnos: list[int] = []
    batch: list[bytes] = []
    size = 0
    previous = 0
    for pgno, page in pages:
        if not previous < pgno <= commit_size:
            raise ValueError(f"snapshot of {db}: page {pgno} after page {previous} "
                             f"(commit size {commit_size})")
        if len(page) != page_size:
            raise ValueError(f"snapshot of {db}: page {pgno} is {len(page)} bytes, not {page_size}")
        previous = pgno
        if pgno == lock:
            continue
        if batch and (size + page_size > batch_bytes or len(batch) == MAX_BATCH_PAGES):
            yield SnapshotPages(db, pgnos, batch)
            pgnos, batch, size = [], [], 0
        pgnos.append(pgno)
        batch.append(page)
        size += page_size
    if batch:
        yield SnapshotPages(db, pgnos, batch)
    yield SnapshotEnd(db)


class SnapshotAssembler:
    """Collects the SnapshotBegin/Pages/End of one database into a Transaction.

    `feed(msg)` returns the snapshot as a Transaction at SnapshotEnd: every
    page received, `pre_checksum` 0, `post_checksum` the announced checksum
    (NOT verified here: the caller computes it from the pages), and the
    `node_id`/`timestamp_ns` given to the constructor.

    Checks: one snapshot open at a time; pages belong to it, in strictly
    increasing page number order, within 1..commit_size and not the lock
    page, each exactly page_size bytes (so the total is bounded by
    commit_size * page_size). Anything wrong raises ProtocolError and
    drops the partial snapshot.
    """

    def __init__(self, node_id: str = "", timestamp_ns: int = 0) -> None:
        self.node_id = node_id
        self.timestamp_ns = timestamp_ns
        self._begin: SnapshotBegin | None = None
        self._pages: dict[int, bytes] = {}
        self._last_pgno = 0
        self._lock_page = 0

    @property
    def pending(self) -> str | None:
        """The database whose snapshot is being collected, or None."""
        return None if self._begin is None else self._begin.db

    def feed(self, msg: SnapshotBegin | SnapshotPages | SnapshotEnd) -> Transaction | None:
        """Add one snapshot message; return the Transaction at its SnapshotEnd, else None."""
        try:
            if isinstance(msg, SnapshotBegin):
                self._start(msg)
                return None
            if isinstance(msg, SnapshotPages):
                self._add(msg)
                return None
            if isinstance(msg, SnapshotEnd):
                return self._finish(msg)
        except ProtocolError:
            self._reset()
            raise
        raise TypeError(f"not a snapshot message: {msg!r:.80}")

    def _reset(self) -> None:
        self._begin = None
        self._pages = {}
        self._last_pgno = 0

    def _open(self, msg: SnapshotPages | SnapshotEnd) -> SnapshotBegin:
        kind = "snapshot pages" if isinstance(msg, SnapshotPages) else "snapshot end"
        if self._begin is None:
            raise ProtocolError(f"{kind} of {msg.db} without a snapshot begin")
        if msg.db != self._begin.db:
            raise ProtocolError(f"{kind} of {msg.db} inside the snapshot of {self._begin.db}")
        return self._begin

    def _start(self, msg: SnapshotBegin) -> None:
        if self._begin is not None:
            raise ProtocolError(
                f"snapshot of {msg.db} begins inside the snapshot of {self._begin.db}"
            )
        if not is_valid_page_size(msg.page_size):
            raise ProtocolError(f"snapshot of {msg.db}: invalid page size {msg.page_size}")
        self._begin = msg
        self._lock_page = lock_page(msg.page_size)

    def _add(self, msg: SnapshotPages) -> None:
        begin = self._open(msg)
        if len(msg.pgnos) != len(msg.pages):
            raise ProtocolError(
                f"snapshot of {msg.db}: {len(msg.pgnos)} page numbers but {len(msg.pages)} pages"
            )
        pages = self._pages
        last = self._last_pgno
        for pgno, page in zip(msg.pgnos, msg.pages):
            if not last < pgno <= begin.commit_size or pgno == self._lock_page:
                raise ProtocolError(
                    f"snapshot of {msg.db}: page {pgno} after page {last} "
                    f"(commit size {begin.commit_size}, lock page {self._lock_page})"
                )
            if len(page) != begin.page_size:
                raise ProtocolError(
                    f"snapshot of {msg.db}: page {pgno} is {len(page)} bytes, "
                    f"page size is {begin.page_size}"
                )
            pages[pgno] = page
            last = pgno
        self._last_pgno = last

    def _finish(self, msg: SnapshotEnd) -> Transaction:
        begin = self._open(msg)
        pages = self._pages
        self._reset()
        try:
            return Transaction(
                db=begin.db,
                txid=begin.txid,
                page_size=begin.page_size,
                commit_size=begin.commit_size,
                pages=pages,
                timestamp_ns=self.timestamp_ns,
                node_id=self.node_id,
                pre_checksum=0,
                post_checksum=begin.checksum,
            )
        except TransactionError as exc:
            raise ProtocolError(f"snapshot of {begin.db}: {exc}") from None


# --- Authentication -------------------------------------------------------------


def new_nonce() -> bytes:
    """A fresh random nonce of NONCE_SIZE bytes."""
    return os.urandom(NONCE_SIZE)


def proof(
    secret: bytes, role: str, cluster_id: str, node_id: str, my_nonce: bytes, their_nonce: bytes
) -> bytes:
    """The PROOF_SIZE-byte HMAC-SHA256 by which `role` shows it knows `secret`.

    Covers the role ("primary" or "replica"), the cluster id, the prover's
    node id, its nonce and the peer's, in an unambiguous (msgpack) encoding:
    changing any of them changes the proof. Raises ValueError for another role.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    message = msgpack.packb(
        [_PROOF_DOMAIN, role, cluster_id, node_id, bytes(my_nonce), bytes(their_nonce)],
        use_bin_type=True,
    )
    return hmac.digest(secret, message, hashlib.sha256)


def check_proof(expected: bytes, got: bytes) -> bool:
    """True when `got` equals `expected`, compared in constant time."""
    return hmac.compare_digest(expected, got)
