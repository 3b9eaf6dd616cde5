"""The node's one port: a small HTTP/1.1 API and the replication stream's upgrade.

Built on h11 (sans-IO HTTP) over trio; the connection loop, its limits
and its error boundary are `pylitefs.h11io`'s, shared with the proxy. Routes:

- `GET /info`    — this node: id, role, cluster id, primary, term (JSON);
- `GET /status`  — role, primary, every database's position and lag, connected
  replicas and their acknowledged positions, the nodes this one knows (JSON);
- `GET /metrics` — Prometheus text exposition (`pylitefs.metrics`);
- `GET /events`  — newline-delimited JSON, streamed for as long as the client
  stays: the state first, then every transaction and primary change
  (`pylitefs.events`); a client too slow to keep up is disconnected;
- `GET /stream` with `Upgrade: pylitefs-stream` — answered `101 Switching
  Protocols` on the primary, after which the connection carries the
  replication stream (`replication.primary.PrimaryServer.serve`); `503` on a
  replica;
- admin calls (header `Authorization: Bearer <admin token>`; `401` without
  it): `POST /handoff[?to=NODE]`, `POST /import?name=DB` (the body is the
  database file), `GET /export?name=DB` (the body is a consistent copy),
  `GET /verify` (every database's position and recomputed checksum).

Malformed requests get `400` (`431` for a too large head) and the connection
is closed; a client that sends nothing for `REQUEST_TIMEOUT` seconds is
dropped. Nothing a client sends can stop the server.
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
import math
import os
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from pylitefs.events import EventHub, Subscription
from pylitefs.h11io import RECEIVE_SIZE, Limits, Peer, linger, serve_connection, serve_tcp
from pylitefs.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from replication.stream import STREAM_PATH, UPGRADE_TOKEN, MessageStream

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0
#: Connections served at once; more are closed at once (the daemon's descriptors also serve FUSE).
MAX_CONNECTIONS = 256
MAX_REQUEST_HEAD = 64 * 1024
MAX_REQUEST_BODY = 1 << 20
#: Largest upload (`POST /import`).
MAX_UPLOAD = 1 << 40
#: After refusing an upload, at most this much of its body is read (and ignored), for at most this long.
DISCARD_BYTES = 64 << 20
DISCARD_SECONDS = 5.0
LIMITS = Limits(max_head=MAX_REQUEST_HEAD, head_timeout=REQUEST_TIMEOUT,
                linger_bytes=DISCARD_BYTES, linger_seconds=DISCARD_SECONDS)
#: An upload is written to its spool file in pieces of this size.
SPOOL_CHUNK = 1 << 20
#: A download (`GET /export`) is sent in pieces of this size.
SEND_CHUNK = 1 << 20
#: Events sent in one chunk of `/events` at most.
EVENTS_PER_CHUNK = 256
#: Once an `/events` client's queue overflowed, how long its last send may still take.
OVERFLOW_GRACE = 2.0

StreamHandler = Callable[[MessageStream, str], Awaitable[None]]
Reply = tuple[int, "dict[str, Any] | Blob"]
#: An admin call: query parameters -> (HTTP status, JSON payload or a binary body).
AdminAction = Callable[[dict[str, str]], Awaitable[Reply]]


@dataclass(frozen=True)
class Blob:
    """A binary response body with its extra headers."""

    data: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class Upload:
    """An admin call whose request body is spooled to a file first.

    `check(params)` answers at once, before the body is read, when the call
    cannot be done (an error reply), else None; `spool_dir()` is where the
    body goes; `run(params, path)` does the call (the file is removed after).
    """

    check: Callable[[dict[str, str]], Reply | None]
    spool_dir: Callable[[], str]
    run: Callable[[dict[str, str], str], Awaitable[Reply]]


class HttpServer:
    """Answers the API and hands stream upgrades to `stream_handler` (None on a replica).

    `status` may return the JSON object or an awaitable of it. Admin calls
    are routed by (method, path) in `admin` and `uploads`.
    """

    def __init__(self, info: Callable[[], dict[str, Any]],
                 status: Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]],
                 stream_handler: Callable[[], StreamHandler | None], *,
                 admin: dict[tuple[str, str], AdminAction] | None = None, admin_token: bytes = b"",
                 uploads: dict[str, Upload] | None = None, metrics: Callable[[], str] | None = None,
                 events: tuple[EventHub, Callable[[], dict[str, Any]]] | None = None) -> None:
        self._info = info
        self._status = status
        self._stream_handler = stream_handler
        self._admin = admin or {}
        self._admin_token = admin_token
        self._uploads = uploads or {}
        self._metrics = metrics
        self._events = events
        self._slots = trio.Semaphore(MAX_CONNECTIONS)

    async def serve(self, host: str, port: int, *,
                    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on host:port (all interfaces when host is empty) until cancelled."""
        await serve_tcp(self._connection, host, port, max_connections=MAX_CONNECTIONS, what="HTTP",
                        task_status=task_status)

    async def _connection(self, stream: trio.SocketStream) -> None:
        await serve_connection(stream, self._handle, _answer_error, LIMITS, "HTTP")

    async def _handle(self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request,
                      peer: Peer) -> bool:
        """Answer one request; False once the connection carries the replication stream (it has ended)."""
        upgrade = await self._route(stream, conn, request, str(peer))
        if upgrade is None:
            return True
        handler, leftover = upgrade
        await handler(MessageStream(stream, leftover), str(peer))
        return False

    async def _route(self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request,
                     peer: str) -> tuple[StreamHandler, bytes] | None:
        method = request.method.decode()
        target = urllib.parse.urlsplit(request.target.decode(errors="replace"))
        path = target.path
        params = dict(urllib.parse.parse_qsl(target.query))
        if method == "POST" and path in self._uploads:
            await self._upload(stream, conn, request, self._uploads[path], params)
            return None
        # Every other request's body is small: read (and ignore) it first.
        if await _drain_body(stream, conn) > MAX_REQUEST_BODY:
            await _respond(stream, conn, 413, {"error": "request body too large"}, close=True)
            return None
        if path == STREAM_PATH:
            upgrade = _header(request, b"upgrade")
            handler = self._stream_handler()
            if upgrade.lower() != UPGRADE_TOKEN.encode():
                await _respond(stream, conn, 426, {"error": f"upgrade to {UPGRADE_TOKEN} required"},
                               extra=[("Upgrade", UPGRADE_TOKEN), ("Connection", "Upgrade")])
                return None
            if handler is None:
                await _respond(stream, conn, 503, {"error": "this node is not the primary"})
                return None
            await stream.send_all(conn.send(h11.InformationalResponse(
                status_code=101, headers=[("Upgrade", UPGRADE_TOKEN), ("Connection", "Upgrade")])))
            return handler, bytes(conn.trailing_data[0])
        action = self._admin.get((method if method != "HEAD" else "GET", path))
        head = method == "HEAD"
        if action is not None:
            if await self._authorized(stream, conn, request):
                status, payload = await action(params)
                await _respond(stream, conn, status, payload, head=head)
        elif method not in ("GET", "HEAD") or path in self._uploads or any(p == path for _, p in self._admin):
            allow = sorted({m for m, p in self._admin if p == path} | ({"POST"} if path in self._uploads else set()))
            await _respond(stream, conn, 405, {"error": f"{method} is not allowed here"},
                           extra=[("Allow", ", ".join(allow or ["GET"]))])
        elif path == "/info":
            await _respond(stream, conn, 200, self._info(), head=head)
        elif path == "/status":
            status = self._status()
            if inspect.isawaitable(status):
                status = await status
            await _respond(stream, conn, 200, status, head=head)
        elif path == "/metrics" and self._metrics is not None:
            text = self._metrics().encode()
            await _respond(stream, conn, 200, Blob(text, content_type=METRICS_CONTENT_TYPE), head=head)
        elif path == "/events" and self._events is not None and not head:
            await self._stream_events(stream, conn, peer)
        else:
            await _respond(stream, conn, 404, {"error": f"no such path: {path}"}, head=head)
        return None

    async def _authorized(self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request) -> bool:
        """True with the right admin token; else answers 401 (closing: a body may be unread)."""
        token = _header(request, b"authorization")
        if token.startswith(b"Bearer "):
            token = token[len(b"Bearer "):].strip()
        else:
            token = b""
        if self._admin_token and hmac.compare_digest(token, self._admin_token):
            return True
        await _respond(stream, conn, 401, {"error": "admin calls need 'Authorization: Bearer <admin token>' "
                                           "(http.admin-token, else the cluster secret)"}, close=True)
        return False

    async def _upload(self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request,
                      upload: Upload, params: dict[str, str]) -> None:
        if not await self._authorized(stream, conn, request):
            await linger(stream, LIMITS)
            return
        refused = upload.check(params)
        if refused is not None:
            await _respond(stream, conn, *refused, close=True)
            await linger(stream, LIMITS)
            return
        if conn.they_are_waiting_for_100_continue:
            await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        spool_dir = upload.spool_dir()
        fd, path = await trio.to_thread.run_sync(_spool_file, spool_dir)
        try:
            size = await _spool_body(stream, conn, fd)
            if size > MAX_UPLOAD:
                await _respond(stream, conn, 413, {"error": f"upload larger than {MAX_UPLOAD} bytes"}, close=True)
                return
            status, payload = await upload.run(params, path)
            await _respond(stream, conn, status, payload)
        finally:
            os.close(fd)
            await trio.to_thread.run_sync(_unlink_quietly, path)

    async def _stream_events(self, stream: trio.SocketStream, conn: h11.Connection, peer: str) -> None:
        """Send events as NDJSON chunks until the client leaves or falls too far behind; then close."""
        assert self._events is not None
        hub, first = self._events
        sub = hub.subscribe(first())
        try:
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
                ("Content-Type", "application/x-ndjson"), ("Cache-Control", "no-cache"),
                ("Connection", "close")])))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_closed, stream, nursery.cancel_scope)
                try:
                    await _send_events(stream, conn, sub)
                except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    log.info("/events client %s dropped: %s", peer, exc or type(exc).__name__)
                nursery.cancel_scope.cancel()
        finally:
            sub.close()


async def _send_events(stream: trio.SocketStream, conn: h11.Connection, sub: Subscription) -> None:
    """Send `sub`'s events in order, batched; after an overflow, a last `overflow` line if the client reads.

    A send waits at most REQUEST_TIMEOUT, and only OVERFLOW_GRACE more once
    the client's queue overflowed; waiting for events has no deadline.
    """
    with trio.CancelScope() as scope:
        def hurry() -> None:
            scope.deadline = min(scope.deadline, trio.current_time() + OVERFLOW_GRACE)

        sub.on_overflow = hurry
        async for event in sub.receive:
            if sub.overflowed:
                break
            batch = [event]
            while len(batch) < EVENTS_PER_CHUNK:
                try:
                    batch.append(sub.receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in batch).encode()
            scope.deadline = min(scope.deadline, trio.current_time() + REQUEST_TIMEOUT)
            await stream.send_all(conn.send(h11.Data(data=data)))
            if not sub.overflowed:
                scope.deadline = math.inf
        if sub.overflowed:
            await stream.send_all(conn.send(h11.Data(data=b'{"type": "overflow"}\n')))
    if scope.cancelled_caught:
        raise trio.TooSlowError("too slow to read its events")


async def _until_closed(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Read (and ignore) until the client closes its side, then cancel `scope`."""
    try:
        while await stream.receive_some(RECEIVE_SIZE):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    scope.cancel()


async def _body_events(stream: trio.SocketStream, conn: h11.Connection) -> AsyncIterator[bytes]:
    """The current request's body as byte strings, until its end (each receive within REQUEST_TIMEOUT)."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            with trio.fail_after(REQUEST_TIMEOUT):
                data = await stream.receive_some(RECEIVE_SIZE)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Data):
            yield bytes(event.data)
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)) or event is h11.PAUSED:
            return


async def _drain_body(stream: trio.SocketStream, conn: h11.Connection) -> int:
    """Read the current request's body, keeping nothing; its size (stops once over MAX_REQUEST_BODY)."""
    size = 0
    async for data in _body_events(stream, conn):
        size += len(data)
        if size > MAX_REQUEST_BODY:
            break
    return size


async def _spool_body(stream: trio.SocketStream, conn: h11.Connection, fd: int) -> int:
    """Write the current request's body to `fd`; its size (stops once over MAX_UPLOAD)."""
    size = 0
    pending: list[bytes] = []
    pending_size = 0
    async for data in _body_events(stream, conn):
        size += len(data)
        if size > MAX_UPLOAD:
            return size
        pending.append(data)
        pending_size += len(data)
        if pending_size >= SPOOL_CHUNK:
            await trio.to_thread.run_sync(_write_all, fd, b"".join(pending))
            pending, pending_size = [], 0
    if pending:
        await trio.to_thread.run_sync(_write_all, fd, b"".join(pending))
    return size


def _spool_file(directory: str) -> tuple[int, str]:
    os.makedirs(directory, exist_ok=True)
    return tempfile.mkstemp(prefix="upload-", suffix=".tmp", dir=directory)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _header(request: h11.Request, name: bytes) -> bytes:
    for key, value in request.headers:
        if key == name:
            return bytes(value)
    return b""


async def _answer_error(stream: trio.SocketStream, conn: h11.Connection, status: int,
                        payload: dict[str, Any]) -> None:
    """The answer to a malformed request (h11io.serve_connection closes the connection after it)."""
    await _respond(stream, conn, status, payload, close=True)


async def _respond(stream: trio.SocketStream, conn: h11.Connection, status: int, payload: dict[str, Any] | Blob,
                   *, close: bool = False, extra: list[tuple[str, str]] | None = None, head: bool = False) -> None:
    if isinstance(payload, Blob):
        body, content_type, extra = payload.data, payload.content_type, [*payload.headers, *(extra or [])]
    else:
        body, content_type = json.dumps(payload, indent=1, sort_keys=True).encode() + b"\n", "application/json"
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    if close:
        headers.append(("Connection", "close"))
    headers += extra or []
    data = conn.send(h11.Response(status_code=status, headers=headers))
    view = memoryview(body) if not head else memoryview(b"")  # a HEAD response announces the length only
    if len(view) <= SEND_CHUNK:
        data += (conn.send(h11.Data(data=body)) if view else b"") + conn.send(h11.EndOfMessage())
        with trio.fail_after(REQUEST_TIMEOUT):  # a client that does not read is dropped
            await stream.send_all(data)
        return
    with trio.fail_after(REQUEST_TIMEOUT):
        await stream.send_all(data)
    for start in range(0, len(view), SEND_CHUNK):
        with trio.fail_after(REQUEST_TIMEOUT):
            await stream.send_all(conn.send(h11.Data(data=bytes(view[start:start + SEND_CHUNK]))))
    with trio.fail_after(REQUEST_TIMEOUT):
        await stream.send_all(conn.send(h11.EndOfMessage()))

__all__ = ["AdminAction", "Blob", "HttpServer", "Reply", "StreamHandler", "Upload"]
