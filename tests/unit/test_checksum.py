"""The rolling database checksum: incremental updates equal a from-scratch computation."""

from __future__ import annotations

import sqlite3
from functools import reduce
from operator import xor
from pathlib import Path

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from fs.formats import lock_page
from replication.checksum import ChecksumError, PageHashes, database_checksum, page_hash

PS = 512


def _image_checksum(image: bytes, page_size: int) -> int:
    """The definition, spelled out independently."""
    lock = lock_page(page_size)
    hashes = []
    for i in range(0, len(image), page_size):
        pgno = i // page_size + 1
        if pgno != lock:
            digest = xxhash.xxh3_64(image[i : i + page_size], seed=pgno).digest()
            hashes.append(int.from_bytes(digest, "big"))
    return reduce(xor, hashes, 0)


def test_page_hash_depends_on_number_and_content() -> None:
    page = bytes(range(256)) * 2
    assert page_hash(1, page) != page_hash(2, page)
    assert page_hash(1, page) != page_hash(1, page[::-1])
    assert 0 <= page_hash(1, page) < 2**64


def test_real_database(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t(x)")
    con.executemany("INSERT INTO t VALUES (randomblob(700))", [()] * 50)
    con.commit()
    con.close()
    image = db.read_bytes()
    assert database_checksum(image, 4096) == _image_checksum(image, 4096)
    assert database_checksum(b"", 4096) == 0


def _apply_to_image(image: bytearray, pages: dict[int, bytes], commit_size: int) -> None:
    del image[commit_size * PS :]
    image.extend(bytes(commit_size * PS - len(image)))
    for pgno, page in pages.items():
        if pgno <= commit_size:
            image[(pgno - 1) * PS : pgno * PS] = page


txn_strategy = st.tuples(
    st.dictionaries(st.integers(1, 40), st.binary(min_size=PS, max_size=PS), max_size=6),
    st.integers(0, 40),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(txn_strategy, max_size=12))
def test_incremental_equals_from_scratch(txns: list[tuple[dict[int, bytes], int]]) -> None:
    hashes = PageHashes(PS)
    image = bytearray()
    for pages, commit_size in txns:
        got = hashes.apply(pages, commit_size)
        _apply_to_image(image, pages, commit_size)
        assert got == hashes.checksum == database_checksum(bytes(image), PS)
        assert hashes.commit_size == commit_size


def test_lock_page_is_never_included() -> None:
    ps = 65536
    lock = lock_page(ps)
    hashes = PageHashes(ps)
    page = b"\x01" * ps
    before = hashes.apply({1: page}, lock - 1)
    after = hashes.apply({lock: page, lock + 1: page}, lock + 1)
    assert after == before ^ page_hash(lock + 1, page)
    # Shrinking back below the lock page removes only the page after it.
    assert hashes.apply({}, lock - 1) == before


def test_growth_without_pages_counts_zero_pages() -> None:
    hashes = PageHashes(PS)
    hashes.apply({}, 3)
    assert hashes.checksum == database_checksum(bytes(3 * PS), PS)


def test_bad_input_changes_nothing() -> None:
    hashes = PageHashes(PS)
    hashes.apply({1: b"a" * PS}, 1)
    state = hashes.checksum
    with pytest.raises(ChecksumError):
        hashes.apply({2: b"short"}, 2)
    with pytest.raises(ChecksumError):
        hashes.apply({0: b"a" * PS}, 2)
    with pytest.raises(ChecksumError):
        hashes.apply({}, -1)
    assert (hashes.checksum, hashes.commit_size) == (state, 1)
    with pytest.raises(ChecksumError):
        PageHashes(1000)
    with pytest.raises(ChecksumError):
        PageHashes.from_image(b"x" * 513, PS)


def test_copy_is_independent() -> None:
    hashes = PageHashes(PS)
    hashes.apply({1: b"a" * PS}, 1)
    other = hashes.copy()
    other.apply({1: b"b" * PS}, 1)
    assert hashes.checksum != other.checksum
    assert hashes.checksum == database_checksum(b"a" * PS, PS)
