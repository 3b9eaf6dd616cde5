"""HTTP/1.1 server connections on trio with h11: what the API port (`pylitefs.http`) and the proxy share.

- `serve_tcp` listens and serves every connection in its own task, at most
  `max_connections` at once (a connection beyond is closed at once);
- `serve_connection` is a connection's loop and its one error boundary: it
  reads each request head (bounded in size, `431`, and in time), hands it to
  the server's handler, and goes on while both sides are done with the
  message. A malformed request gets its error answer (`400`, `431`) and the
  connection is read for a moment more, then closed. Nothing a client sends
  escapes it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11
import trio

log = logging.getLogger(__name__)

RECEIVE_SIZE = 1 << 16
#: What a connection may raise when the client (or its socket) goes away.
GONE = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError)


@dataclass(frozen=True)
class Peer:
    """The client's address; `str()` gives `ip:port`."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class Limits:
    """What a server allows one connection."""

    #: Largest request head (request line and headers), in bytes: `431` beyond.
    max_head: int
    #: Seconds a client may take to send a complete request head; then it is dropped.
    head_timeout: float
    #: After an error answer: at most this many bytes, for at most `linger_seconds`, are read and dropped
    #: so that closing does not reset the connection before the client has read the answer.
    linger_bytes: int
    linger_seconds: float


#: Answers one request: (stream, h11 connection, request, peer) -> whether the connection may go on.
Handler = Callable[[trio.SocketStream, h11.Connection, h11.Request, Peer], Awaitable[bool]]
#: Sends an error answer: (stream, h11 connection, HTTP status, JSON payload); closes the connection after.
ErrorAnswer = Callable[[trio.SocketStream, h11.Connection, int, dict[str, Any]], Awaitable[object]]


async def serve_tcp(connection: Callable[[trio.SocketStream], Awaitable[None]], host: str, port: int, *,
                    max_connections: int, what: str,
                    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on host:port (all interfaces when host is empty) and run `connection(stream)` for each
    connection, at most `max_connections` at once, until cancelled. `started` gives the listeners."""
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    slots = trio.Semaphore(max_connections)

    async def limited(stream: trio.SocketStream) -> None:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            log.warning("more than %d %s connections: closing a new one", max_connections, what)
            await stream.aclose()
            return
        try:
            await connection(stream)
        finally:
            slots.release()

    task_status.started(listeners)
    await trio.serve_listeners(limited, listeners)


async def serve_connection(stream: trio.SocketStream, handle: Handler, answer_error: ErrorAnswer,
                           limits: Limits, what: str) -> None:
    """Serve the requests of one connection with `handle` until it or the client ends it; close `stream`.

    Only cancellation escapes: a malformed request is answered with
    `answer_error` (its status: 400, 431, ...), a client that goes away ends
    the connection quietly, and any other error is logged with its traceback.
    """
    peer = peer_of(stream)
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
    try:
        while True:
            request = await read_request_head(stream, conn, limits, peer, what)
            if request is None:
                return
            if not await handle(stream, conn, request, peer):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        log.info("%s client %s sent a bad HTTP request: %s", what, peer, exc)
        try:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await answer_error(stream, conn, exc.error_status_hint or 400, {"error": f"bad request: {exc}"})
                await linger(stream, limits)
        except (h11.LocalProtocolError, *GONE):
            pass
    except GONE as exc:
        log.debug("%s client %s went away: %r", what, peer, exc)
    except Exception:  # one connection's bug must not stop the server for everyone
        log.exception("unexpected error serving %s client %s", what, peer)
    finally:
        try:
            await stream.aclose()
        except GONE:
            pass


def peer_of(stream: trio.SocketStream) -> Peer:
    """The address of the client at the other end of `stream` (`unknown:0` if the socket cannot say)."""
    try:
        ip, port = stream.socket.getpeername()[:2]
    except OSError:
        return Peer("unknown", 0)
    return Peer(str(ip), int(port))


async def read_request_head(stream: trio.SocketStream, conn: h11.Connection, limits: Limits, peer: Peer,
                            what: str) -> h11.Request | None:
    """The next request's head; None when the client closed, or sent no complete head within
    `limits.head_timeout`. Raises h11.RemoteProtocolError for a malformed head, with status 431 for one
    larger than `limits.max_head`."""
    with trio.move_on_after(limits.head_timeout):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(RECEIVE_SIZE)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None
            elif isinstance(event, h11.Request):
                # h11 bounds only an incomplete head: one that completes in the last read may be larger.
                if head_size(event) > limits.max_head:
                    raise h11.RemoteProtocolError("request head too large", 431)
                return event
            else:  # ConnectionClosed, or PAUSED
                return None
    log.info("%s client %s sent no complete request within %gs; closing", what, peer, limits.head_timeout)
    return None


def head_size(request: h11.Request) -> int:
    """About the size of a request head as sent (request line, headers, line ends)."""
    return len(request.method) + len(request.target) + 13 + sum(len(k) + len(v) + 4 for k, v in request.headers)


async def linger(stream: trio.SocketStream, limits: Limits) -> None:
    """After an answer that ends the connection: stop sending, and read (and drop) what the client still
    sends, at most `limits.linger_bytes` for at most `limits.linger_seconds`, so that closing does not
    reset the connection before the client has read the answer."""
    received = 0
    with trio.move_on_after(limits.linger_seconds):
        try:
            await stream.send_eof()
            while received < limits.linger_bytes and (data := await stream.receive_some(RECEIVE_SIZE)):
                received += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


__all__ = ["ErrorAnswer", "Handler", "Limits", "Peer", "head_size", "linger", "peer_of", "read_request_head",
           "serve_connection", "serve_tcp"]
