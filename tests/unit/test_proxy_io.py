"""ProxyServer over real loopback sockets, with a stand-in node and an h11 upstream (no FUSE).

The upstream plays both the primary's HTTP API (`/info`) and the primary's
proxy, so a "replica" proxy forwards to it: bodies must stream both ways
(each side waits for the other's first chunk before sending the rest, which
deadlocks a proxy that holds whole bodies), headers pass with the forwarded
ones added and the hop-by-hop ones dropped.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import h11
import trio

from election.elector import LeaderInfo
from pylitefs.config import ProxyConfig
from pylitefs.proxy import ProxyServer

CHUNK = 64 * 1024


class FakeReplica:
    connected = True


class FakeElector:
    def __init__(self, url: str) -> None:
        self.url = url

    def info(self) -> LeaderInfo:
        return LeaderInfo("primary", self.url, 3)


class FakeNode:
    """What ProxyServer reads of a Node."""

    def __init__(self, role: str, lease_url: str) -> None:
        self.role = role
        self.replica = FakeReplica()
        self.elector = FakeElector(lease_url)
        self.positions: dict[str, tuple[int, int]] = {}

    def position(self, db: str) -> tuple[int, int] | None:
        return self.positions.get(db)

    async def wait_position(self, db: str, txid: int, timeout: float) -> bool:
        return (self.positions.get(db) or (0, 0))[0] >= txid

    def lag_ms(self) -> int:
        return 0


async def next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    """`conn`'s next h11 event, reading from `stream` as it needs."""
    while (ev := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await stream.receive_some(CHUNK))
    return ev


class Upstream:
    """`/info` like a primary's API; any other request: its body counted, a streamed response."""

    def __init__(self) -> None:
        self.port = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.got_first_chunk = trio.Event()
        self.may_finish = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            request = await next_event(conn, stream)
            if request.target == b"/info":
                body = json.dumps({"role": "primary", "proxy_url": f"http://127.0.0.1:{self.port}"}).encode()
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
                    ("Content-Length", str(len(body)))])) + conn.send(h11.Data(data=body))
                    + conn.send(h11.EndOfMessage()))
                return
            self.headers = list(request.headers)
            size = 0
            while isinstance(ev := await next_event(conn, stream), h11.Data):
                size += len(ev.data)
                self.got_first_chunk.set()
            await stream.send_all(conn.send(h11.Response(status_code=201, headers=[("X-Count", str(size))])))
            await stream.send_all(conn.send(h11.Data(data=b"a" * CHUNK)))
            await self.may_finish.wait()
            await stream.send_all(conn.send(h11.Data(data=b"b" * CHUNK)) + conn.send(h11.EndOfMessage()))


async def start(nursery: trio.Nursery, role: str) -> tuple[Upstream, FakeNode, int]:
    upstream = Upstream()
    listeners = await nursery.start(functools.partial(trio.serve_tcp, upstream.handle, 0, host="127.0.0.1"))
    upstream.port = listeners[0].socket.getsockname()[1]
    node = FakeNode(role, f"http://127.0.0.1:{upstream.port}")
    config = ProxyConfig(addr="127.0.0.1:0", target=f"127.0.0.1:{upstream.port}", db="app.db", client_timeout=5.0)
    proxy_listeners = await nursery.start(ProxyServer(config, node, name="node2").serve, "127.0.0.1", 0)
    return upstream, node, proxy_listeners[0].socket.getsockname()[1]


async def test_a_forwarded_write_streams_both_ways_with_forwarded_headers(nursery: trio.Nursery) -> None:
    upstream, _, port = await start(nursery, "replica")
    client = h11.Connection(h11.CLIENT)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(client.send(h11.Request(method="POST", target="/w", headers=[
                ("Host", "app.example"), ("Transfer-Encoding", "chunked"), ("X-Custom", "kept"),
                ("Connection", "keep-alive, x-hop"), ("X-Hop", "dropped")])))
            await stream.send_all(client.send(h11.Data(data=b"x" * CHUNK)))
            await upstream.got_first_chunk.wait()  # the first chunk arrived before the body ended
            for _ in range(15):
                await stream.send_all(client.send(h11.Data(data=b"x" * CHUNK)))
            await stream.send_all(client.send(h11.EndOfMessage()))
            response = await next_event(client, stream)
            assert response.status_code == 201 and (b"x-count", str(16 * CHUNK).encode()) in response.headers
            received = b""
            while len(received) < CHUNK:  # the first half arrives while the upstream holds the rest
                received += (await next_event(client, stream)).data
            upstream.may_finish.set()
            while isinstance(ev := await next_event(client, stream), h11.Data):
                received += ev.data
            assert received == b"a" * CHUNK + b"b" * CHUNK
    seen = dict(upstream.headers)
    assert seen[b"host"] == b"app.example" and seen[b"x-custom"] == b"kept"
    assert b"x-hop" not in seen and b"connection" not in seen
    assert seen[b"x-forwarded-for"] == b"127.0.0.1" and seen[b"x-forwarded-host"] == b"app.example"
    assert seen[b"forwarded"] == b'for=127.0.0.1;proto=http;host="app.example"'
    assert seen[b"pylitefs-forwarded"] == b"node2"


async def test_a_write_forwarded_once_is_not_forwarded_again(nursery: trio.Nursery) -> None:
    """Two replicas' proxies that each think the other is primary (a failover) cannot loop a request."""
    upstream, _, port = await start(nursery, "replica")
    client = h11.Connection(h11.CLIENT)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(client.send(h11.Request(method="POST", target="/", headers=[
                ("Host", "x"), ("Content-Length", "2"), ("Pylitefs-Forwarded", "node1")]))
                + client.send(h11.Data(data=b"ab")) + client.send(h11.EndOfMessage()))
            ev = await next_event(client, stream)
    assert ev.status_code == 503 and (b"retry-after", b"1") in ev.headers
    assert upstream.headers == []  # nothing reached the upstream


async def test_the_primary_stamps_writes_with_the_txid(nursery: trio.Nursery) -> None:
    upstream, node, port = await start(nursery, "primary")
    node.positions["app.db"] = (42, 7)
    upstream.may_finish.set()
    for method, stamped in (("POST", True), ("GET", False)):
        client = h11.Connection(h11.CLIENT)
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
                                      + client.send(h11.EndOfMessage()))
                ev = await next_event(client, stream)
        headers = dict(ev.headers)
        assert (headers.get(b"pylitefs-txid") == b"000000000000002a") is stamped
        assert (b"x-forwarded-for" in dict(upstream.headers)) is False  # the local app gets the request as sent
