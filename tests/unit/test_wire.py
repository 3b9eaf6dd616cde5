"""The sans-IO stream protocol: frames, messages, hostile input, chunking, snapshots, proofs."""

from __future__ import annotations

import dataclasses
import random
import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fs.formats import lock_page
from replication.txn import RECORD_HEADER_SIZE, Transaction, encode_record
from replication.wire import (
    CHUNK_SIZE,
    MAX_BATCH_PAGES,
    MAX_FRAME_SIZE,
    NONCE_SIZE,
    PROOF_SIZE,
    Ack,
    Auth,
    Challenge,
    FrameDecoder,
    FrameTooLarge,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    Refused,
    Forget,
    Resync,
    SnapshotAssembler,
    SnapshotBegin,
    SnapshotEnd,
    SnapshotPages,
    TxnAssembler,
    TxnChunk,
    Welcome,
    check_proof,
    encode_message,
    new_nonce,
    proof,
    snapshot_messages,
    txn_chunks,
)

NONCE = bytes(range(NONCE_SIZE))
PROOF = bytes(range(PROOF_SIZE))

SAMPLES: list[Message] = [
    Hello(1, "cluster-1", "node-b", NONCE, "http://10.0.0.2:20202"),
    Hello(1, "", "n", NONCE, ""),  # a replica that does not know the cluster id yet
    Challenge(1, "cluster-1", "node-a", NONCE, PROOF, 2**64 - 1),
    Auth(PROOF, {"app.db": (7, 2**64 - 1), "é.db": (0, 0)}),
    Auth(PROOF, {}),
    Welcome(),
    Refused("wrong cluster secret"),
    TxnChunk("app.db", 2**63 - 1, b"\x00" * 4096, True),
    TxnChunk("app.db", 1, b"x", False),
    SnapshotBegin("app.db", 12, 4096, 2**32 - 1, 2**64 - 1),
    SnapshotBegin("gone.db", 3, 512, 0, 0),
    SnapshotPages("app.db", [1, 2, 9], [b"a" * 512, b"b" * 512, b"c" * 512]),
    SnapshotPages("app.db", [], []),
    SnapshotEnd("app.db"),
    Heartbeat({"app.db": (3, 4), "b.db": (1, 0)}, 1_700_000_000_000_000_000),
    Ack({"app.db": (3, 4)}),
    Resync("app.db"),
    Forget("gone.db"),
]


def decode_all(data: bytes, pieces: list[int] | None = None) -> list[Message]:
    """Every message in `data`, fed in pieces of the given sizes (the rest at once)."""
    decoder = FrameDecoder()
    out: list[Message] = []
    offset = 0
    for size in (pieces or []) + [len(data)]:
        decoder.feed(data[offset : offset + size])
        offset += size
        while (msg := decoder.next_message()) is not None:
            out.append(msg)
    decoder.close()
    assert decoder.buffered == 0
    return out


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def body_of(msg: Message) -> dict[str, Any]:
    data = encode_message(msg)
    return msgpack.unpackb(data[4:], raw=False)  # type: ignore[no-any-return]


def decode_body(body: dict[Any, Any] | Any) -> Message | None:
    decoder = FrameDecoder()
    decoder.feed(frame(msgpack.packb(body, use_bin_type=True)))
    return decoder.next_message()


# --- Frames and messages ------------------------------------------------------


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    data = encode_message(msg)
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert decode_all(data) == [msg]


def test_wire_format_is_a_typed_map() -> None:
    assert body_of(TxnChunk("a.db", 3, b"xy", True)) == {
        "t": "txn", "db": "a.db", "txid": 3, "data": b"xy", "last": True,
    }
    assert body_of(Welcome()) == {"t": "welcome"}
    tags = {body_of(m)["t"] for m in SAMPLES}
    assert tags == {"hello", "challenge", "auth", "welcome", "refused", "txn", "snap-begin",
                    "snap-pages", "snap-end", "hb", "ack", "resync", "forget"}


def test_positions_decode_to_tuples() -> None:
    [msg] = decode_all(encode_message(Ack({"a.db": (1, 2)})))
    assert isinstance(msg, Ack) and msg.positions == {"a.db": (1, 2)}
    assert type(msg.positions["a.db"]) is tuple


def test_byte_by_byte_and_random_splits() -> None:
    data = b"".join(encode_message(m) for m in SAMPLES)
    assert decode_all(data, [1] * len(data)) == SAMPLES
    rng = random.Random(1234)
    for _ in range(50):
        pieces = [rng.randint(0, 600) for _ in range(rng.randint(0, 40))]
        assert decode_all(data, pieces) == SAMPLES


def test_feed_accepts_any_buffer() -> None:
    data = encode_message(Resync("a.db"))
    decoder = FrameDecoder()
    decoder.feed(memoryview(data)[:3])
    decoder.feed(bytearray(data[3:10]))
    assert decoder.next_message() is None and decoder.buffered == 10
    decoder.feed(data[10:])
    assert decoder.next_message() == Resync("a.db")
    assert decoder.next_message() is None and decoder.buffered == 0


def test_frames_larger_than_msgpack_defaults() -> None:
    data = bytes(range(256)) * (4 * 4096)  # 4 MiB in one bin
    msg = TxnChunk("a.db", 1, data, True)
    encoded = encode_message(msg)
    pieces = [65536] * (len(encoded) // 65536)
    assert decode_all(encoded, pieces) == [msg]


def test_frame_too_large_from_the_length_alone() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", MAX_FRAME_SIZE + 1))
    with pytest.raises(FrameTooLarge, match="limit"):
        decoder.next_message()
    small = FrameDecoder(max_frame_size=100)
    small.feed(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLarge):
        small.next_message()
    assert issubclass(FrameTooLarge, ProtocolError)


def test_frame_at_the_limit_is_accepted() -> None:
    data = encode_message(Refused("x" * 50))
    exact = FrameDecoder(max_frame_size=len(data) - 4)
    exact.feed(data)
    assert exact.next_message() == Refused("x" * 50)
    below = FrameDecoder(max_frame_size=len(data) - 5)
    below.feed(data[:4])
    with pytest.raises(FrameTooLarge):
        below.next_message()


def test_encode_refuses_what_the_peer_would_refuse() -> None:
    with pytest.raises(ValueError, match="frame limit"):
        encode_message(Refused("x" * 100), max_frame_size=50)
    with pytest.raises(TypeError):
        encode_message("hello")  # type: ignore[arg-type]


@pytest.mark.parametrize("cut", [1, 3, 4, 10])
def test_close_inside_a_frame(cut: int) -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_message(Resync("a.db"))[:cut])
    assert decoder.next_message() is None
    with pytest.raises(ProtocolError, match="connection closed in the middle of a frame"):
        decoder.close()


def test_close_between_frames() -> None:
    decoder = FrameDecoder()
    decoder.close()
    decoder.feed(encode_message(Welcome()))
    assert decoder.next_message() == Welcome()
    decoder.close()


# --- Invalid input ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x00\x00\x00\x00", "empty frame"),
        (frame(b"\xc1"), "not valid msgpack"),  # 0xc1 is never used
        (frame(b"\x82\xa1t"), "not valid msgpack"),  # map cut short
        (frame(msgpack.packb({"t": "welcome"}) + b"\x00"), "not valid msgpack"),  # trailing
        (frame(msgpack.packb([1, 2])), "not a map"),
        (frame(msgpack.packb({"t": "nope"})), "unknown message type"),
        (frame(msgpack.packb({"x": 1})), "unknown message type"),
        (frame(msgpack.packb({"t": 5})), "unknown message type"),
        (frame(msgpack.packb({1: 2})), "not valid msgpack"),  # int keys
        (frame(b"\x81\xa1t\xa2\xff\xfe"), "not valid msgpack"),  # bad UTF-8
        (frame(msgpack.packb({"t": msgpack.ExtType(1, b"abc")})), "not valid msgpack"),
        (frame(b"\x91" * 2000 + b"\xc0"), "not valid msgpack"),  # nested too deep
    ],
)
def test_garbage(data: bytes, match: str) -> None:
    decoder = FrameDecoder()
    decoder.feed(data)
    with pytest.raises(ProtocolError, match=match):
        decoder.next_message()


def mutated(msg: Message, **changes: Any) -> dict[str, Any]:
    body = body_of(msg)
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"t": "hello", "version": 1, "cluster_id": "c", "node_id": "n", "url": ""}, "'hello' message: missing fields 'nonce'$"),
        (mutated(Welcome(), extra=1), "'welcome' message: unknown fields 'extra'$"),
        (mutated(SAMPLES[0], version=True), "'version' must be an int"),
        (mutated(SAMPLES[0], version=-1), "'version'"),
        (mutated(SAMPLES[0], version=1.0), "'version'"),
        (mutated(SAMPLES[0], nonce=b"x" * 15), "'nonce' must be 16 bytes"),
        (mutated(SAMPLES[0], nonce="x" * 16), "'nonce'"),
        (mutated(SAMPLES[0], node_id=b"n"), "'node_id'"),
        (mutated(SAMPLES[0], node_id="a\0b"), "'node_id'"),
        (mutated(SAMPLES[0], cluster_id="c" * 1025), "'cluster_id'"),
        (mutated(SAMPLES[2], proof=b"x" * 31), "'proof' must be 32 bytes"),
        (mutated(SAMPLES[2], term=None), "'term'"),
        (mutated(SAMPLES[3], positions=[]), "'positions' must be a map"),
        (mutated(SAMPLES[3], positions={"a.db": [1]}), "'positions'"),
        (mutated(SAMPLES[3], positions={"a.db": [1, 2, 3]}), "'positions'"),
        (mutated(SAMPLES[3], positions={"a.db": [True, 2]}), "'positions'"),
        (mutated(SAMPLES[3], positions={"a.db": [-1, 2]}), "'positions'"),
        (mutated(SAMPLES[3], positions={"a.db": [2**63, 2]}), "'positions'"),
        (mutated(SAMPLES[3], positions={"a.db": [1, -2]}), "'positions'"),
        (mutated(SAMPLES[3], positions={"a.db": (1, 2.0)}), "'positions'"),
        (mutated(SAMPLES[3], positions={"": [1, 2]}), "'positions' has an invalid database"),
        (mutated(SAMPLES[3], positions={b"a.db": [1, 2]}), "'positions' has an invalid database"),
        (mutated(SAMPLES[3], positions={"../x": [1, 2]}), "'positions' has an invalid database"),
        (mutated(SAMPLES[6], reason=b"x"), "'reason' must be a string"),
        (mutated(SAMPLES[7], txid=0), "'txid' must be an int in 1.."),
        (mutated(SAMPLES[7], txid=2**63), "'txid'"),
        (mutated(SAMPLES[7], last=1), "'last' must be a bool"),
        (mutated(SAMPLES[7], data=b""), "'data' must be non-empty bytes"),
        (mutated(SAMPLES[7], data=[1]), "'data'"),
        (mutated(SAMPLES[7], db=""), "'db' must be a database name"),
        (mutated(SAMPLES[7], db="a/b"), "'db'"),
        (mutated(SAMPLES[7], db=".."), "'db'"),
        (mutated(SAMPLES[7], db="a\0"), "'db'"),
        (mutated(SAMPLES[7], db="d" * 1025), "'db'"),
        (mutated(SAMPLES[9], page_size=1000), "'page_size' must be a power of two"),
        (mutated(SAMPLES[9], page_size=256), "'page_size'"),
        (mutated(SAMPLES[9], commit_size=2**32), "'commit_size'"),
        (mutated(SAMPLES[9], checksum=-1), "'checksum'"),
        (mutated(SAMPLES[11], pgnos=[1, 2]), "3 pages"),
        (mutated(SAMPLES[11], pgnos=[1, 0, 2]), "'pgnos'"),
        (mutated(SAMPLES[11], pgnos=[1, False, 2]), "'pgnos'"),
        (mutated(SAMPLES[11], pages=[b"a", "b", b"c"]), "'pages'"),
        (mutated(SAMPLES[14], timestamp_ns=-5), "'timestamp_ns'"),
        (mutated(SAMPLES[16], db=7), "'db'"),
    ],
)
def test_invalid_fields(body: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_body(body)


def test_field_errors_name_the_message_type() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_body(mutated(SAMPLES[7], txid=-3))
    assert str(info.value) == "'txn' message: field 'txid' must be an int in 1..9223372036854775807, got -3"


def test_hostile_arrays_cannot_allocate_much() -> None:
    """Nested array headers each announcing the most a frame may hold: lists are preallocated."""
    size = MAX_FRAME_SIZE
    header = b"\xdd" + struct.pack(">I", MAX_BATCH_PAGES)
    body = b"\x81\xa1t" + header * 1100
    body += b"\x00" * (size - len(body))
    decoder = FrameDecoder()
    decoder.feed(frame(body))
    del body
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            decoder.next_message()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """Valid frames with bytes flipped, inserted, deleted, or the length prefix fixed up."""
    data = bytearray(b"".join(encode_message(m) for m in draw(st.lists(st.sampled_from(SAMPLES), max_size=3))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
    if draw(st.booleans()) and len(data) >= 4:  # keep the framing consistent: reach the body checks
        data[:4] = struct.pack(">I", len(data) - 4)
    return bytes(data)


def run_hostile(data: bytes, pieces: list[int]) -> None:
    decoder = FrameDecoder(max_frame_size=1 << 16)
    offset = 0
    try:
        for size in pieces + [len(data)]:
            decoder.feed(data[offset : offset + size])
            offset += size
            while (msg := decoder.next_message()) is not None:
                assert isinstance(msg, Message)
        decoder.close()
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.lists(st.integers(0, 50), max_size=5))
def test_random_bytes_only_raise_protocol_error(data: bytes, pieces: list[int]) -> None:
    run_hostile(data, pieces)
    run_hostile(frame(data), pieces)  # a well-framed random body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames(), st.lists(st.integers(0, 50), max_size=5))
def test_mutated_frames_only_raise_protocol_error(data: bytes, pieces: list[int]) -> None:
    run_hostile(data, pieces)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5)
    | st.binary(max_size=20) | st.floats(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_random_field_values_only_raise_protocol_error(msg: Message, data: st.DataObject) -> None:
    body = body_of(msg)
    key = data.draw(st.sampled_from(sorted(body)))
    body[key] = data.draw(json_like)
    try:
        decoded = decode_body(body)
    except ProtocolError:
        return
    assert type(decoded) is type(msg) or key == "t"


# --- Transactions ---------------------------------------------------------------


def make_txn(npages: int = 3, page_size: int = 4096, txid: int = 9, db: str = "app.db") -> Transaction:
    rng = random.Random(npages)
    return Transaction(
        db=db, txid=txid, page_size=page_size, commit_size=npages + 1,
        pages={p: rng.randbytes(page_size) for p in range(1, npages + 1)},
        timestamp_ns=1_700_000_000_000_000_000, node_id="node-a", pre_checksum=5, post_checksum=6,
    )


def through_the_wire(msgs: list[Message]) -> list[Message]:
    return decode_all(b"".join(encode_message(m) for m in msgs), [1000] * 50)


def test_chunks_round_trip_a_large_record() -> None:
    txn = make_txn(npages=80, page_size=65536)  # ~5 MiB: several 1 MiB chunks
    record = encode_record(txn)
    chunks = list(txn_chunks(txn.db, txn.txid, record))
    assert len(chunks) == -(-len(record) // CHUNK_SIZE) >= 5
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert b"".join(c.data for c in chunks) == record
    assembler = TxnAssembler()
    received = through_the_wire(list(chunks))
    results = [assembler.feed(c) for c in received]  # type: ignore[arg-type]
    assert results[:-1] == [None] * (len(chunks) - 1)
    assert results[-1] == txn
    assert assembler.pending is None


def test_one_chunk_is_the_record_itself() -> None:
    txn = make_txn()
    record = encode_record(txn, compress=True)
    [chunk] = txn_chunks(txn.db, txn.txid, record)
    assert chunk.data is record and chunk.last
    assert TxnAssembler().feed(chunk) == txn


def test_small_chunks_and_consecutive_transactions() -> None:
    assembler = TxnAssembler()
    for txid in (1, 2, 3):
        txn = make_txn(txid=txid)
        record = encode_record(txn)
        out = [assembler.feed(c) for c in txn_chunks(txn.db, txid, record, chunk_size=7)]
        assert out[-1] == txn and all(o is None for o in out[:-1])
    with pytest.raises(ValueError):
        list(txn_chunks("a.db", 1, b""))
    with pytest.raises(ValueError):
        list(txn_chunks("a.db", 1, b"x", chunk_size=0))


def test_interleaved_chunks_are_refused() -> None:
    a, b = make_txn(txid=1), make_txn(txid=1, db="b.db")
    chunks_a = list(txn_chunks(a.db, 1, encode_record(a), chunk_size=1000))
    chunks_b = list(txn_chunks(b.db, 1, encode_record(b), chunk_size=1000))
    assembler = TxnAssembler()
    assert assembler.feed(chunks_a[0]) is None
    assert assembler.pending == ("app.db", 1)
    with pytest.raises(ProtocolError, match="b.db TXID 1 while app.db TXID 1 is incomplete"):
        assembler.feed(chunks_b[0])
    assert assembler.pending is None
    assembler.feed(chunks_a[0])
    with pytest.raises(ProtocolError, match="incomplete"):
        assembler.feed(dataclasses.replace(chunks_a[1], txid=2))


def test_oversize_record_is_refused_before_buffering() -> None:
    txn = make_txn(npages=10)
    record = encode_record(txn)
    assembler = TxnAssembler(max_record_size=20_000)
    chunks = list(txn_chunks(txn.db, txn.txid, record, chunk_size=10))
    with pytest.raises(ProtocolError, match="exceeds the limit"):  # from the record header
        for chunk in chunks:
            assembler.feed(chunk)
    # Without a header to go by (the first chunk is shorter than it): the total.
    assembler = TxnAssembler(max_record_size=100)
    with pytest.raises(ProtocolError, match="chunks exceed the record limit of 120 bytes"):
        assembler.feed(TxnChunk("a.db", 1, b"x" * 10, False))
        assembler.feed(TxnChunk("a.db", 1, b"x" * 200, False))
    with pytest.raises(ProtocolError, match="exceeds the limit"):  # one chunk
        TxnAssembler(max_record_size=100).feed(txn_chunks(txn.db, txn.txid, record).__next__())


def test_chunks_beyond_the_record_are_refused() -> None:
    txn = make_txn()
    record = encode_record(txn)
    chunks = list(txn_chunks(txn.db, txn.txid, record, chunk_size=1000))
    assembler = TxnAssembler()
    for chunk in chunks[:-1]:
        assembler.feed(chunk)
    with pytest.raises(ProtocolError, match="chunks exceed the record's"):
        assembler.feed(dataclasses.replace(chunks[-1], data=chunks[-1].data + b"x" * 2000, last=False))
    with pytest.raises(ProtocolError, match="bytes after the record"):
        TxnAssembler().feed(TxnChunk(txn.db, txn.txid, record + b"\x00", True))
    with pytest.raises(ProtocolError, match="needs"):
        TxnAssembler().feed(TxnChunk(txn.db, txn.txid, record[:-1], True))


def test_corrupted_chunk_is_refused() -> None:
    txn = make_txn()
    record = bytearray(encode_record(txn))
    record[len(record) // 2] ^= 0x01
    assembler = TxnAssembler()
    chunks = list(txn_chunks(txn.db, txn.txid, bytes(record), chunk_size=4000))
    with pytest.raises(ProtocolError, match="checksum mismatch"):
        for chunk in chunks:
            assembler.feed(chunk)
    record = bytearray(encode_record(txn))
    record[0] = ord("X")
    with pytest.raises(ProtocolError, match="magic"):
        TxnAssembler().feed(TxnChunk(txn.db, txn.txid, bytes(record[:RECORD_HEADER_SIZE]), False))


@pytest.mark.parametrize(("db", "txid"), [("other.db", 9), ("app.db", 10)])
def test_record_must_match_its_chunks(db: str, txid: int) -> None:
    record = encode_record(make_txn(txid=9))
    with pytest.raises(ProtocolError, match="hold a record of app.db TXID 9"):
        TxnAssembler().feed(TxnChunk(db, txid, record, True))


# --- Snapshots ------------------------------------------------------------------


def assemble(msgs: list[Message], **kw: Any) -> Transaction | None:
    assembler = SnapshotAssembler(**kw)
    result = None
    for msg in msgs:
        assert result is None
        result = assembler.feed(msg)  # type: ignore[arg-type]
    assert assembler.pending is None
    return result


def test_snapshot_round_trip() -> None:
    pages = {p: bytes([p]) * 1024 for p in range(1, 41)}
    msgs = list(snapshot_messages("app.db", 12, 1024, 41, 0xABC, pages.items(), batch_bytes=8192))
    assert isinstance(msgs[0], SnapshotBegin) and isinstance(msgs[-1], SnapshotEnd)
    batches = msgs[1:-1]
    assert len(batches) == 5 and all(len(b.pgnos) == 8 for b in batches)  # type: ignore[union-attr]
    txn = assemble(through_the_wire(msgs), node_id="node-a", timestamp_ns=77)
    assert txn == Transaction(db="app.db", txid=12, page_size=1024, commit_size=41, pages=pages,
                              timestamp_ns=77, node_id="node-a", pre_checksum=0, post_checksum=0xABC)


def test_snapshot_batches_hold_at_least_one_and_at_most_max_pages() -> None:
    big = list(snapshot_messages("a.db", 1, 65536, 2, 0, [(1, b"x" * 65536), (2, b"y" * 65536)],
                                 batch_bytes=10))
    assert [len(m.pgnos) for m in big[1:-1]] == [1, 1]  # type: ignore[union-attr]
    many = [(p, b"\x00" * 512) for p in range(1, MAX_BATCH_PAGES + 11)]
    msgs = list(snapshot_messages("a.db", 1, 512, len(many), 0, many, batch_bytes=1 << 30))
    assert [len(m.pgnos) for m in msgs[1:-1]] == [MAX_BATCH_PAGES, 10]  # type: ignore[union-attr]
    assert len(assemble(through_the_wire(msgs)).pages) == len(many)  # type: ignore[union-attr]


def test_snapshot_skips_the_lock_page_and_may_be_sparse() -> None:
    lock = lock_page(512)
    pages = [(1, b"a" * 512), (lock - 1, b"b" * 512), (lock, b"c" * 512), (lock + 1, b"d" * 512)]
    msgs = list(snapshot_messages("big.db", 3, 512, lock + 5, 1, pages))
    txn = assemble(msgs)
    assert txn is not None and list(txn.pages) == [1, lock - 1, lock + 1]
    assert txn.commit_size == lock + 5


def test_snapshot_of_a_dropped_database() -> None:
    empty = assemble(list(snapshot_messages("d.db", 5, 4096, 0, 0, [])))
    assert empty is not None and empty.txid == 5 and empty.commit_size == 0 and not empty.pages


def test_snapshot_checksum_is_not_verified_here() -> None:
    txn = assemble(list(snapshot_messages("a.db", 2, 512, 1, 12345, [(1, b"z" * 512)])))
    assert txn is not None and txn.post_checksum == 12345 and txn.pre_checksum == 0


BEGIN = SnapshotBegin("a.db", 4, 512, 10, 99)
P = b"p" * 512


@pytest.mark.parametrize(
    ("msgs", "match"),
    [
        ([SnapshotPages("a.db", [1], [P])], "without a snapshot begin"),
        ([SnapshotEnd("a.db")], "without a snapshot begin"),
        ([BEGIN, BEGIN], "begins inside the snapshot"),
        ([BEGIN, SnapshotPages("b.db", [1], [P])], "inside the snapshot of a.db"),
        ([BEGIN, SnapshotEnd("b.db")], "inside the snapshot of a.db"),
        ([BEGIN, SnapshotPages("a.db", [2, 1], [P, P])], "page 1 after page 2"),
        ([BEGIN, SnapshotPages("a.db", [3], [P]), SnapshotPages("a.db", [3], [P])], "page 3 after page 3"),
        ([BEGIN, SnapshotPages("a.db", [11], [P])], "page 11 after page 0"),
        ([BEGIN, SnapshotPages("a.db", [0], [P])], "page 0"),
        ([BEGIN, SnapshotPages("a.db", [1], [P + b"x"])], "is 513 bytes"),
        ([BEGIN, SnapshotPages("a.db", [1], [P[:-1]])], "is 511 bytes"),
        ([BEGIN, SnapshotPages("a.db", [1, 2], [P])], "2 page numbers but 1 pages"),
        ([SnapshotBegin("a.db", 1, 1000, 0, 0)], "invalid page size"),
        ([SnapshotBegin("a.db", 1, 512, lock_page(512), 0),
          SnapshotPages("a.db", [lock_page(512)], [P])], "lock page"),
    ],
)
def test_bad_snapshots(msgs: list[Message], match: str) -> None:
    assembler = SnapshotAssembler()
    with pytest.raises(ProtocolError, match=match):
        for msg in msgs:
            assembler.feed(msg)  # type: ignore[arg-type]
    assert assembler.pending is None  # the partial snapshot is dropped


def test_snapshot_assembler_rejects_other_messages() -> None:
    with pytest.raises(TypeError):
        SnapshotAssembler().feed(Welcome())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "pages",
    [[(2, P), (1, P)], [(1, P), (1, P)], [(11, P)], [(0, P)], [(1, P[:-1])]],
)
def test_snapshot_messages_checks_its_input(pages: list[tuple[int, bytes]]) -> None:
    with pytest.raises(ValueError):
        list(snapshot_messages("a.db", 4, 512, 10, 0, pages))


# --- Authentication -------------------------------------------------------------


def test_proof() -> None:
    args = (b"secret", "primary", "cluster-1", "node-a", b"n" * 16, b"m" * 16)
    mine = proof(*args)
    assert len(mine) == PROOF_SIZE and proof(*args) == mine
    assert check_proof(mine, proof(*args))
    assert not check_proof(mine, bytes(32))
    assert not check_proof(mine, mine[:-1])
    changed = [
        (b"secreT", *args[1:]),
        (args[0], "replica", *args[2:]),
        (*args[:2], "cluster-2", *args[3:]),
        (*args[:3], "node-b", *args[4:]),
        (*args[:4], b"N" * 16, args[5]),
        (*args[:5], b"M" * 16),
        (*args[:4], args[5], args[4]),  # the nonces swapped
        (*args[:2], "cluster-1node-a", "", *args[4:]),  # fields are not just concatenated
    ]
    proofs = {proof(*c) for c in changed}  # type: ignore[arg-type]
    assert mine not in proofs and len(proofs) == len(changed)
    with pytest.raises(ValueError):
        proof(b"s", "observer", "c", "n", b"x" * 16, b"y" * 16)


def test_handshake_proofs_are_not_reflectable() -> None:
    nonce_r, nonce_p = new_nonce(), new_nonce()
    assert len(nonce_r) == NONCE_SIZE and nonce_r != nonce_p
    secret = b"s3cret"
    primary_proof = proof(secret, "primary", "c", "node-a", nonce_p, nonce_r)
    # The replica's expected proof for the same node and nonces differs by role alone.
    assert not check_proof(proof(secret, "replica", "c", "node-a", nonce_p, nonce_r), primary_proof)
    replica_expected = proof(secret, "replica", "c", "node-b", nonce_r, nonce_p)
    assert check_proof(replica_expected, proof(secret, "replica", "c", "node-b", nonce_r, nonce_p))
