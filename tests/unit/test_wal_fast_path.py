"""WalTracker's fast path (header then whole page, as bytes) agrees with its general path.

The general path is forced by feeding the same writes as bytearrays.
"""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest

from fs.formats.wal import (
    FRAME_HEADER_SIZE,
    WalCommit,
    WalTracker,
    build_wal_header,
    encode_frame_header,
    frame_offset,
    wal_checksum,
)
from tests.unit.test_formats_wal import BASIC_STEPS, Event, record_session


def _summary(commits: list[WalCommit]) -> list[tuple[object, ...]]:
    return [
        (c.page_size, c.commit_size, dict(c.pages), c.first_frame, c.last_frame, c.salts,
         c.checkpoint_seq, c.checksum)
        for c in commits
    ]


def _replay(events: list[Event], general: bool) -> tuple[list[tuple[object, ...]], WalTracker]:
    tracker = WalTracker()
    out: list[tuple[object, ...]] = []
    for event in events:
        if event[0] == "write":
            data = bytearray(event[2]) if general else bytes(event[2])
            out.append(tuple(_summary(tracker.write(event[1], data))))
        elif event[0] == "truncate":
            tracker.truncate(event[1])
        elif event[0] == "delete":
            tracker.reset()
    return out, tracker


@pytest.mark.parametrize("page_size", [512, 4096])
def test_fast_and_general_paths_agree_on_sqlite_sessions(tmp_path: Path, page_size: int) -> None:
    session = record_session(tmp_path, page_size, BASIC_STEPS, pragmas="PRAGMA cache_size=5;")
    fast, t1 = _replay(session.events, general=False)
    general, t2 = _replay(session.events, general=True)
    assert fast == general
    assert (t1.mx_frame, t1.checksum, t1.pending_frames) == (t2.mx_frame, t2.checksum,
                                                             t2.pending_frames)


@pytest.mark.parametrize("seed", range(20))
def test_fast_path_mixed_with_odd_writes(seed: int) -> None:
    """Random rewrites of pending frames (whole, header only, partial page) between appends."""
    rng = random.Random(seed)
    ps = 512
    header = build_wal_header(ps, 1, 7, 9, big_endian=bool(seed % 2))
    writes: list[tuple[int, bytes]] = [(0, header.to_bytes())]
    s = header.checksum
    frame = 1
    for _txn in range(8):
        count = rng.randint(1, 4)
        for i in range(count):
            pgno = rng.randint(1, 6)
            page = os.urandom(ps)
            commit = 6 if i == count - 1 else 0
            if commit and count > 1 and rng.random() < 0.3:
                # First an invalid version of the commit frame (stale checksum), then a rewrite:
                # what walRewriteChecksums does, only ever in a transaction of several frames.
                bad, _ = encode_frame_header(header, (s[0] ^ 1, s[1]), pgno, commit, page)
                off = frame_offset(frame, ps)
                writes += [(off, bad), (off + FRAME_HEADER_SIZE, page)]
            hdr, s = encode_frame_header(header, s, pgno, commit, page)
            off = frame_offset(frame, ps)
            if rng.random() < 0.2:
                cut = rng.randint(1, ps - 1)
                writes += [(off, hdr), (off + FRAME_HEADER_SIZE, page[:cut]),
                           (off + FRAME_HEADER_SIZE + cut, page[cut:])]
            else:
                writes += [(off, hdr), (off + FRAME_HEADER_SIZE, page)]
            if rng.random() < 0.2:
                writes.append((off, hdr))  # header rewritten unchanged
            frame += 1
    events: list[Event] = [("write", off, data) for off, data in writes]
    fast, t1 = _replay(events, general=False)
    general, t2 = _replay(events, general=True)
    assert fast == general
    assert sum(len(c) for c in fast) == 8
    assert (t1.mx_frame, t1.checksum) == (t2.mx_frame, t2.checksum)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("page_size", [512, 1024, 4096, 65536])
def test_vector_checksum_extremes(page_size: int, big_endian: bool) -> None:
    """Pages of all-ones words (the largest float partial sums) and random pages."""
    fmt = ">" if big_endian else "<"
    for page in (b"\xff" * page_size, bytes(page_size), os.urandom(page_size)):
        words = struct.unpack(f"{fmt}{page_size // 4}I", page)
        s0 = s1 = 0
        for i in range(0, len(words), 2):
            s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
            s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
        assert wal_checksum(page, big_endian) == (s0, s1)


def test_one_frame_commit_is_checked_for_salts_and_trusted_for_its_checksum() -> None:
    """The fast path takes an in-order one-frame commit on SQLite's word, but never a stale frame."""
    ps = 512
    header = build_wal_header(ps, 1, 7, 9)
    page = os.urandom(ps)
    tracker = WalTracker()
    tracker.write(0, header.to_bytes())
    # A frame left from the previous generation (other salts) is not a commit.
    old = build_wal_header(ps, 0, 5, 6)
    stale, _ = encode_frame_header(old, header.checksum, 1, 1, page)
    tracker.write(frame_offset(1, ps), stale)
    assert tracker.write(frame_offset(1, ps) + FRAME_HEADER_SIZE, page) == []
    # SQLite's frame: reported at once, and the chain continues from its checksum.
    hdr, s = encode_frame_header(header, header.checksum, 1, 1, page)
    fresh = WalTracker()
    fresh.write(0, header.to_bytes())
    fresh.write(frame_offset(1, ps), hdr)
    commits = fresh.write(frame_offset(1, ps) + FRAME_HEADER_SIZE, page)
    assert [(c.commit_size, dict(c.pages), c.checksum) for c in commits] == [(1, {1: page}, s)]
    assert (fresh.mx_frame, fresh.checksum) == (1, s)
