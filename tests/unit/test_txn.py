"""Transaction values and their self-checksummed msgpack records."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import struct
import zlib

import msgpack
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from fs.formats import lock_page
from replication.txn import (
    RECORD_HEADER_SIZE,
    CorruptRecordError,
    RecordError,
    Transaction,
    TransactionError,
    TruncatedRecordError,
    UnsupportedRecordError,
    decode_record,
    encode_record,
    iter_records,
    record_size,
)


def make(pages: dict[int, bytes] | None = None, **kw: object) -> Transaction:
    page_size = kw.pop("page_size", 512)
    pages = {1: b"\x01" * page_size, 3: b"\x03" * page_size} if pages is None else pages
    fields = dict(
        db="app.db",
        txid=7,
        page_size=page_size,
        pages=pages,
        timestamp_ns=1_700_000_000_123_456_789,
        node_id="node-1",
        pre_checksum=2**64 - 1,
        post_checksum=12345,
    )
    fields.update(kw)
    if "commit_size" not in fields:
        fields["commit_size"] = max(pages, default=0) + 1
    return Transaction(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(compress: bool) -> None:
    txn = make()
    record = encode_record(txn, compress=compress)
    assert record_size(record) == len(record)
    decoded, end = decode_record(record)
    assert decoded == txn and end == len(record)
    assert list(decoded.pages) == [1, 3]


def test_65536_byte_pages() -> None:
    ps = 65536
    txn = make({1: b"a" * ps, 2: bytes(range(256)) * 256}, page_size=ps)
    assert decode_record(encode_record(txn))[0] == txn
    assert decode_record(encode_record(txn, compress=True))[0] == txn


def test_thousands_of_pages() -> None:
    pages = {n: n.to_bytes(4, "big") * 1024 for n in range(1, 5001)}
    txn = make(pages, page_size=4096, commit_size=6000)
    record = encode_record(txn)
    assert len(record) > 5000 * 4096
    assert decode_record(record)[0] == txn


def test_dropped_database() -> None:
    txn = make({}, commit_size=0, dropped=True, post_checksum=0)
    assert decode_record(encode_record(txn))[0] == txn
    with pytest.raises(TransactionError):
        make(dropped=True)


def test_several_records_in_a_buffer() -> None:
    txns = [make(txid=i) for i in range(1, 4)]
    buf = b"".join(encode_record(t, compress=t.txid == 2) for t in txns)
    assert [t for _off, t in iter_records(buf)] == txns
    offsets = [off for off, _t in iter_records(buf)]
    assert offsets[0] == 0 and offsets[1] == len(encode_record(txns[0]))


@pytest.mark.parametrize(
    "change",
    [
        {"txid": 0},
        {"txid": -1},
        {"txid": True},
        {"page_size": 1000},
        {"db": ""},
        {"db": "x" * 2000},
        {"node_id": 5},
        {"pre_checksum": 2**64},
        {"post_checksum": -1},
        {"commit_size": 2},  # page 3 beyond it
        {"commit_size": 2**32},
        {"pages": {0: b"\0" * 512}},
        {"pages": {1: b"short"}},
        {"pages": {1: b"\0" * 512, "2": b"\0" * 512}, "commit_size": 5},
        {"pages": {1: 5}},
        {"timestamp_ns": 1.5},
    ],
)
def test_invalid_transactions(change: dict[str, object]) -> None:
    with pytest.raises(TransactionError):
        make(**change)  # type: ignore[arg-type]


def test_lock_page_is_refused() -> None:
    lock = lock_page(65536)
    with pytest.raises(TransactionError, match="lock page"):
        make({lock: b"\0" * 65536}, page_size=65536)


def test_transactions_are_immutable() -> None:
    txn = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        txn.txid = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        txn.pages[1] = b"x"  # type: ignore[index]
    assert dataclasses.replace(txn, txid=9).txid == 9
    with pytest.raises(TransactionError):
        dataclasses.replace(txn, commit_size=1)
    assert pickle.loads(pickle.dumps(txn)) == txn
    assert copy.deepcopy(txn) == txn


def test_pages_are_sorted_and_copied() -> None:
    source = {3: bytearray(b"c" * 512), 1: memoryview(b"a" * 512)}
    txn = make(source)
    source[3][0] = 0
    assert list(txn.pages) == [1, 3]
    assert txn.pages[3] == b"c" * 512 and type(txn.pages[1]) is bytes


def test_truncation_anywhere_is_reported_as_truncated() -> None:
    record = encode_record(make())
    for cut in range(0, len(record)):
        with pytest.raises(TruncatedRecordError) as info:
            decode_record(record[:cut])
        assert info.value.offset == 0
    with pytest.raises(TruncatedRecordError) as info:
        list(iter_records(record + record[:30]))
    assert info.value.offset == len(record)


@settings(max_examples=300)
@given(st.data())
def test_any_bit_flip_is_detected(data: st.DataObject) -> None:
    record = bytearray(encode_record(make(), compress=data.draw(st.booleans())))
    pos = data.draw(st.integers(0, len(record) - 1))
    record[pos] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(RecordError):
        decode_record(bytes(record))


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_garbage_raises_record_error(data: bytes) -> None:
    with pytest.raises(RecordError):
        decode_record(data)


def _record(body: bytes, flags: int = 0, version: int = 2) -> bytes:
    """A record framed by hand: XXH3-64's low 32 bits for the body (v2), CRC-32 for v1."""
    check = xxhash.xxh3_64_intdigest(body) & 0xFFFFFFFF if version == 2 else zlib.crc32(body)
    head = struct.pack(">4sBBHII", b"PLTX", version, flags, 0, len(body), check)
    return head + zlib.crc32(head).to_bytes(4, "big") + body


def test_a_record_framed_by_hand_decodes() -> None:
    txn = Transaction(db="a.db", txid=1, page_size=512, commit_size=1, pages={1: bytes(512)},
                      timestamp_ns=1, node_id="n", pre_checksum=0, post_checksum=5)
    assert decode_record(_record(_body(txn)))[0] == txn
    assert encode_record(txn) == _record(_body(txn))


def test_a_record_of_version_1_is_unsupported_not_corrupt() -> None:
    txn = Transaction(db="a.db", txid=1, page_size=512, commit_size=1, pages={1: bytes(512)},
                      timestamp_ns=1, node_id="n", pre_checksum=0, post_checksum=5)
    with pytest.raises(UnsupportedRecordError, match="record version 1") as info:
        decode_record(_record(_body(txn), version=1))
    assert not isinstance(info.value, CorruptRecordError)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"\xc1", "bad record body"),
        (msgpack.packb([1, 2]), "wrong fields"),
        (msgpack.packb({"db": "x"}), "wrong fields"),
        (msgpack.packb(b"x" * 70000), "bad record body"),  # over max_bin_len
        (msgpack.packb(1) + b"\x00", "bad record body"),  # trailing data
    ],
)
def test_well_framed_but_bad_bodies(body: bytes, message: str) -> None:
    with pytest.raises(CorruptRecordError, match=message):
        decode_record(_record(body))


def _body(txn: Transaction, **override: object) -> bytes:
    from replication.txn import _to_body

    return msgpack.packb({**_to_body(txn), **override}, use_bin_type=True)


@pytest.mark.parametrize(
    "override",
    [
        {"txid": "7"},
        {"dropped": 1},
        {"pgnos": [1]},
        {"pgnos": [1, 1]},
        {"pgnos": [1, "3"]},
        {"data": [b"x", b"y"]},
        {"txid": 0},
    ],
)
def test_bad_field_values(override: dict[str, object]) -> None:
    with pytest.raises(CorruptRecordError):
        decode_record(_record(_body(make(), **override)))


def test_size_limits() -> None:
    record = encode_record(make())
    with pytest.raises(CorruptRecordError, match="exceeds the limit"):
        decode_record(record, max_record_size=100)
    bomb = zlib.compress(bytes(10_000_000), 9)
    with pytest.raises(CorruptRecordError, match="exceeds the limit"):
        decode_record(_record(bomb, flags=1), max_record_size=1_000_000)
    with pytest.raises(CorruptRecordError, match="flags"):
        decode_record(_record(b"", flags=0x80))
    assert RECORD_HEADER_SIZE == 20
