"""The database header, against databases the real sqlite3 module writes."""

from __future__ import annotations

import contextlib
import sqlite3
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fs.formats import FormatError, check_page_size, is_valid_page_size, lock_page
from fs.formats.dbheader import DB_MAGIC, parse_db_header


@pytest.mark.parametrize("page_size", [512, 1024, 4096, 32768, 65536])
@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_real_header(tmp_path: Path, page_size: int, mode: str) -> None:
    db = tmp_path / "h.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute(f"PRAGMA page_size={page_size}")
    con.execute(f"PRAGMA journal_mode={mode}")
    con.execute("PRAGMA user_version=42")
    con.execute("PRAGMA application_id=7")
    con.execute("CREATE TABLE t(x)")
    con.execute("INSERT INTO t VALUES (randomblob(3 * ?))", (page_size,))
    con.close()
    data = db.read_bytes()
    hdr = parse_db_header(data)
    assert hdr.page_size == page_size
    assert hdr.is_wal is (mode == "wal")
    assert (hdr.write_version, hdr.read_version) == ((2, 2) if mode == "wal" else (1, 1))
    assert hdr.page_count == len(data) // page_size
    assert hdr.effective_page_count(len(data)) == len(data) // page_size
    assert hdr.user_version == 42 and hdr.application_id == 7
    assert hdr.text_encoding == 1
    assert hdr.sqlite_version == hdr.version_valid_for or hdr.sqlite_version > 3_000_000
    assert hdr.lock_page == 0x40000000 // page_size + 1
    if page_size == 65536:
        assert data[16:18] == b"\x00\x01"


def test_size_ignored_when_version_valid_for_is_stale() -> None:
    raw = bytearray(DB_MAGIC + bytes(84))
    raw[16:18] = struct.pack(">H", 4096)
    raw[24:28] = struct.pack(">I", 5)  # change counter
    raw[28:32] = struct.pack(">I", 10)  # size in pages
    raw[92:96] = struct.pack(">I", 4)  # written by a legacy version
    hdr = parse_db_header(raw)
    assert hdr.header_page_count == 10 and hdr.page_count is None
    assert hdr.effective_page_count(3 * 4096 + 100) == 3
    raw[92:96] = struct.pack(">I", 5)
    assert parse_db_header(raw).page_count == 10


@pytest.mark.parametrize(
    "data, message",
    [
        (DB_MAGIC + bytes(83), "needs 100 bytes"),
        (b"SQLite format 2\x00" + bytes(84), "magic"),
        (DB_MAGIC + struct.pack(">H", 1000) + bytes(82), "page size"),
        (DB_MAGIC + struct.pack(">H", 256) + bytes(82), "page size"),
        (DB_MAGIC + bytes(84), "page size"),
    ],
)
def test_bad_headers(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_db_header(data)


@given(st.binary(max_size=120))
def test_garbage_raises_only_format_error(data: bytes) -> None:
    for candidate in (data, DB_MAGIC + data):
        with contextlib.suppress(FormatError):
            parse_db_header(candidate)


def test_lock_page() -> None:
    assert lock_page(4096) == 262145
    assert lock_page(512) == 2097153
    assert lock_page(65536) == 16385
    assert (lock_page(1024) - 1) * 1024 <= 0x40000000 < lock_page(1024) * 1024
    with pytest.raises(FormatError):
        lock_page(1000)


def test_page_size_validation() -> None:
    assert [p for p in range(0, 70000) if is_valid_page_size(p)] == [2**k for k in range(9, 17)]
    assert check_page_size(512) == 512
    with pytest.raises(FormatError):
        check_page_size(True)  # type: ignore[arg-type]
