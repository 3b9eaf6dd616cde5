"""Store.retract and Store.keep: a synchronous commit that failed is taken back as if never logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from replication.checksum import database_checksum
from replication.store import Store, StoreError
from replication.txn import Transaction, encode_record
from tests.unit.test_store import PAGE, SECOND, Clock, Model, header_page, page

DB = "app.db"


class Recorder:
    """A store listener that keeps what it is told."""

    def __init__(self) -> None:
        self.seen: list[Transaction] = []

    def __call__(self, txn: Transaction) -> None:
        self.seen.append(txn)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / ".pylitefs", "node-1", clock=Clock())
    yield s
    s.close()


def history(store: Store, model: Model, n: int) -> None:
    """`n` commits of DB growing to n + 2 pages."""
    for i in range(n):
        pages = {1: header_page(fill=i), i + 2: page(i)}
        store.commit(DB, PAGE, i + 2, pages)
        model.commit(pages, i + 2)


def test_retract_puts_the_log_position_and_page_hashes_back(store: Store, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    model = Model()
    history(store, model, 3)
    before = store.position(DB)
    logged = list(store.read(DB))
    image = bytes(model.image)
    told = Recorder()
    store.add_listener(told)
    # Changes pages 2 and 3, grows the database by two pages: every page hash it touches must come back.
    store.commit(DB, PAGE, 6, {1: header_page(fill=99), 2: page(100), 3: page(101), 6: page(102)},
                 retractable=True)
    taken = store.position(DB)
    assert taken is not None and before is not None and taken[0] == before[0] + 1
    told.seen.clear()
    caplog.set_level(logging.WARNING)
    store.retract(DB, taken[0])
    assert f"took back TXID {taken[0]}..{taken[0]}" in caplog.text
    assert told.seen == []  # listeners are not told: the caller ends what may have sent it on
    assert store.position(DB) == before and store.positions() == {DB: before}
    assert store.last(DB) == logged[-1] and list(store.read(DB)) == logged
    assert store.replay(DB) == image
    assert store.bytes_after(DB, before[0]) == 0
    # The next commit has the retracted one's TXID, starts from the earlier checksum, and its
    # checksum is the database's as if the retracted commit had never been (only page 4 changes).
    store.commit(DB, PAGE, 5, {4: page(200)})
    txn = store.last(DB)
    assert txn is not None and txn.txid == taken[0] and txn.pre_checksum == before[1]
    after = model.commit({4: page(200)}, 5)
    assert txn.post_checksum == database_checksum(after, PAGE)
    assert list(store.read(DB)) == [*logged, txn]
    store.close()
    # On disk: a new store finds exactly that log, and it matches the database.
    again = Store(tmp_path / ".pylitefs", "node-1", clock=Clock())
    try:
        assert again.load(DB, after) == (txn.txid, txn.post_checksum)
        assert list(again.read(DB)) == [*logged, txn]
    finally:
        again.close()


def test_retract_also_removes_what_was_logged_after(store: Store) -> None:
    model = Model()
    history(store, model, 2)
    before = store.position(DB)
    assert before is not None
    store.commit(DB, PAGE, 4, {1: header_page(fill=7), 4: page(7)}, retractable=True)
    store.commit(DB, PAGE, 4, {3: page(8)})
    store.commit(DB, PAGE, 5, {5: page(9)})
    assert store.bytes_after(DB, before[0]) == sum(len(encode_record(t)) for t in store.read(DB, before[0] + 1))
    store.retract(DB, before[0] + 1)
    assert store.position(DB) == before
    assert store.bytes_after(DB, 0) == sum(len(encode_record(t)) for t in store.read(DB))
    assert store.replay(DB) == bytes(model.image)


def test_retract_of_the_first_commit_leaves_no_database(store: Store) -> None:
    store.commit(DB, PAGE, 2, {1: header_page(), 2: page(1)}, retractable=True)
    store.retract(DB, 1)
    assert store.position(DB) is None and store.last(DB) is None and list(store.read(DB)) == []
    assert store.positions() == {}
    # A new first commit, at another page size even (nothing holds the old one any more).
    small = 1024
    store.commit(DB, small, 1, {1: header_page(small)})
    txn = store.last(DB)
    assert txn is not None and (txn.txid, txn.pre_checksum) == (1, 0)
    assert txn.post_checksum == database_checksum(header_page(small), small)


def test_retract_of_a_page_size_change_brings_the_old_page_size_back(store: Store) -> None:
    model = Model()
    history(store, model, 3)
    before = store.position(DB)
    assert before is not None
    small = 1024
    store.commit(DB, small, 2, {1: header_page(small), 2: page(5, small)}, retractable=True)
    store.retract(DB, before[0] + 1)
    assert store.position(DB) == before
    # A commit of a few pages at the old page size is accepted (no "must hold every page").
    store.commit(DB, PAGE, 5, {3: page(300)})
    txn = store.last(DB)
    assert txn is not None and txn.pre_checksum == before[1]
    assert txn.post_checksum == database_checksum(model.commit({3: page(300)}, 5), PAGE)


def test_only_the_last_retractable_commit_can_be_taken_back(store: Store) -> None:
    history(store, Model(), 2)
    with pytest.raises(StoreError, match="can be taken back"):
        store.retract("other.db", 1)  # no such database
    with pytest.raises(StoreError):
        store.retract(DB, 2)  # an ordinary commit
    store.commit(DB, PAGE, 3, {3: page(1)}, retractable=True)  # TXID 3
    store.commit(DB, PAGE, 3, {3: page(2)}, retractable=True)  # TXID 4
    position = store.position(DB)
    with pytest.raises(StoreError):
        store.retract(DB, 3)  # superseded by TXID 4
    with pytest.raises(StoreError):
        store.retract(DB, 5)  # not logged
    assert store.position(DB) == position and len(list(store.read(DB))) == 4
    store.keep(DB, 3)  # not the one retract would take: changes nothing
    store.retract(DB, 4)
    with pytest.raises(StoreError):
        store.retract(DB, 4)  # already taken back
    assert store.position(DB) is not None and store.position(DB)[0] == 3


def test_keep_makes_a_commit_final(store: Store) -> None:
    history(store, Model(), 2)
    store.commit(DB, PAGE, 3, {3: page(1)}, retractable=True)
    position = store.position(DB)
    store.keep(DB, 3)
    with pytest.raises(StoreError):
        store.retract(DB, 3)
    assert store.position(DB) == position and [t.txid for t in store.read(DB)] == [1, 2, 3]
    store.keep(DB, 3)  # again, and on an unknown database: nothing to do
    store.keep("other.db", 1)


def test_retention_keeps_the_commit_before_one_that_can_be_taken_back(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / ".pylitefs", "node-1", clock=clock, retention_seconds=0.0)
    try:
        history(store, Model(), 3)
        store.commit(DB, PAGE, 4, {4: page(1)}, retractable=True)
        assert store.compact(clock.now + SECOND) == {DB: 2}  # TXID 3 stays: retract needs it
        store.keep(DB, 4)
        assert store.compact(clock.now + SECOND) == {DB: 1}
        assert [t.txid for t in store.read(DB)] == [4]
    finally:
        store.close()


def test_a_failed_retractable_commit_leaves_nothing_to_take_back(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / ".pylitefs", "node-1", clock=clock, retention_seconds=0.0)
    try:
        history(store, Model(), 3)
        with pytest.raises(StoreError, match="every page"):  # a page size change without every page
            store.commit(DB, 1024, 4, {1: header_page(1024)}, retractable=True)
        store.commit(DB, PAGE, 5, {5: page(1)})  # TXID 4, not retractable
        assert store.compact(clock.now + SECOND) == {DB: 3}
        with pytest.raises(StoreError):
            store.retract(DB, 4)
    finally:
        store.close()


def test_a_compaction_under_way_keeps_the_record_before_a_retractable_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    store = Store(tmp_path / ".pylitefs", "node-1", clock=clock)  # retention: 600 s
    try:
        history(store, Model(), 3)
        txlog = store._dbs[DB].log
        compact = txlog.compact

        def compact_after_a_commit(*args: object) -> int:
            # The committing thread runs between the store's check and the log's copy, after an idle hour.
            clock.now += 3600 * SECOND
            store.commit(DB, PAGE, 5, {5: page(1)}, retractable=True)  # TXID 4
            return compact(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(txlog, "compact", compact_after_a_commit)
        store.compact(clock.now + 3600 * SECOND + SECOND)
        store.retract(DB, 4)
        assert store.position(DB) is not None and store.position(DB)[0] == 3
    finally:
        store.close()
