"""TransactionLog's space allocated ahead: crashes at any point, a full disk, retention, readers.

Real files in a temporary directory. A kill -9 leaves the page cache as the
process wrote it, so it is simulated by writing a prefix of what the killed
call would have written; a power loss by keeping, page by page, either what
the last sync made durable or what was written since. Monkeypatched only:
`os.pwrite` refusing bytes past a limit (a full disk), and the compaction's
copy, to run a retract at the one moment that matters.
"""

from __future__ import annotations

import errno
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from replication import log as log_module
from replication.log import PREALLOCATE, LogError, TransactionLog
from replication.txn import RECORD_HEADER_SIZE, Transaction, encode_record
from tests.conftest import with_record_version
from tests.unit.test_log import PAGE, SECOND, assert_holds, chain, write_log

_BLOCK = 4096


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db.log"


def big_txn(after: Transaction, pages: int) -> Transaction:
    """A transaction continuing `after` whose record is larger than `pages` * PAGE bytes."""
    return Transaction(
        db=after.db, txid=after.txid + 1, page_size=PAGE, commit_size=pages,
        pages={p: os.urandom(PAGE) for p in range(1, pages + 1)},
        timestamp_ns=after.timestamp_ns + SECOND, node_id="n1",
        pre_checksum=after.post_checksum, post_checksum=after.post_checksum ^ 0xABCDEF,
    )


def problems(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


def side_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p != path)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """A disk on which no file may grow past `limit[0]` bytes (pwrite: short write, then ENOSPC)."""
    limit = [1 << 62]
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        room = limit[0] - offset
        if room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, memoryview(data)[:room], offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    yield limit


# ------------------------------------------------------------------ kill -9


def test_kill_inside_an_append_over_the_zeros_is_a_torn_tail_at_every_prefix(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A record cut short anywhere, the header included (a page boundary can fall inside
    it), then zeros: the records before it are kept, the rest cut with a WARNING only."""
    txns = chain(4)
    with write_log(path, txns[:3]) as txlog:
        txlog.sync()
        size, allocated = txlog.size, path.stat().st_size
    image = path.read_bytes()
    record = encode_record(txns[3])
    assert allocated >= size + len(record)
    for prefix in [*range(1, RECORD_HEADER_SIZE + 2), len(record) // 2, len(record) - 1]:
        data = bytearray(image)
        data[size : size + prefix] = record[:prefix]
        path.write_bytes(data)
        caplog.clear()
        with caplog.at_level(logging.WARNING), TransactionLog.open(path) as txlog:
            assert list(txlog) == txns[:3], prefix
            assert [r.levelno for r in caplog.records] == [logging.WARNING], (prefix, problems(caplog))
            txlog.append(txns[3])
            txlog.sync()
        assert side_files(path) == [], prefix  # no .cut file: not corruption
        assert_holds(path, txns)


def test_kill_inside_the_allocation_keeps_every_record_quietly(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    txns = chain(3)
    with write_log(path, txns[:2]) as txlog:
        txlog.sync()
        size = txlog.size
    for length in (size + 1, size + 5000, (64 << 10) + 123):
        os.truncate(path, length)  # the zeros the killed allocation had written
        with caplog.at_level(logging.WARNING), TransactionLog.open(path) as txlog:
            assert list(txlog) == txns[:2] and txlog.size == size
        assert path.stat().st_size == length and not problems(caplog)
    with TransactionLog.open(path) as txlog:
        txlog.append(txns[2])  # fits into the zeros: the file does not grow
        txlog.sync()
    assert path.stat().st_size == (64 << 10) + 123
    assert_holds(path, txns)


# ------------------------------------------------------------------ power loss


def test_power_loss_keeps_what_was_synced_and_never_a_bad_record(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Any subset of the blocks written since the last sync reaching the disk, with the
    file size of either moment: open keeps every synced record and only whole records
    of the chain after them."""
    txns = chain(12)
    rng = random.Random(3)
    with write_log(path, txns[:5]) as txlog:
        txlog.sync()
        durable = path.read_bytes()
        for txn in txns[5:]:
            txlog.append(txn)
        written = path.read_bytes()
    synced = sum(len(encode_record(t)) for t in txns[:5])
    for _ in range(150):
        length = rng.choice((len(durable), len(written)))
        old = durable.ljust(len(written), b"\0")
        data = bytearray(old)
        for block in range(0, len(written), _BLOCK):
            if rng.random() < 0.5:
                data[block : block + _BLOCK] = written[block : block + _BLOCK]
        path.write_bytes(bytes(data[:length]))
        with caplog.at_level(logging.WARNING), TransactionLog.open(path) as txlog:
            kept = list(txlog)
            assert kept == txns[: len(kept)] and len(kept) >= 5
            assert txlog.size >= synced
            assert path.read_bytes()[: txlog.size] == written[: txlog.size]
        for name in side_files(path):
            os.unlink(path.parent / name)
        caplog.clear()


# ------------------------------------------------------------------ full disk


def test_full_disk_the_append_uses_what_is_left(
    path: Path, full_disk: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    txns = chain(3)
    with TransactionLog.open(path) as txlog:
        full_disk[0] = len(encode_record(txns[0])) + len(encode_record(txns[1])) + 10
        with caplog.at_level(logging.WARNING):
            txlog.append(txns[0])  # the allocation stops at the limit; the record fits
            txlog.append(txns[1])
        assert not problems(caplog)
        assert path.stat().st_size == full_disk[0]
        with pytest.raises(OSError) as info:
            txlog.append(txns[2])  # does not fit: refused, nothing of it stays
        assert info.value.errno == errno.ENOSPC
        assert path.stat().st_size == txlog.size and list(txlog) == txns[:2]
        full_disk[0] = 1 << 62  # space freed: appends go on
        txlog.append(txns[2])
        txlog.sync()
    with TransactionLog.open(path) as txlog:
        assert list(txlog) == txns
    assert_holds(path, txns)


def test_full_disk_a_record_larger_than_the_allocation_fails_cleanly(
    path: Path, full_disk: list[int]
) -> None:
    txns = chain(2)
    big = big_txn(txns[-1], PREALLOCATE // PAGE + 8)
    with write_log(path, txns) as txlog:
        size = txlog.size
        full_disk[0] = size + PREALLOCATE // 2
        with pytest.raises(OSError):
            txlog.append(big)
        assert list(txlog) == txns and txlog.size == size
        assert path.stat().st_size == size
        full_disk[0] = 1 << 62
        txlog.append(big)
        txlog.sync()
    with TransactionLog.open(path) as txlog:
        assert list(txlog) == [*txns, big]


# ------------------------------------------------------------------ sizes and shapes


def test_a_record_larger_than_the_allocation_overwrites_the_zeros_and_grows_the_file(
    path: Path,
) -> None:
    txns = chain(2)
    with write_log(path, txns[:1]) as txlog:
        allocated = path.stat().st_size
        big = big_txn(txns[0], PREALLOCATE // PAGE + 8)  # a replica's snapshot record
        txlog.append(big)
        assert txlog.size == path.stat().st_size > allocated
        small = chain(1, first=3, pre=big.post_checksum, t0=big.timestamp_ns + SECOND)[0]
        txlog.append(small)  # allocates again, as much as the log holds (at most PREALLOCATE)
        assert path.stat().st_size == txlog.size - len(encode_record(small)) + PREALLOCATE
        txlog.sync()
    assert_holds(path, [txns[0], big, small])
    with TransactionLog.open(path) as txlog:
        assert list(txlog) == [txns[0], big, small]


def test_the_allocation_grows_with_the_log(path: Path) -> None:
    txns = chain(300)
    with TransactionLog.open(path) as txlog:
        ends = set()
        for txn in txns:
            txlog.append(txn)
            assert path.stat().st_size >= txlog.size
            ends.add(path.stat().st_size)
        # Doubling from 64 KiB: a few allocations, not one per record.
        assert len(ends) <= 4 and min(ends) == 64 << 10
        assert txlog.bytes_after(0) == txlog.size == sum(len(encode_record(t)) for t in txns)


def test_truncate_after_and_compaction_leave_no_stale_bytes(path: Path) -> None:
    txns = chain(10)
    with write_log(path, txns[:6]) as txlog:
        assert txlog.truncate_after(4) == 2
        assert path.stat().st_size == txlog.size  # the zeros ahead went with them
        reader = txlog.read()
        assert txlog.compact(0.0, None, txns[-1].timestamp_ns) == 3  # keeps TXID 4 only
        assert path.stat().st_size == txlog.size == len(encode_record(txns[3]))
        assert not Path(f"{path}.compact").exists()
        for txn in txns[4:]:
            txlog.append(txn)
        assert list(reader) == txns[:4]  # a reader keeps the file it started with
        txlog.sync()
    assert_holds(path, txns[3:])
    with TransactionLog.open(path) as txlog:
        assert txlog.first_txid == 4 and list(txlog) == txns[3:]


# ------------------------------------------------------------------ read-only opens


def test_readonly_open_stops_before_a_record_being_written_and_changes_nothing(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    txns = chain(3)
    txlog = write_log(path, txns[:2])  # the node's log
    record = encode_record(txns[2])
    fd = os.open(path, os.O_WRONLY)
    try:  # the node is inside the pwrite() of its next record
        os.pwrite(fd, record[: len(record) // 2], txlog.size)
    finally:
        os.close(fd)
    before = path.read_bytes()
    with caplog.at_level(logging.INFO), TransactionLog.open(path, readonly=True) as reader:
        assert list(reader) == txns[:2] and reader.size == txlog.size
        with pytest.raises(LogError, match="read-only"):
            reader.append(txns[2])
    assert path.read_bytes() == before and not problems(caplog, logging.INFO)
    txlog.close()


def test_a_foreign_record_after_good_ones_is_refused_untouched(path: Path) -> None:
    txns = chain(4)
    with write_log(path, txns[:3]) as txlog:
        size = txlog.size
        txlog.sync()
    foreign = with_record_version(encode_record(txns[3]), 3)  # a later record version
    with path.open("r+b") as f:
        f.seek(size)
        f.write(foreign)
    before = path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(LogError, match="record version 3"):
            TransactionLog.open(path, readonly=readonly)
    assert path.read_bytes() == before and side_files(path) == []


# ------------------------------------------------------------------ retention racing a retract


def test_compaction_gives_up_when_records_are_taken_back_during_its_copy(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retract (`truncate_after`) and a new commit in place of the retracted one while the
    compaction copies without the lock: the copy holds the retracted record's bytes, so it
    must not replace the log. (The interleaving is injected by wrapping the copy.)"""
    txns = chain(6)
    replacement = big_txn(txns[4], 4)  # TXID 6 again, other content, a larger record
    txlog = write_log(path, txns)
    real_copy = log_module._copy
    copies: list[int] = []

    def copy_then_retract(src: int, dst: int, start: int, end: int) -> None:
        real_copy(src, dst, start, end)
        copies.append(end)
        if len(copies) == 1:  # outside the lock: the committing thread goes on meanwhile
            assert txlog.truncate_after(5) == 1
            txlog.append(replacement)

    monkeypatch.setattr(log_module, "_copy", copy_then_retract)
    assert txlog.compact(0.0, None, txns[-1].timestamp_ns, keep_from=lambda: 5) == 0
    monkeypatch.undo()
    assert list(txlog) == [*txns[:5], replacement] and not Path(f"{path}.compact").exists()
    # (A size limit: the large replacement makes the four expired records less than half the log.)
    assert txlog.compact(0.0, 0, txns[-1].timestamp_ns, keep_from=lambda: 5) == 4
    assert list(txlog) == [txns[4], replacement]
    txlog.sync()
    txlog.close()
    assert_holds(path, [txns[4], replacement])
    with TransactionLog.open(path) as again:
        assert list(again) == [txns[4], replacement]
