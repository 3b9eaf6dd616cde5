"""election.etcd.EtcdClient against a real etcd (pylitefs/etcdserver.py), and the test relay."""

from __future__ import annotations

import functools
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
import pytest

from election.etcd import EtcdClient, EtcdError, LeaseLost, PrimaryRecord
from pylitefs.cluster import free_port, wait_for
from pylitefs.etcdserver import EtcdServer
from tests.relay import Relay

T = TypeVar("T")


@pytest.fixture
def connect(etcd: EtcdServer, etcd_clients: Callable[..., EtcdClient]) -> Callable[..., EtcdClient]:
    """Makes EtcdClients of the fixture's etcd (TTL 1 s, 1 s deadline); closed at teardown."""
    return functools.partial(etcd_clients, etcd)


def answer(call: Callable[[], T]) -> T | None:
    """call()'s result, or None while etcd cannot answer (for wait_for)."""
    try:
        return call()
    except EtcdError:
        return None


class Changes:
    """Counts watch callbacks; wait() for the next one."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait(self, after: int, timeout: float = 5.0) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: self.count > after, timeout):
                raise AssertionError(f"no watch callback after #{after} within {timeout}s")
            return self.count


def campaign(client: EtcdClient, hostname: str) -> PrimaryRecord | None:
    return client.campaign(hostname, f"http://{hostname}:20202", "cluster", client.grant())


# -- leases ---------------------------------------------------------------------------------


def test_grant_refresh_revoke(connect: Callable[..., EtcdClient]) -> None:
    client = connect(ttl=2.5)
    lease = client.grant()
    assert client.refresh(lease) == 3.0  # whole seconds, rounded up
    client.revoke(lease)
    with pytest.raises(LeaseLost):
        client.refresh(lease)
    client.revoke(lease)  # already gone: no error


def test_lease_expiry_removes_the_key(connect: Callable[..., EtcdClient]) -> None:
    client = connect(ttl=1)
    mine = campaign(client, "a")
    assert mine is not None
    wait_for(lambda: answer(client.primary) is None and answer(lambda: client.refresh(mine.lease_id)) is None,
             timeout=5, what="the lease to expire")
    with pytest.raises(LeaseLost):
        client.refresh(mine.lease_id)
    with pytest.raises(LeaseLost):
        client.campaign("a", "http://a:20202", "cluster", mine.lease_id)


# -- the primary key ------------------------------------------------------------------------


def test_campaign_won_then_lost(connect: Callable[..., EtcdClient]) -> None:
    a, b = connect(), connect()
    assert a.primary() is None
    won = campaign(a, "a")
    assert won == PrimaryRecord("a", "http://a:20202", "cluster", won.lease_id, won.term)
    assert campaign(b, "b") is None
    assert b.primary() == won


def test_term_grows_with_every_put(connect: Callable[..., EtcdClient]) -> None:
    client = connect(ttl=5)
    first = campaign(client, "a")
    assert first is not None
    second = client.claim(first, "b", "http://b:20202", "cluster")
    assert second is not None and second.term > first.term
    assert client.primary() == second
    client.resign(second)
    third = campaign(client, "c")
    assert third is not None and third.term > second.term


def test_claim_with_a_stale_record_fails(connect: Callable[..., EtcdClient]) -> None:
    client = connect(ttl=5)
    first = campaign(client, "a")
    assert first is not None
    second = client.claim(first, "b", "http://b:20202", "cluster")
    assert second is not None
    assert client.claim(first, "c", "http://c:20202", "cluster") is None
    assert client.primary() == second


def test_claim_keeps_the_lease(connect: Callable[..., EtcdClient]) -> None:
    client = connect(ttl=5)
    first = campaign(client, "a")
    assert first is not None
    handed = client.claim(first, "b", "http://b:20202", "other")
    assert handed == PrimaryRecord("b", "http://b:20202", "other", first.lease_id, handed.term)
    client.revoke(first.lease_id)
    assert client.primary() is None


def test_resign_deletes_only_my_key(connect: Callable[..., EtcdClient]) -> None:
    a, b = connect(ttl=5), connect(ttl=5)
    old = campaign(a, "a")
    assert old is not None
    a.revoke(old.lease_id)  # as if a's lease had expired
    new = campaign(b, "b")
    assert new is not None
    a.resign(old)  # stale: must not touch b's key (and a's lease is already gone)
    assert b.primary() == new
    b.resign(new)
    assert b.primary() is None
    with pytest.raises(LeaseLost):
        b.refresh(new.lease_id)


# -- watch ----------------------------------------------------------------------------------


def test_watch_fires_on_put_and_delete(connect: Callable[..., EtcdClient]) -> None:
    watcher, writer = connect(), connect(ttl=5)
    changes = Changes()
    cancel = watcher.watch(changes)
    try:
        mine = campaign(writer, "a")  # watch() returned: the watch is established
        assert mine is not None
        seen = changes.wait(0)
        claimed = writer.claim(mine, "b", "http://b:20202", "cluster")
        assert claimed is not None
        seen = changes.wait(seen)
        writer.resign(claimed)
        changes.wait(seen)
    finally:
        cancel()
    after = changes.count
    campaign(writer, "c")
    time.sleep(0.3)  # nothing to wait for: a callback after cancel() would be the bug
    assert changes.count == after
    cancel()  # idempotent


def test_watch_resumes_after_etcd_restart(etcd: EtcdServer, connect: Callable[..., EtcdClient]) -> None:
    watcher, writer = connect(), connect(ttl=5)
    changes = Changes()
    cancel = watcher.watch(changes)
    try:
        campaign(writer, "a")
        seen = changes.wait(0)
        etcd.stop()
        seen = changes.wait(seen)  # the break is reported: callers re-read primary()
        etcd.start()
        seen = changes.wait(seen)  # so is the re-created watch (changes may have been missed)
        current = wait_for(lambda: answer(writer.primary), timeout=5, what="etcd to answer again")
        assert writer.claim(current, "b", "http://b:20202", "cluster") is not None
        changes.wait(seen)
    finally:
        cancel()


# -- cluster id, nodes, posts ---------------------------------------------------------------


def test_cluster_id_is_created_once(connect: Callable[..., EtcdClient]) -> None:
    a, b = connect(), connect()
    created = a.cluster_id("")
    assert re.fullmatch(r"[0-9a-f]{16}", created)
    assert a.cluster_id("") == created
    assert b.cluster_id("0123456789abcdef") == created
    other = connect(prefix="/other/")
    assert other.cluster_id("0123456789abcdef") == "0123456789abcdef"


def test_register_and_nodes(connect: Callable[..., EtcdClient]) -> None:
    client = connect(ttl=5)
    lease_a, lease_b = client.grant(), client.grant()
    client.register("a", {"url": "http://a:20202", "candidate": True}, lease_a)
    client.register("b", {"url": "http://b:20202", "candidate": False}, lease_b)
    assert client.nodes() == {"a": {"url": "http://a:20202", "candidate": True},
                              "b": {"url": "http://b:20202", "candidate": False}}
    client.revoke(lease_a)
    assert list(client.nodes()) == ["b"]
    with pytest.raises(LeaseLost):
        client.register("a", {}, lease_a)


def test_post_and_posts(connect: Callable[..., EtcdClient]) -> None:
    client = connect(ttl=5)
    lease = client.grant()
    client.post("handoff/a", {"to": "b"}, lease)
    client.post("handoff/c", {"to": "d"}, lease)
    client.post("vote/a", {"for": "a"}, lease)
    assert client.posts("handoff/") == {"handoff/a": {"to": "b"}, "handoff/c": {"to": "d"}}
    assert set(client.posts("")) == {"handoff/a", "handoff/c", "vote/a"}
    client.delete_post("handoff/a")
    client.delete_post("handoff/a")  # absent: no error
    assert client.posts("handoff/") == {"handoff/c": {"to": "d"}}
    client.revoke(lease)
    assert client.posts("") == {}


# -- failures -------------------------------------------------------------------------------


def test_next_endpoint_after_a_dead_one(etcd: EtcdServer, connect: Callable[..., EtcdClient]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = connect(endpoints=(dead, etcd.endpoint))
    with pytest.raises(EtcdError, match=re.escape(dead)):
        client.primary()
    assert client.primary() is None  # the next call went to the second endpoint
    assert client.cluster_id("abc") == "abc"


def test_errors_when_etcd_is_stopped(etcd: EtcdServer, connect: Callable[..., EtcdClient]) -> None:
    client = connect()
    mine = campaign(client, "a")
    assert mine is not None
    etcd.stop()
    calls: list[Callable[[], object]] = [
        client.grant, lambda: client.refresh(mine.lease_id), lambda: client.revoke(mine.lease_id),
        client.primary, lambda: campaign(client, "b"), lambda: client.claim(mine, "b", "u", "c"),
        lambda: client.resign(mine), lambda: client.register("a", {}, mine.lease_id), client.nodes,
        lambda: client.post("p", {}, mine.lease_id), lambda: client.posts(""), lambda: client.delete_post("p"),
        lambda: client.cluster_id(""),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(EtcdError, match=re.escape(etcd.endpoint)) as caught:
            call()
        assert not isinstance(caught.value, grpc.RpcError)
        assert type(caught.value) is EtcdError
        assert time.monotonic() - started < 1.5
    etcd.start()
    assert wait_for(lambda: answer(client.primary), timeout=5, what="etcd to answer again") == mine


def test_relay_cut_fails_calls_within_the_deadline(etcd: EtcdServer, connect: Callable[..., EtcdClient]) -> None:
    relay = Relay("127.0.0.1", etcd.client_port)
    try:
        client = connect(endpoints=(relay.endpoint,), timeout=0.5)
        assert client.cluster_id("abc") == "abc"
        relay.cut()
        for _ in range(2):  # the open connection is closed, then new ones hang
            started = time.monotonic()
            with pytest.raises(EtcdError, match=re.escape(relay.endpoint)):
                client.primary()
            assert time.monotonic() - started < 1.5
        relay.restore()
        assert wait_for(lambda: answer(lambda: client.cluster_id("")), timeout=5, what="the relay") == "abc"
    finally:
        relay.close()


# -- the relay itself -----------------------------------------------------------------------


@pytest.fixture
def echo() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def roundtrip(port: int, data: bytes, timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return sock.recv(4096)


def test_relay_forwards_cuts_and_restores(echo: int) -> None:
    relay = Relay("127.0.0.1", echo)
    try:
        assert roundtrip(relay.port, b"hello") == b"hello"
        open_conn = socket.create_connection(("127.0.0.1", relay.port), timeout=2)
        open_conn.sendall(b"x")
        assert open_conn.recv(10) == b"x"
        relay.cut()
        assert open_conn.recv(10) == b""  # closed by the cut
        open_conn.close()
        held = socket.create_connection(("127.0.0.1", relay.port), timeout=0.3)
        held.sendall(b"lost?")
        with pytest.raises(TimeoutError):  # blackholed, not refused
            held.recv(10)
        relay.restore()
        held.settimeout(2)
        assert held.recv(10) == b"lost?"  # the held connection is forwarded after restore
        held.close()
        assert roundtrip(relay.port, b"again") == b"again"
    finally:
        relay.close()
    with pytest.raises(OSError):
        roundtrip(relay.port, b"closed", timeout=0.5)
