"""The HTTP server in-process over real loopback TCP: limits, the admin token, uploads and /events."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from pylitefs.events import EventHub
from pylitefs.http import HttpServer, Upload

TOKEN = b"s3cret"


class Api:
    def __init__(self, spool: str) -> None:
        self.hub = EventHub(queue_size=8)
        self.uploaded: list[tuple[dict[str, str], bytes, str]] = []
        self.spool = spool

    async def handoff(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        return 200, {"handoff": params.get("to")}

    async def run(self, params: dict[str, str], path: str) -> tuple[int, dict[str, Any]]:
        with open(path, "rb") as f:
            self.uploaded.append((params, f.read(), path))
        return 200, {"imported": params["name"]}

    def check(self, params: dict[str, str]) -> tuple[int, dict[str, Any]] | None:
        return (409, {"error": "not the primary"}) if params.get("name") == "busy.db" else None


@pytest.fixture
async def server(tmp_path: Any) -> AsyncIterator[tuple[Api, int]]:
    api = Api(str(tmp_path / "spool"))
    http = HttpServer(lambda: {"node": "n1"}, lambda: {"role": "primary"}, lambda: None,
                      admin={("POST", "/handoff"): api.handoff}, admin_token=TOKEN,
                      uploads={"/import": Upload(api.check, lambda: api.spool, api.run)},
                      metrics=lambda: "# TYPE x gauge\nx 1\n",
                      events=(api.hub, lambda: {"type": "init"}))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(http.serve, "127.0.0.1", 0)
        yield api, listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                out += chunk
        return out


async def test_huge_headers_get_431_and_the_server_keeps_serving(server: tuple[Api, int]) -> None:
    _, port = server
    huge = b"GET /info HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000  # a head that does not end
    assert (await exchange(port, huge)).startswith(b"HTTP/1.1 431")
    # h11 bounds only an incomplete head: this one (64-128 KiB) may arrive complete in the last read
    complete = b"GET /info HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert (await exchange(port, complete)).startswith(b"HTTP/1.1 431")
    assert (await exchange(port, b"GET /info HTTP/1.1\r\nBad header\r\n\r\n")).startswith(b"HTTP/1.1 400")
    ok = await exchange(port, b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200") and b'"node": "n1"' in ok
    metrics = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"Content-Type: text/plain; version=0.0.4" in metrics and metrics.endswith(b"x 1\n")


async def test_admin_calls_need_the_token(server: tuple[Api, int]) -> None:
    _, port = server
    for auth in (b"", b"Authorization: Bearer wrong\r\n", b"Authorization: s3cret\r\n"):
        got = await exchange(port, b"POST /handoff HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + auth + b"\r\n")
        assert got.startswith(b"HTTP/1.1 401") and b"Authorization: Bearer <admin token>" in got
    got = await exchange(port, b"GET /handoff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 405") and b"Allow: POST" in got
    got = await exchange(port, b"POST /handoff?to=n2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                               b"Authorization: Bearer s3cret\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200") and b'"handoff": "n2"' in got


async def test_an_upload_is_spooled_checked_first_and_removed(server: tuple[Api, int]) -> None:
    api, port = server
    body = os.urandom(3 << 20)
    head = (b"POST /import?name=a.db HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    got = await exchange(port, head + body)
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    (params, data, path), = api.uploaded
    assert params == {"name": "a.db"} and data == body and not os.path.exists(path)
    # Refused before the body is read (the answer arrives although the body keeps coming), nothing run.
    for name, token, status in ((b"busy.db", b"s3cret", b"409"), (b"a.db", b"wrong", b"401")):
        got = await exchange(port, b"POST /import?name=" + name + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                             + token + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert got.startswith(b"HTTP/1.1 " + status)
    assert len(api.uploaded) == 1 and os.listdir(api.spool) == []


def ndjson(received: bytes) -> list[dict[str, Any]]:
    """The JSON lines of a chunked response (chunk-size lines are hex: they never start with '{')."""
    body = received.split(b"\r\n\r\n", 1)[-1]
    return [json.loads(line.strip()) for line in body.split(b"\n") if line.startswith(b"{")]


async def read_lines(stream: trio.SocketStream, count: int) -> list[dict[str, Any]]:
    buf = b""
    with trio.fail_after(10):
        while len(lines := ndjson(buf) if buf.endswith(b"\n") else []) < count:
            buf += await stream.receive_some(65536)
    return lines


async def subscribe(api: Api, port: int) -> trio.SocketStream:
    """A new `/events` connection, once the server has subscribed it and no earlier client is left."""
    with trio.fail_after(5):
        while len(api.hub):  # an earlier client is unsubscribed once the server sees it gone
            await trio.sleep(0.01)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        while len(api.hub) == 0:
            await trio.sleep(0.01)
    return stream


async def test_events_arrive_in_order_and_a_slow_client_is_cut_off(server: tuple[Api, int]) -> None:
    api, port = server
    async with await subscribe(api, port) as stream:
        for i in range(5):
            api.hub.publish({"type": "tx", "txid": i})
        lines = await read_lines(stream, 6)
        assert lines == [{"type": "init"}] + [{"type": "tx", "txid": i} for i in range(5)]

    # A client that does not read: its queue (8 events) overflows once the socket buffers are full.
    async with await subscribe(api, port) as slow:
        pad = "x" * 10_000
        with trio.fail_after(20):
            i = 0
            while len(api.hub):
                api.hub.publish({"type": "tx", "txid": i, "pad": pad})
                i += 1
                await trio.sleep(0)
        received = b""
        with trio.fail_after(20):  # the server closes the connection: the stream ends
            while chunk := await slow.receive_some(1 << 20):
                received += chunk
        events = ndjson(received[:received.rindex(b"\n") + 1])
        txids = [e["txid"] for e in events if e["type"] == "tx"]
        assert txids == list(range(len(txids))) and len(txids) < i  # a prefix, in order
