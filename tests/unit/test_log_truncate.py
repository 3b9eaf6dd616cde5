"""TransactionLog.truncate_after and bytes_after: what synchronous replication takes back and measures."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from replication.log import LogClosedError, TransactionLog, TxidUnavailableError
from replication.txn import Transaction, encode_record
from tests.unit.test_log import SECOND, chain, write_log


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db.log"


def sizes(txns: list[Transaction]) -> list[int]:
    return [len(encode_record(t)) for t in txns]


def test_truncate_after_keeps_up_to_txid_and_the_chain_goes_on_from_there(
        path: Path, caplog: pytest.LogCaptureFixture) -> None:
    txns = chain(6)
    with write_log(path, txns) as txlog:
        assert txlog.truncate_after(3) == 3
        assert txlog.last == txns[2] and len(txlog) == 3 and txlog.next_txid == 4
        assert list(txlog) == txns[:3]
        assert txlog.size == sum(sizes(txns[:3])) == path.stat().st_size
        # The next record chains on TXID 3's checksum, not on a removed record's.
        with pytest.raises(ValueError, match="does not follow"):
            txlog.append(txns[4])
        with pytest.raises(ValueError, match="pre-checksum"):
            txlog.append(dataclasses.replace(txns[3], pre_checksum=txns[3].post_checksum))
        again = chain(2, first=4, pre=txns[2].post_checksum, t0=txns[-1].timestamp_ns + SECOND)
        for txn in again:
            txlog.append(txn)
        assert list(txlog) == txns[:3] + again
        txlog.sync()
    caplog.set_level(logging.WARNING)
    with TransactionLog.open(path) as reopened:  # on disk exactly that, nothing to cut
        assert list(reopened) == txns[:3] + again
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_truncate_after_zero_empties_a_log_that_starts_at_1(path: Path) -> None:
    txns = chain(4)
    with write_log(path, txns) as txlog:
        assert txlog.truncate_after(0) == 4
        assert txlog.last is None and len(txlog) == 0 and list(txlog) == []
        assert txlog.size == 0 and path.stat().st_size == 0
        assert txlog.bytes_after(0) == 0
        txlog.append(txns[0])  # an empty log takes any TXID: the first one again
        assert list(txlog) == txns[:1] and txlog.last == txns[0]
        txlog.sync()
    with TransactionLog.open(path) as reopened:
        assert list(reopened) == txns[:1]


def test_truncate_after_the_last_txid_or_beyond_removes_nothing(path: Path) -> None:
    txns = chain(3)
    with write_log(path, txns) as txlog:
        assert txlog.truncate_after(3) == 0
        assert txlog.truncate_after(10) == 0
        assert list(txlog) == txns and txlog.size == sum(sizes(txns))


def test_truncate_after_a_txid_retention_dropped_raises_and_changes_nothing(path: Path) -> None:
    txns = chain(10)
    with write_log(path, txns) as txlog:
        txlog.compact(3.0, None, txns[-1].timestamp_ns + SECOND // 2)
        assert txlog.first_txid == 8
        for txid in (0, 6):
            with pytest.raises(TxidUnavailableError):
                txlog.truncate_after(txid)
        assert list(txlog) == txns[7:]
        assert txlog.truncate_after(8) == 2 and list(txlog) == txns[7:8]


def test_truncate_after_on_a_closed_log(path: Path) -> None:
    txlog = write_log(path, chain(2))
    txlog.close()
    with pytest.raises(LogClosedError):
        txlog.truncate_after(1)


def test_bytes_after_counts_the_records_after_a_txid(path: Path) -> None:
    with TransactionLog.open(path) as empty:
        assert empty.bytes_after(0) == 0 and empty.bytes_after(5) == 0
    path.unlink()
    txns = chain(6)
    size = sizes(txns)
    with write_log(path, txns) as txlog:
        for txid in range(0, 7):
            assert txlog.bytes_after(txid) == sum(size[txid:]), txid
        assert txlog.bytes_after(-3) == sum(size)  # before the first: all of them
        assert txlog.bytes_after(100) == 0
        txlog.truncate_after(4)
        assert txlog.bytes_after(0) == sum(size[:4]) and txlog.bytes_after(2) == sum(size[2:4])
        assert txlog.bytes_after(4) == 0
        # After retention the log starts later: before its first TXID means every byte it holds.
        txlog.compact(0.0, None, txns[-1].timestamp_ns + SECOND)
        assert txlog.first_txid == 4
        assert txlog.bytes_after(1) == txlog.bytes_after(3) == size[3] == txlog.size
        assert txlog.bytes_after(4) == 0
