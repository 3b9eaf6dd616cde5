"""The wal-index header, against `-shm` files the real sqlite3 module keeps.

The last test plays the replica of DESIGN §5 on plain disk: it changes the
database file behind an open reader and publishes `after_apply`; the reader
must see the new content, and must not before the header is bumped.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fs.formats import FormatError
from fs.formats.shm import (
    CKPT_INFO_OFFSET,
    INDEX_HEADER_SIZE,
    READMARK_NOT_USED,
    SHM_HEADER_SIZE,
    build_index_headers,
    parse_checkpoint_info,
    parse_index_header,
    parse_shm_header,
)
from fs.formats.wal import WAL_VERSION, parse_wal_header, scan_wal


def _wal_db(tmp: Path, page_size: int = 4096) -> tuple[Path, sqlite3.Connection]:
    db = tmp / "s.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute(f"PRAGMA page_size={page_size}")
    con.execute("PRAGMA journal_mode=wal")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t(x)")
    return db, con


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_real_shm_header(tmp_path: Path, page_size: int) -> None:
    db, con = _wal_db(tmp_path, page_size)
    for i in range(3):
        con.execute("INSERT INTO t VALUES (randomblob(?))", (100 * (i + 1),))
    shm = Path(f"{db}-shm").read_bytes()
    wal = Path(f"{db}-wal").read_bytes()
    hdr = parse_shm_header(shm)
    scan = scan_wal(wal)
    wal_hdr = parse_wal_header(wal)
    assert hdr.version == WAL_VERSION and hdr.is_init == 1
    assert hdr.page_size == page_size
    assert hdr.mx_frame == scan.mx_frame
    assert hdr.frame_checksum == scan.checksum
    assert (hdr.salt1, hdr.salt2) == wal_hdr.salts
    assert hdr.big_endian_checksum == wal_hdr.big_endian
    assert hdr.n_page == scan.commits[-1].commit_size
    assert hdr.to_bytes() == shm[:INDEX_HEADER_SIZE]
    assert build_index_headers(hdr) == shm[: 2 * INDEX_HEADER_SIZE]
    if page_size == 65536:
        assert struct.unpack_from("=H", shm, 14) == (1,)
    info = parse_checkpoint_info(shm)
    assert info.n_backfill == 0
    assert info.to_bytes() == shm[CKPT_INFO_OFFSET:SHM_HEADER_SIZE]
    con.execute("PRAGMA wal_checkpoint(PASSIVE)")
    info = parse_checkpoint_info(Path(f"{db}-shm").read_bytes())
    assert info.n_backfill == hdr.mx_frame
    con.close()


def test_after_apply_is_a_valid_changed_header(tmp_path: Path) -> None:
    db, con = _wal_db(tmp_path)
    con.execute("INSERT INTO t VALUES (1)")
    hdr = parse_shm_header(Path(f"{db}-shm").read_bytes())
    con.close()
    new = hdr.after_apply(17)
    assert new.change_counter == hdr.change_counter + 1
    assert (new.mx_frame, new.n_page, new.is_init) == (0, 17, 1)
    assert new.checksum_ok and new.checksum != hdr.checksum
    assert parse_shm_header(build_index_headers(new)) == new
    assert (
        hdr.__class__(**{**_fields(hdr), "change_counter": 0xFFFFFFFF})
        .after_apply(1)
        .change_counter
        == 0
    )
    with pytest.raises(ValueError):
        hdr.after_apply(-1)


def _fields(hdr: object) -> dict[str, object]:
    return {name: getattr(hdr, name) for name in hdr.__slots__}  # type: ignore[attr-defined]


def test_parse_shm_header_rejects_what_sqlite_rejects(tmp_path: Path) -> None:
    db, con = _wal_db(tmp_path)
    con.execute("INSERT INTO t VALUES (1)")
    good = Path(f"{db}-shm").read_bytes()[:SHM_HEADER_SIZE]
    con.close()
    parse_shm_header(good)
    with pytest.raises(FormatError, match="needs 96"):
        parse_shm_header(good[:95])
    torn = bytearray(good)
    torn[8] ^= 1  # copy 0's change counter
    with pytest.raises(FormatError, match="differ"):
        parse_shm_header(torn)
    both = bytearray(torn)
    both[56] ^= 1  # same change in copy 1: copies agree, checksum does not
    with pytest.raises(FormatError, match="checksum"):
        parse_shm_header(both)
    with pytest.raises(FormatError, match="not initialised"):
        parse_shm_header(bytes(96))
    with pytest.raises(FormatError):
        parse_index_header(good, SHM_HEADER_SIZE - INDEX_HEADER_SIZE + 1)
    with pytest.raises(FormatError):
        parse_checkpoint_info(good[:135])


def test_header_recovered_from_an_empty_wal_is_accepted(tmp_path: Path) -> None:
    """walIndexRecover zeroes the header for an empty WAL: page size 0, mxFrame 0 — still valid."""
    db, con = _wal_db(tmp_path)
    con.execute("INSERT INTO t VALUES (1)")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()  # the last connection deletes -wal and -shm
    Path(f"{db}-wal").write_bytes(b"")  # an empty WAL, as a replica keeps it
    reader = sqlite3.connect(db)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)
    hdr = parse_shm_header(Path(f"{db}-shm").read_bytes())
    reader.close()
    assert (hdr.page_size, hdr.mx_frame, hdr.n_page) == (0, 0, 0)
    assert parse_shm_header(build_index_headers(hdr.after_apply(7))).n_page == 7
    broken = replace(hdr, mx_frame=1).with_checksum()
    with pytest.raises(FormatError, match="page size"):
        parse_shm_header(build_index_headers(broken))


def test_checkpoint_info_after_restart() -> None:
    raw = struct.pack("=I5I8sII", 9, 0, 9, 4, 3, 2, b"\0" * 8, 9, 0)
    info = parse_checkpoint_info(bytes(96) + raw)
    restarted = info.after_restart()
    assert restarted.n_backfill == 0 and restarted.n_backfill_attempted == 0
    assert restarted.read_marks == (0, 0, READMARK_NOT_USED, READMARK_NOT_USED, READMARK_NOT_USED)


@pytest.mark.skipif(sys.platform != "linux", reason="relies on a coherent mmap/pwrite page cache")
def test_replica_style_apply_is_seen_by_an_open_reader(tmp_path: Path) -> None:
    db, writer = _wal_db(tmp_path)
    writer.execute("INSERT INTO t VALUES ('a')")
    writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    reader = sqlite3.connect(db, isolation_level=None)
    assert reader.execute("SELECT x FROM t").fetchall() == [("a",)]
    writer.close()

    # The primary's next state, made on a copy (still WAL mode, checkpointed).
    other = tmp_path / "other.db"
    other.write_bytes(db.read_bytes())
    con = sqlite3.connect(other, isolation_level=None)
    con.execute("INSERT INTO t VALUES ('b')")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    image = other.read_bytes()

    fd = os.open(db, os.O_RDWR)
    try:
        os.pwrite(fd, image, 0)
        os.ftruncate(fd, len(image))
    finally:
        os.close(fd)
    # Without a wal-index change the reader keeps its cached pages.
    assert reader.execute("SELECT x FROM t").fetchall() == [("a",)]

    shm_fd = os.open(f"{db}-shm", os.O_RDWR)
    try:
        shm = os.pread(shm_fd, SHM_HEADER_SIZE, 0)
        hdr = parse_shm_header(shm).after_apply(len(image) // 4096)
        info = parse_checkpoint_info(shm).after_restart()
        copies = build_index_headers(hdr)
        os.pwrite(shm_fd, info.to_bytes(), CKPT_INFO_OFFSET)
        os.pwrite(shm_fd, copies[INDEX_HEADER_SIZE:], INDEX_HEADER_SIZE)  # copy 1 first
        os.pwrite(shm_fd, copies[:INDEX_HEADER_SIZE], 0)
    finally:
        os.close(shm_fd)
    assert reader.execute("SELECT x FROM t ORDER BY x").fetchall() == [("a",), ("b",)]
    assert reader.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    reader.close()
