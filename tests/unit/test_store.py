"""The transaction store (the mount's CommitSink): numbering, checksums, load, replay."""

from __future__ import annotations

import errno
import logging
import os
import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from replication.checksum import database_checksum
from replication.log import LogClosedError, TransactionLog, TxidUnavailableError
from replication.store import ChecksumMismatchError, Store, StoreError
from replication.txn import Transaction

PAGE = 4096
SECOND = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * SECOND

    def __call__(self) -> int:
        self.now += SECOND
        return self.now


class Model:
    """The database image a test builds alongside the store, commit by commit."""

    def __init__(self, page_size: int = PAGE) -> None:
        self.page_size = page_size
        self.image = bytearray()

    def commit(self, pages: dict[int, bytes], commit_size: int) -> bytes:
        size = commit_size * self.page_size
        del self.image[size:]
        self.image.extend(bytes(size - len(self.image)))
        for pgno, page in pages.items():
            self.image[(pgno - 1) * self.page_size : pgno * self.page_size] = page
        return bytes(self.image)


def header_page(page_size: int = PAGE, fill: int = 0) -> bytes:
    raw = 1 if page_size == 65536 else page_size
    head = b"SQLite format 3\x00" + raw.to_bytes(2, "big") + b"\x01\x01" + bytes(80)
    return head + bytes([fill]) * (page_size - len(head))


def page(seed: int, page_size: int = PAGE) -> bytes:
    return random.Random(seed).randbytes(page_size)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / ".pylitefs", "node-1", clock=Clock())
    yield s
    s.close()


def random_history(store: Store, db: str, n: int, seed: int = 0) -> list[bytes]:
    """`n` random commits (growing, shrinking) of `db`; the image after each."""
    rng = random.Random(seed)
    model = Model()
    images = []
    size = 0
    for i in range(n):
        size = max(1, size + rng.randint(-3, 6))
        touched = rng.sample(range(1, size + 1), k=min(size, rng.randint(1, 5)))
        pages = {p: page(rng.getrandbits(32)) for p in touched}
        pages[1] = header_page(fill=i % 256)
        store.commit(db, PAGE, size, pages)
        images.append(model.commit(pages, size))
    return images


# ------------------------------------------------------------------ commits

def test_commit_numbering_and_checksum_chain(store: Store) -> None:
    images = random_history(store, "app.db", 40)
    txns = list(store.read("app.db"))
    assert [t.txid for t in txns] == list(range(1, 41))
    assert txns[0].pre_checksum == 0
    for a, b in zip(txns, txns[1:], strict=False):
        assert a.post_checksum == b.pre_checksum
    for txn, image in zip(txns, images, strict=True):
        assert txn.post_checksum == database_checksum(image, PAGE)
        assert txn.node_id == "node-1" and txn.db == "app.db" and not txn.dropped
    assert store.position("app.db") == (40, txns[-1].post_checksum)
    assert store.position("other.db") is None


def test_replay_at_every_txid_equals_the_built_image(store: Store) -> None:
    images = random_history(store, "app.db", 30, seed=3)
    for txid, image in enumerate(images, start=1):
        assert store.replay("app.db", txid) == image
    assert store.replay("app.db") == images[-1]
    with pytest.raises(StoreError):
        store.replay("app.db", 31)


def test_listeners_are_called_after_append(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[int, int | None]] = []
    store.add_listener(lambda t: seen.append((t.txid, (store.position(t.db) or (0,))[0])))

    def broken(txn: Transaction) -> None:
        raise RuntimeError("listener bug")

    store.add_listener(broken)
    with caplog.at_level(logging.ERROR):
        store.commit("app.db", PAGE, 1, {1: header_page()})
        store.commit("app.db", PAGE, 2, {2: page(1)})
    assert seen == [(1, 1), (2, 2)]  # the record is in the log when listeners run
    assert sum("listener" in r.getMessage() for r in caplog.records) == 2
    store.remove_listener(broken)
    store.commit("app.db", PAGE, 2, {2: page(2)})
    assert seen[-1] == (3, 3)


def test_bad_transactions_change_nothing(store: Store) -> None:
    store.commit("app.db", PAGE, 2, {1: header_page(), 2: page(1)})
    before = store.position("app.db")
    with pytest.raises(ValueError):
        store.commit("app.db", PAGE, 2, {3: page(2)})  # beyond the commit size
    with pytest.raises(ValueError):
        store.commit("app.db", PAGE, 2, {2: b"short"})
    with pytest.raises(StoreError, match="every page"):
        store.commit("app.db", 1024, 2, {1: header_page(1024)})  # page size change, partial
    assert store.position("app.db") == before
    store.commit("app.db", PAGE, 2, {2: page(3)})
    assert store.position("app.db")[0] == 2  # type: ignore[index]


def test_page_size_change_with_every_page(store: Store) -> None:
    store.commit("app.db", PAGE, 2, {1: header_page(), 2: page(1)})
    full = {1: header_page(1024), 2: page(5, 1024), 3: page(6, 1024)}
    store.commit("app.db", 1024, 3, full)
    image = store.replay("app.db")
    assert image == b"".join(full.values())
    assert store.position("app.db") == (2, database_checksum(image, 1024))


@pytest.mark.parametrize("how", ["write", "closed"])
def test_failed_append_leaves_state_unchanged(
    store: Store, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    images = random_history(store, "app.db", 5)
    log_path = Path(store.logs_dir) / "app.db.log"
    before = store.position("app.db")
    state = store._dbs["app.db"]
    size = state.log.size
    records = log_path.read_bytes()[:size]
    if how == "write":
        real_pwrite = os.pwrite

        def enospc(fd: int, data: bytes, offset: int) -> int:
            real_pwrite(fd, bytes(data)[:100], offset)  # a partial record reaches the file
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "pwrite", enospc)
        with pytest.raises(OSError):
            store.commit("app.db", PAGE, 9, {9: page(99)})
        monkeypatch.undo()
    else:
        old_log = state.log
        old_log.close()
        with pytest.raises(LogClosedError):
            store.commit("app.db", PAGE, 9, {9: page(99)})
        state.log = TransactionLog.open(log_path)
    assert store.position("app.db") == before
    data = log_path.read_bytes()
    assert data[:size] == records and not any(data[size:])  # no partial record
    # The in-memory hashes were not touched: the next commit chains correctly.
    store.commit("app.db", PAGE, 9, {9: page(100)})
    image = Model()
    image.image[:] = images[-1]
    expected = image.commit({9: page(100)}, 9)
    assert store.position("app.db") == (6, database_checksum(expected, PAGE))
    assert store.replay("app.db") == expected


def test_sync_from_threads_while_committing(store: Store) -> None:
    store.commit("app.db", PAGE, 1, {1: header_page()})
    stop = threading.Event()
    errors: list[BaseException] = []

    def syncer() -> None:
        try:
            while not stop.is_set():
                store.sync("app.db")
                store.position("app.db")
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    thread = threading.Thread(target=syncer)
    thread.start()
    try:
        images = random_history(store, "app.db", 100)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert store.replay("app.db", 1) == header_page()
    assert store.replay("app.db") == images[-1]
    store.sync("nothing.db")  # unknown database: nothing to do


# ------------------------------------------------------------------ drop, rename

def test_drop_then_recreate_keeps_numbering(store: Store, tmp_path: Path) -> None:
    images = random_history(store, "app.db", 3)
    store.drop("app.db")
    last = list(store.read("app.db"))[-1]
    assert last.dropped and last.txid == 4 and last.post_checksum == 0
    assert last.pre_checksum == database_checksum(images[-1], PAGE)
    assert store.position("app.db") == (4, 0)
    store.drop("app.db")  # already dropped: no second record
    assert store.position("app.db") == (4, 0)
    store.commit("app.db", PAGE, 1, {1: header_page(fill=7)})
    first = list(store.read("app.db", 5))
    assert [t.txid for t in first] == [5] and first[0].pre_checksum == 0
    assert store.replay("app.db", 4) == b""
    assert store.replay("app.db") == header_page(fill=7)
    store.drop("never.db")  # never committed: nothing to record
    assert store.position("never.db") is None
    # Numbering survives a restart too.
    store.close()
    again = Store(tmp_path / ".pylitefs", "node-1")
    again.load("app.db", header_page(fill=7))
    again.drop("app.db")
    again.commit("app.db", PAGE, 1, {1: header_page()})
    assert again.position("app.db")[0] == 7  # type: ignore[index]
    again.close()


def test_rename(store: Store) -> None:
    images = random_history(store, "a.db", 4)
    seen: list[Transaction] = []
    store.add_listener(seen.append)
    store.rename("a.db", "b.db")
    # The old name's drop, then the new name's last transaction (its new history).
    assert [(t.db, t.txid, t.dropped) for t in seen] == [("a.db", 5, True), ("b.db", 4, False)]
    assert seen[1].post_checksum == store.position("b.db")[1]  # type: ignore[index]
    assert store.position("a.db") == (5, 0)
    txns = list(store.read("b.db"))
    assert [t.txid for t in txns] == [1, 2, 3, 4] and {t.db for t in txns} == {"b.db"}
    assert store.replay("b.db") == images[-1]
    store.commit("b.db", PAGE, 1, {1: header_page(fill=1)})
    assert store.replay("b.db") == header_page(fill=1)
    assert store.position("b.db")[0] == 5  # type: ignore[index]
    # Rename over an existing database replaces its log.
    store.commit("c.db", PAGE, 1, {1: header_page(fill=2)})
    store.rename("c.db", "b.db")
    assert store.replay("b.db") == header_page(fill=2)
    assert store.position("b.db")[0] == 1  # type: ignore[index]
    assert store.position("c.db") == (2, 0)
    assert sorted(store.databases()) == ["a.db", "b.db", "c.db"]
    assert not [n for n in os.listdir(store.logs_dir) if not n.endswith(".log")]


def test_rename_of_an_unknown_file_over_a_database_drops_it(store: Store) -> None:
    store.commit("b.db", PAGE, 1, {1: header_page()})
    store.rename("tmp-file", "b.db")
    assert store.position("b.db") == (2, 0)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x\0y"])
def test_bad_names(store: Store, name: str) -> None:
    with pytest.raises(StoreError):
        store.commit(name, PAGE, 1, {1: header_page()})


# ------------------------------------------------------------------ load

def sqlite_image(path: Path, rows: int) -> bytes:
    conn = sqlite3.connect(path)
    conn.execute("create table if not exists t (x)")
    conn.executemany("insert into t values (?)", [(os.urandom(300),) for _ in range(rows)])
    conn.commit()
    conn.close()
    return path.read_bytes()


def test_load_with_an_empty_log_logs_a_snapshot(tmp_path: Path) -> None:
    image = sqlite_image(tmp_path / "real.db", 100)
    store = Store(tmp_path / ".pylitefs", "n1")
    assert store.load("real.db", lambda: image) == (1, database_checksum(image, PAGE))
    (snap,) = store.read("real.db")
    assert snap.txid == 1 and snap.pre_checksum == 0 and snap.commit_size == len(image) // PAGE
    assert store.replay("real.db") == image
    store.close()
    # Restart: the log matches the database.
    store = Store(tmp_path / ".pylitefs", "n1")
    assert store.databases() == ["real.db"]
    assert store.load("real.db", image) == (1, database_checksum(image, PAGE))
    store.commit("real.db", PAGE, 1, {1: image[:PAGE]})
    assert store.replay("real.db") == image[:PAGE]
    store.close()


def test_load_matching_log(tmp_path: Path) -> None:
    store = Store(tmp_path / ".pylitefs", "n1")
    images = random_history(store, "app.db", 10)
    store.close()
    store = Store(tmp_path / ".pylitefs", "n1")
    with pytest.raises(StoreError, match="load"):
        store.commit("app.db", PAGE, 1, {1: header_page()})  # not loaded yet
    position = store.load("app.db", images[-1])
    assert position is not None and position[0] == 10
    images.append(images[-1][:PAGE])
    store.commit("app.db", PAGE, 1, {1: images[-1][:PAGE]})
    assert store.replay("app.db") == images[-1]
    store.close()


def test_load_mismatch_raises_and_reset_snapshots(tmp_path: Path) -> None:
    store = Store(tmp_path / ".pylitefs", "n1")
    images = random_history(store, "app.db", 3)
    store.close()
    other = header_page(fill=0xEE) + page(1)
    store = Store(tmp_path / ".pylitefs", "n1")
    with pytest.raises(ChecksumMismatchError) as info:
        store.load("app.db", other)
    err = info.value
    assert err.db == "app.db" and err.txid == 3
    assert err.logged == database_checksum(images[-1], PAGE)
    assert err.actual == database_checksum(other, PAGE)
    assert "app.db" in str(err) and f"{err.logged:016x}" in str(err)
    with pytest.raises(StoreError):
        store.commit("app.db", PAGE, 1, {1: header_page()})  # still refused
    assert store.load("app.db", other, reset=True) == (4, database_checksum(other, PAGE))
    assert store.replay("app.db") == other
    store.close()


def test_load_missing_database(tmp_path: Path) -> None:
    store = Store(tmp_path / ".pylitefs", "n1")
    random_history(store, "app.db", 2)
    store.drop("app.db")
    random_history(store, "live.db", 2)
    store.close()
    store = Store(tmp_path / ".pylitefs", "n1")
    assert store.load("app.db", b"") == (3, 0)  # dropped, and the file is gone: fine
    assert store.load("none.db", b"") is None
    with pytest.raises(ChecksumMismatchError):
        store.load("live.db", b"")  # the log says it exists
    assert store.load("live.db", b"", reset=True) == (3, 0)
    with pytest.raises(StoreError, match="not a database"):
        store.load("junk.db", b"junk" * 1024)
    store.close()


def test_load_cuts_a_torn_tail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path / ".pylitefs", "n1")
    images = random_history(store, "app.db", 5)
    size = store._dbs["app.db"].log.size
    store.close()
    log_path = tmp_path / ".pylitefs" / "logs" / "app.db.log"
    with log_path.open("r+b") as f:
        f.truncate(size - 10)
    store = Store(tmp_path / ".pylitefs", "n1")
    with caplog.at_level(logging.WARNING):
        # The database itself is at TXID 5 but the log lost it: a mismatch.
        with pytest.raises(ChecksumMismatchError):
            store.load("app.db", images[-1])
    assert any("torn" in r.getMessage() for r in caplog.records)
    assert store.load("app.db", images[-2]) == (4, database_checksum(images[-2], PAGE))
    store.close()


# ------------------------------------------------------------------ retention

def test_store_retention(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / ".pylitefs", "n1", retention_seconds=5, clock=clock)
    images = random_history(store, "app.db", 20)
    # Commit n was at t0 + n s; compaction runs at t0 + 21 s and keeps 16 s and later.
    assert store.compact() == {"app.db": 15}
    txns = list(store.read("app.db"))
    assert [t.txid for t in txns] == [16, 17, 18, 19, 20]
    with pytest.raises(TxidUnavailableError):
        store.read("app.db", 1)
    with pytest.raises(StoreError, match="starts at TXID 16"):
        store.replay("app.db")
    store.commit("app.db", PAGE, 1, {1: header_page()})
    assert store.position("app.db")[0] == 21  # type: ignore[index]
    assert images
    store.close()
