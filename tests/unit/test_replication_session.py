"""Primary and replica sessions over real loopback TCP, without FUSE.

A primary `Store` fed with commits directly, its `PrimaryServer` behind the
node's `HttpServer`, and a `ReplicaClient` whose apply step writes into
in-memory images: the protocol logic (handshake, catch-up, live stream,
snapshots, forget, refusals) checked by positions and checksums.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from fs.formats.image import apply_pages
from pylitefs.http import HttpServer
from replication.checksum import database_checksum
from replication.primary import PrimaryServer
from replication.replica import ReplicaClient
from replication.store import Store
from replication.txn import Transaction
from tests.unit.test_store import Clock, header_page, page

SECRET = b"s3cret"


@dataclass
class Primary:
    store: Store
    server: PrimaryServer
    url: str

    def commit(self, db: str, pages: dict[int, bytes], size: int) -> None:
        self.store.commit(db, 4096, size, pages)


@dataclass
class Replica:
    store: Store
    client: ReplicaClient
    images: dict[str, bytearray] = field(default_factory=dict)


@pytest.fixture
async def primary(tmp_path: Path) -> AsyncIterator[Primary]:
    store = Store(tmp_path / "p", node_id="primary", clock=Clock())

    async def snapshot(db: str) -> tuple[bytes, tuple[int, int] | None]:
        last = store.last(db)
        if last is None or last.dropped:
            return b"", None
        return store.replay(db), store.position(db)

    server = PrimaryServer(store, node_id="primary", cluster_id="c1", secret=SECRET, term=1,
                           snapshot=snapshot, heartbeat_interval=0.05)
    http = HttpServer(lambda: {}, lambda: {}, lambda: server.serve)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(http.serve, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        yield Primary(store, server, f"http://127.0.0.1:{port}")
        nursery.cancel_scope.cancel()
    store.close()


def make_replica(tmp_path: Path, name: str, url: str, *, secret: bytes = SECRET, cluster: str = "") -> Replica:
    store = Store(tmp_path / name, node_id=name, clock=Clock())
    for db in store.databases():
        store.load(db, b"", cut=False, reset=True)
    images: dict[str, bytearray] = {}

    async def apply(db: str, txns: list[Transaction]) -> None:
        for txn in txns:
            if txn.dropped:
                images.pop(db, None)
            else:
                apply_pages(images.setdefault(db, bytearray()), txn.page_size, txn.commit_size, txn.pages)

    ids = [cluster]
    client = ReplicaClient(store, node_id=name, secret=secret, primary_url=url, apply=apply,
                           cluster_id=lambda: ids[0], adopt_cluster_id=lambda v: ids.__setitem__(0, v),
                           heartbeat_interval=0.05)
    return Replica(store, client, images)


async def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def in_sync(p: Primary, r: Replica, db: str) -> bool:
    pos = p.store.position(db)
    if pos is None or r.client.applied.get(db) != pos:
        return False
    return database_checksum(r.images[db], 4096) == pos[1]


async def test_catch_up_then_live(primary: Primary, tmp_path: Path) -> None:
    primary.commit("a.db", {1: header_page(), 2: page(1)}, 2)
    for i in range(20):
        primary.commit("a.db", {2: page(i), 3: page(100 + i)}, 3)
    replica = make_replica(tmp_path, "r1", primary.url)
    async with trio.open_nursery() as nursery:
        await nursery.start(replica.client.run)
        await wait_until(lambda: in_sync(primary, replica, "a.db"))
        primary.commit("b.db", {1: header_page(), 2: page(7)}, 2)
        for i in range(50):
            primary.commit("a.db", {3: page(1000 + i)}, 3)
        await wait_until(lambda: in_sync(primary, replica, "a.db") and in_sync(primary, replica, "b.db"))
        await wait_until(lambda: "r1" in primary.server.replicas
                         and primary.server.replicas["r1"].positions.get("a.db") == primary.store.position("a.db"))
        assert replica.client.primary == "primary" and replica.client.caught_up()
        nursery.cancel_scope.cancel()


async def test_a_diverged_replica_gets_a_snapshot_and_an_unknown_database_is_forgotten(
        primary: Primary, tmp_path: Path) -> None:
    primary.commit("a.db", {1: header_page(), 2: page(1)}, 2)
    for i in range(5):
        primary.commit("a.db", {2: page(i)}, 2)
    # The replica's own history of a.db (and a database the primary never had).
    other = Store(tmp_path / "r1", node_id="elsewhere", clock=Clock())
    other.commit("a.db", 4096, 2, {1: header_page(), 2: page(99)})
    other.commit("ghost.db", 4096, 2, {1: header_page(), 2: page(98)})
    other.close()
    replica = make_replica(tmp_path, "r1", primary.url)
    replica.images["ghost.db"] = bytearray(header_page() + page(98))
    async with trio.open_nursery() as nursery:
        await nursery.start(replica.client.run)
        await wait_until(lambda: in_sync(primary, replica, "a.db"))
        await wait_until(lambda: "ghost.db" not in replica.store.databases())
        assert "ghost.db" not in replica.images
        primary.commit("a.db", {2: page(50)}, 2)  # and it follows live from the snapshot on
        await wait_until(lambda: in_sync(primary, replica, "a.db"))
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("secret", "cluster"), [(b"wrong", ""), (SECRET, "other-cluster")])
async def test_wrong_secret_or_cluster_is_refused(primary: Primary, tmp_path: Path, secret: bytes, cluster: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    primary.commit("a.db", {1: header_page(), 2: page(1)}, 2)
    replica = make_replica(tmp_path, "r1", primary.url, secret=secret, cluster=cluster)
    good = make_replica(tmp_path, "r2", primary.url)
    async with trio.open_nursery() as nursery:
        await nursery.start(replica.client.run)
        await nursery.start(good.client.run)
        await wait_until(lambda: in_sync(primary, good, "a.db"))
        await wait_until(lambda: "refusing replica connection" in caplog.text)
        assert "a.db" not in replica.images and not replica.client.connected
        nursery.cancel_scope.cancel()


async def test_a_replica_without_the_secret_gets_nothing(primary: Primary, caplog: pytest.LogCaptureFixture) -> None:
    """A client that skips checking the primary's proof still cannot pass its own."""
    from replication.stream import open_upgraded
    from replication.wire import PROTOCOL_VERSION, Auth, Challenge, Hello, Refused, new_nonce

    primary.commit("a.db", {1: header_page(), 2: page(1)}, 2)
    stream = await open_upgraded(primary.url, 5)
    try:
        await stream.send(Hello(PROTOCOL_VERSION, "", "mallory", new_nonce(), ""))
        assert isinstance(await stream.receive(), Challenge)
        await stream.send(Auth(bytes(32), {}))
        answer = await stream.receive()
        assert isinstance(answer, Refused) and "authentication failed" in answer.reason
    finally:
        await stream.aclose()
    assert "mallory: authentication failed" in caplog.text


async def test_http_api_answers_get_head_and_refuses_garbage(primary: Primary) -> None:
    host, port = primary.url.removeprefix("http://").split(":")

    async def exchange(data: bytes) -> bytes:
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(data)
            out = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some(65536):
                    out += chunk
                    if data.startswith(b"HEAD") and b"\r\n\r\n" in out:
                        break
            return out

    got = await exchange(b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"{}\n")
    head = await exchange(b"HEAD /status HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")  # headers only
    assert (await exchange(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert (await exchange(b"\x16\x03\x01garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
    upgrade_missing = await exchange(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert upgrade_missing.startswith(b"HTTP/1.1 426")


async def test_a_deposed_primary_is_refused_and_close_ends_every_session(
        primary: Primary, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    primary.commit("a.db", {1: header_page(), 2: page(1)}, 2)
    stale = make_replica(tmp_path, "r1", primary.url)
    stale.client.min_term = 2  # etcd already showed term 2: the primary of term 1 is deposed
    good = make_replica(tmp_path, "r2", primary.url)
    async with trio.open_nursery() as nursery:
        await nursery.start(stale.client.run)
        await nursery.start(good.client.run)
        await wait_until(lambda: in_sync(primary, good, "a.db"))
        await wait_until(lambda: "older than the current term 2" in caplog.text)
        assert "a.db" not in stale.images and not stale.client.connected
        # The primary steps down: every session ends, no new one starts, nothing more is sent.
        primary.server.close()
        await wait_until(lambda: not good.client.connected and not primary.server.replicas)
        primary.commit("a.db", {2: page(2)}, 2)
        await trio.sleep(0.3)
        assert not good.client.connected and good.client.applied["a.db"][0] == 1
        nursery.cancel_scope.cancel()
