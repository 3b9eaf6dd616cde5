"""The store on a replica: appending the primary's transactions, snapshots (reset), forgetting."""

from __future__ import annotations

from pathlib import Path

import pytest

from replication.log import TransactionLog
from replication.store import DivergedError, Store
from replication.txn import Transaction
from tests.unit.test_store import Clock, header_page, page


def primary_history(tmp_path: Path, n: int) -> list[Transaction]:
    """`n` transactions of app.db as a primary's store logs them."""
    store = Store(tmp_path / "primary", node_id="p", clock=Clock())
    store.load("app.db", b"")
    store.commit("app.db", 4096, 2, {1: header_page(), 2: page(0)})
    for i in range(1, n):
        store.commit("app.db", 4096, 2 + i % 3, {2: page(i), 2 + i % 3: page(100 + i)})
    txns = list(store.read("app.db"))
    store.close()
    return txns


@pytest.fixture
def replica(tmp_path: Path) -> Store:
    store = Store(tmp_path / "replica", node_id="r", clock=Clock())
    yield store
    store.close()


def test_append_follows_the_primary_exactly(tmp_path: Path, replica: Store) -> None:
    txns = primary_history(tmp_path, 6)
    replica.load("app.db", b"")
    for txn in txns:
        replica.append(txn)
    assert replica.position("app.db") == (txns[-1].txid, txns[-1].post_checksum)
    assert [t.txid for t in replica.read("app.db")] == [t.txid for t in txns]


@pytest.mark.parametrize("damage", ["gap", "pre", "post"])
def test_append_refuses_what_does_not_continue_the_history(tmp_path: Path, replica: Store, damage: str) -> None:
    txns = primary_history(tmp_path, 4)
    replica.load("app.db", b"")
    replica.append(txns[0])
    bad = txns[2] if damage == "gap" else txns[1]
    if damage == "pre":
        bad = Transaction(**{**_fields(bad), "pre_checksum": bad.pre_checksum ^ 1})
    elif damage == "post":
        bad = Transaction(**{**_fields(bad), "post_checksum": bad.post_checksum ^ 1})
    with pytest.raises(DivergedError):
        replica.append(bad)
    assert replica.position("app.db") == (1, txns[0].post_checksum)  # nothing changed
    replica.append(txns[1])  # and the right one still fits


def test_reset_replaces_the_history_with_a_snapshot(tmp_path: Path, replica: Store) -> None:
    txns = primary_history(tmp_path, 3)
    replica.load("app.db", b"")
    replica.append(txns[0])
    snapshot = Transaction(db="app.db", txid=40, page_size=4096, commit_size=2,
                           pages={1: header_page(), 2: page(7)}, timestamp_ns=1, node_id="p",
                           pre_checksum=0, post_checksum=0)
    with pytest.raises(DivergedError):  # post-checksum wrong
        replica.reset(snapshot)
    from replication.checksum import database_checksum
    good = Transaction(**{**_fields(snapshot), "post_checksum": database_checksum(header_page() + page(7), 4096)})
    replica.reset(good)
    assert replica.position("app.db") == (40, good.post_checksum)
    follow = Transaction(db="app.db", txid=41, page_size=4096, commit_size=2, pages={2: page(8)},
                         timestamp_ns=2, node_id="p", pre_checksum=good.post_checksum,
                         post_checksum=database_checksum(header_page() + page(8), 4096))
    replica.append(follow)
    replica.close()
    reopened = TransactionLog.open(tmp_path / "replica" / "logs" / "app.db.log", readonly=True)
    assert [t.txid for t in reopened.read()] == [40, 41]


def test_forget_removes_the_log(tmp_path: Path, replica: Store) -> None:
    txns = primary_history(tmp_path, 2)
    replica.load("app.db", b"")
    replica.append(txns[0])
    replica.forget("app.db")
    assert "app.db" not in replica.databases()
    assert replica.position("app.db") is None


def _fields(txn: Transaction) -> dict:
    return {f: getattr(txn, f) for f in Transaction.__dataclass_fields__} | {"pages": dict(txn.pages)}
