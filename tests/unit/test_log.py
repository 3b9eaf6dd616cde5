"""The append-only transaction log: round trips, torn tails, corruption, retention, threads."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replication.log import LogClosedError, LogError, TransactionLog, TxidUnavailableError
from replication.txn import RECORD_HEADER_SIZE, Transaction, encode_record
from tests.conftest import with_record_version

PAGE = 512
SECOND = 1_000_000_000


def chain(n: int, *, first: int = 1, pre: int = 0, t0: int = 1_000 * SECOND, step: int = SECOND,
          db: str = "app.db") -> list[Transaction]:
    """`n` consecutive transactions with a valid TXID and checksum chain."""
    txns = []
    for i in range(n):
        txid = first + i
        post = (txid * 0x9E3779B97F4A7C15) % (1 << 64)
        txns.append(Transaction(
            db=db, txid=txid, page_size=PAGE, commit_size=txid % 5 + 1,
            pages={1: bytes([txid % 256]) * PAGE}, timestamp_ns=t0 + i * step,
            node_id="n1", pre_checksum=pre, post_checksum=post,
        ))
        pre = post
    return txns


def assert_holds(path: Path, txns: list[Transaction]) -> None:
    """The log file holds exactly the records of `txns`, then only zeros (space allocated ahead)."""
    records = b"".join(encode_record(t) for t in txns)
    data = path.read_bytes()
    assert data[: len(records)] == records
    assert not any(data[len(records) :])


def write_log(path: Path, txns: list[Transaction]) -> TransactionLog:
    txlog = TransactionLog.open(path)
    for txn in txns:
        txlog.append(txn)
    return txlog


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db.log"


def test_new_log_is_empty(path: Path) -> None:
    with TransactionLog.open(path) as txlog:
        assert txlog.last is None and len(txlog) == 0 and list(txlog) == []
        assert txlog.first_txid == 1 and txlog.next_txid == 1
        txlog.sync()
    assert path.exists() and path.stat().st_size == 0


def test_append_read_round_trip(path: Path) -> None:
    txns = chain(20)
    with write_log(path, txns) as txlog:
        assert list(txlog) == txns
        assert txlog.last == txns[-1] and txlog.next_txid == 21
        assert list(txlog.read(15)) == txns[14:]
        assert list(txlog.read(21)) == []
        txlog.sync()
    assert_holds(path, txns)
    with TransactionLog.open(path) as txlog:
        assert list(txlog) == txns and txlog.last == txns[-1] and len(txlog) == 20
        txlog.append(chain(1, first=21, pre=txns[-1].post_checksum)[0])
        assert txlog.last is not None and txlog.last.txid == 21


def test_read_outside_the_log_raises(path: Path) -> None:
    with write_log(path, chain(3, first=5, pre=7)) as txlog:
        assert txlog.first_txid == 5
        with pytest.raises(TxidUnavailableError):
            txlog.read(4)
        with pytest.raises(TxidUnavailableError):
            txlog.read(9)
        assert [t.txid for t in txlog.read(6)] == [6, 7]


def test_reader_sees_the_records_present_when_it_started(path: Path) -> None:
    txns = chain(4)
    with write_log(path, txns[:2]) as txlog:
        reader = txlog.read()
        txlog.append(txns[2])
        first = next(reader)  # the snapshot is taken by read(), not by the first next()
        txlog.append(txns[3])
        assert [first, *reader] == txns[:2]


def test_append_must_continue_the_chain(path: Path) -> None:
    txns = chain(3)
    with write_log(path, txns[:2]) as txlog:
        with pytest.raises(ValueError, match="does not follow"):
            txlog.append(txns[0])
        bad_pre = dataclasses.replace(txns[2], pre_checksum=1)
        with pytest.raises(ValueError, match="pre-checksum"):
            txlog.append(bad_pre)
        txlog.append(txns[2])
        assert list(txlog) == txns


def test_torn_tail_at_every_offset_is_cut(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    txns = chain(3)
    with write_log(path, txns) as txlog:
        whole = path.read_bytes()[: txlog.size]
    last_start = len(whole) - len(encode_record(txns[-1]))
    for cut in range(last_start + 1, len(whole)):
        path.write_bytes(whole[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING), TransactionLog.open(path) as txlog:
            assert list(txlog) == txns[:2], cut
            assert txlog.last == txns[1] and txlog.size == last_start
        assert path.stat().st_size == last_start
        assert any(r.levelno == logging.WARNING and f"offset {last_start}" in r.getMessage()
                   for r in caplog.records), cut
        assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    # After the cut the log takes appends again and they survive a reopen.
    with TransactionLog.open(path) as txlog:
        txlog.append(txns[2])
    with TransactionLog.open(path) as txlog:
        assert list(txlog) == txns


def test_space_is_allocated_ahead_and_kept_quietly(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    txns = chain(4)
    with write_log(path, txns[:2]) as txlog:
        size = txlog.size
    allocated = path.stat().st_size
    assert allocated >= 64 << 10 and allocated > size
    assert_holds(path, txns[:2])
    with caplog.at_level(logging.DEBUG), TransactionLog.open(path) as txlog:
        assert list(txlog) == txns[:2] and txlog.size == size
        txlog.append(txns[2])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert path.stat().st_size == allocated  # the append went into the zeros
    with path.open("ab") as f:  # more zeros, as a crash extending the file leaves them
        f.write(bytes(4096))
    with caplog.at_level(logging.WARNING), TransactionLog.open(path) as txlog:
        assert list(txlog) == txns[:3]
        txlog.append(txns[3])
    assert not caplog.records
    assert_holds(path, txns)


def test_a_damaged_last_record_before_the_zeros_is_a_torn_tail(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    txns = chain(3)
    with write_log(path, txns) as txlog:
        size = txlog.size
    last = size - len(encode_record(txns[-1]))
    data = bytearray(path.read_bytes())
    data[last + RECORD_HEADER_SIZE + 10 : size] = bytes(size - last - RECORD_HEADER_SIZE - 10)
    path.write_bytes(data)  # the record's body never reached the disk: zeros, as around it
    with caplog.at_level(logging.WARNING), TransactionLog.open(path) as txlog:
        assert list(txlog) == txns[:2] and txlog.size == last
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "torn" in caplog.records[0].getMessage() or "damaged" in caplog.records[0].getMessage()
    assert path.stat().st_size == last


def test_flipped_byte_in_the_middle_cuts_from_there(
    path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    txns = chain(5)
    write_log(path, txns).close()
    data = bytearray(path.read_bytes())
    sizes = [len(encode_record(t)) for t in txns]
    start = sum(sizes[:2])
    data[start + RECORD_HEADER_SIZE + 30] ^= 0x40  # inside record 3's body
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING), TransactionLog.open(path) as txlog:
        assert list(txlog) == txns[:2]
        assert txlog.next_txid == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and f"offset {start}" in errors[0] and "EVERYTHING" in errors[0]
    assert path.stat().st_size == start
    kept = [p for p in tmp_path.iterdir() if ".cut-" in p.name]
    assert len(kept) == 1 and kept[0].read_bytes() == bytes(data[start:])


def test_broken_chain_is_corruption(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = chain(2)
    b = chain(2, first=4, pre=a[-1].post_checksum)  # TXID 3 missing
    path.write_bytes(b"".join(encode_record(t) for t in a + b))
    with caplog.at_level(logging.WARNING), TransactionLog.open(path) as txlog:
        assert list(txlog) == a
    assert any(r.levelno == logging.ERROR and "does not follow" in r.getMessage()
               for r in caplog.records)


def test_a_log_of_another_record_version_is_refused_untouched(path: Path) -> None:
    # Version 1, as written before XXH3, with a valid header.
    records = with_record_version(b"".join(encode_record(t) for t in chain(3)), 1)
    path.write_bytes(records)
    for readonly in (False, True):
        with pytest.raises(LogError, match="record version 1.*another version of pylitefs"):
            TransactionLog.open(path, readonly=readonly)
    assert path.read_bytes() == records  # nothing cut, nothing kept aside
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_read_only_open_survives_a_file_cut_under_it(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    txns = chain(3)
    with write_log(path, txns) as txlog:
        size = txlog.size
    os.truncate(path, size)
    real_fstat = os.fstat

    def larger(fd: int) -> os.stat_result:  # the size before the node cut the file
        st = real_fstat(fd)
        return os.stat_result((*st[:6], st.st_size + 3 * 4096, *st[7:10]))

    monkeypatch.setattr(os, "fstat", larger)
    # A mapping of the old size is refused, or faults (SIGBUS) if the cut comes while it is mapped.
    with TransactionLog.open(path, readonly=True) as txlog:
        assert list(txlog) == txns and txlog.size == size


def test_garbage_file(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path.write_bytes(b"this is not a transaction log\n" * 100)
    with caplog.at_level(logging.WARNING), TransactionLog.open(path) as txlog:
        assert list(txlog) == [] and txlog.last is None
    assert path.stat().st_size == 0
    assert any(r.levelno == logging.ERROR and "offset 0" in r.getMessage() for r in caplog.records)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300), keep=st.integers(0, 3))
def test_any_suffix_never_breaks_open(tmp_path: Path, data: bytes, keep: int) -> None:
    path = tmp_path / "fuzz.log"
    txns = chain(3)
    path.write_bytes(b"".join(encode_record(t) for t in txns[:keep]) + data)
    with TransactionLog.open(path) as txlog:
        assert list(txlog) == txns[:keep]


def test_failed_append_leaves_no_partial_record(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    txns = chain(3)
    txlog = write_log(path, txns[:2])
    size = txlog.size
    real_pwrite = os.pwrite

    def half_then_enospc(fd: int, data: bytes, offset: int) -> int:
        real_pwrite(fd, bytes(data)[: len(data) // 2], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", half_then_enospc)
    with pytest.raises(OSError) as info:
        txlog.append(txns[2])
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.stat().st_size == size and txlog.size == size
    assert txlog.last == txns[1] and list(txlog) == txns[:2]
    txlog.append(txns[2])
    txlog.close()
    with TransactionLog.open(path) as txlog:
        assert list(txlog) == txns


def test_closed_log(path: Path) -> None:
    txns = chain(2)
    txlog = write_log(path, txns[:1])
    txlog.sync()
    txlog.close()
    txlog.sync()  # nothing unsynced: fine
    with pytest.raises(LogClosedError):
        txlog.append(txns[1])
    with pytest.raises(LogClosedError):
        txlog.read()
    assert isinstance(LogClosedError(), LogError)


def test_sync_runs_concurrently_with_appends(path: Path) -> None:
    txns = chain(300)
    txlog = write_log(path, [])
    stop = threading.Event()
    errors: list[BaseException] = []

    def syncer() -> None:
        try:
            while not stop.is_set():
                txlog.sync()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=syncer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for txn in txns:
            txlog.append(txn)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    txlog.sync()
    txlog.close()
    with TransactionLog.open(path) as again:
        assert list(again) == txns


# ------------------------------------------------------------------ retention

def test_retention_by_age_copies_each_record_a_bounded_number_of_times(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steady appends (one a second) with the default retention and pass interval (10 min, 1 min):
    the compactions copy at most about as much as was appended (rewriting the whole log at
    every pass would copy ~9x), and the log never holds much more than twice the retention."""
    import replication.log as log_module

    copied: list[int] = []
    real_copy = log_module._copy

    def counting_copy(src: int, dst: int, start: int, end: int) -> None:
        copied.append(end - start)
        real_copy(src, dst, start, end)

    monkeypatch.setattr(log_module, "_copy", counting_copy)
    retention, interval, hours = 600, 60, 2
    txns = chain(hours * 3600)
    record = len(encode_record(txns[0]))
    passes = 0
    with TransactionLog.open(path) as txlog:
        for i, txn in enumerate(txns):
            txlog.append(txn)
            if (i + 1) % interval == 0:
                passes += txlog.compact(retention, None, txn.timestamp_ns) > 0
                assert len(txlog) <= 2 * retention + interval + 1
                assert txlog.last == txn
        appended = txlog.next_txid - 1
    assert passes >= hours * 3600 // (2 * retention) - 1  # it does drop, now and then
    assert sum(copied) <= 1.2 * appended * record, (sum(copied), appended * record)


def test_retention_by_age_keeps_recent_and_txids_continue(path: Path) -> None:
    txns = chain(10)  # one per second from t0
    with write_log(path, txns) as txlog:
        now = txns[-1].timestamp_ns + SECOND // 2
        assert txlog.compact(3.0, None, now) == 7  # keeps t > now - 3 s: the last 3
        assert txlog.first_txid == 8 and list(txlog) == txns[7:]
        assert list(txlog.read(9)) == txns[8:]
        with pytest.raises(TxidUnavailableError):
            txlog.read(7)
        assert txlog.compact(3.0, None, now) == 0
        more = chain(2, first=11, pre=txns[-1].post_checksum, t0=now)
        for txn in more:
            txlog.append(txn)
        assert list(txlog) == txns[7:] + more
        txlog.sync()
    assert_holds(path, txns[7:] + more)
    assert not Path(str(path) + ".compact").exists()
    with TransactionLog.open(path) as txlog:
        assert txlog.first_txid == 8 and list(txlog) == txns[7:] + more


def test_retention_always_keeps_the_newest(path: Path) -> None:
    txns = chain(5)
    with write_log(path, txns) as txlog:
        assert txlog.compact(0.0, 0, txns[-1].timestamp_ns + 3600 * SECOND) == 4
        assert list(txlog) == txns[4:] and txlog.last == txns[4]
        assert txlog.compact(0.0, 0, txns[-1].timestamp_ns + 3600 * SECOND) == 0


def test_retention_by_size(path: Path) -> None:
    txns = chain(10)
    sizes = [len(encode_record(t)) for t in txns]
    with write_log(path, txns) as txlog:
        assert txlog.compact(1e9, sum(sizes[7:]) + 10, txns[-1].timestamp_ns) == 7
        assert list(txlog) == txns[7:] and txlog.size == sum(sizes[7:])
        assert txlog.compact(1e9, sum(sizes[8:]), txns[-1].timestamp_ns) == 1
        assert list(txlog) == txns[8:]


def test_readers_survive_compaction(path: Path) -> None:
    txns = chain(6)
    with write_log(path, txns) as txlog:
        reader = txlog.read()
        assert next(reader) == txns[0]
        txlog.compact(0.0, None, txns[-1].timestamp_ns + SECOND)
        assert list(reader) == txns[1:]  # the old file, still open
        assert list(txlog) == txns[5:]


def test_compaction_concurrent_with_appends(path: Path) -> None:
    txns = chain(400, step=1)
    txlog = write_log(path, txns[:200])
    done = threading.Event()
    results: list[int] = []

    def compactor() -> None:
        while not done.is_set():
            results.append(txlog.compact(0.0, 20_000, txns[-1].timestamp_ns))

    thread = threading.Thread(target=compactor)
    thread.start()
    try:
        for txn in txns[200:]:
            txlog.append(txn)
    finally:
        done.set()
        thread.join()
    kept = list(txlog)
    assert kept == txns[txlog.first_txid - 1 :] and kept[-1] == txns[-1]
    txlog.sync()
    txlog.close()
    with TransactionLog.open(path) as again:
        assert list(again) == kept
