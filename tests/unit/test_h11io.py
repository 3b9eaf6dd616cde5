"""The connection loop the API port and the proxy share, over real loopback TCP with a small head limit."""

from __future__ import annotations

import functools
from typing import Any

import h11
import pytest
import trio

from pylitefs.h11io import Limits, Peer, serve_connection, serve_tcp
from tests.unit.test_http_api import exchange

LIMITS = Limits(max_head=1024, head_timeout=5.0, linger_bytes=1 << 20, linger_seconds=1.0)


async def ok(stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, peer: Peer) -> bool:
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                          + conn.send(h11.EndOfMessage()))
    return True


async def answer_error(stream: trio.SocketStream, conn: h11.Connection, status: int, payload: dict[str, Any]) -> None:
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
        ("Content-Length", "0"), ("Connection", "close")])) + conn.send(h11.EndOfMessage()))


@pytest.mark.parametrize("size, status", [(500, b"200"), (4000, b"431"), (100_000, b"431")])
async def test_a_head_over_the_limit_gets_431_even_when_it_arrives_complete(
        nursery: trio.Nursery, size: int, status: bytes) -> None:
    """4000 bytes arrive in one read, complete: h11 itself bounds only an incomplete head."""
    connection = functools.partial(serve_connection, handle=ok, answer_error=answer_error, limits=LIMITS,
                                   what="test")
    listeners = await nursery.start(functools.partial(serve_tcp, connection, "127.0.0.1", 0, max_connections=4,
                                                      what="test"))
    port = listeners[0].socket.getsockname()[1]
    head = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    assert (await exchange(port, head)).startswith(b"HTTP/1.1 " + status)
