"""The node's one port: a small HTTP/1.1 API and the replication stream's upgrade.

Built on h11 (sans-IO HTTP) over trio. Routes:

- `GET /info`   — this node: id, role, cluster id, primary, term (JSON);
- `GET /status` — role, primary, every database's position and lag, connected
  replicas and their acknowledged positions (JSON);
- `GET /stream` with `Upgrade: pylitefs-stream` — answered `101 Switching
  Protocols` on the primary, after which the connection carries the
  replication stream (`replication.primary.PrimaryServer.serve`); `503` on a
  replica;
- `POST /handoff[?to=NODE]` — admin call (header `Authorization: Bearer
  <cluster secret>`): on the primary, pass the lease to candidate NODE (or the
  most caught-up one). `401` without the right token, `409` when the handoff
  cannot be done (the reason in the JSON body).

Malformed requests get `400` and the connection is closed; a client that
sends nothing for `REQUEST_TIMEOUT` seconds is dropped. Nothing a client
sends can stop the server.
"""

from __future__ import annotations

import hmac
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio

from replication.stream import STREAM_PATH, UPGRADE_TOKEN, MessageStream

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0
#: Connections served at once; more are closed at once (the daemon's descriptors also serve FUSE).
MAX_CONNECTIONS = 256
MAX_REQUEST_HEAD = 64 * 1024
MAX_REQUEST_BODY = 1 << 20
RECEIVE_SIZE = 1 << 16

StreamHandler = Callable[[MessageStream, str], Awaitable[None]]
#: An admin call: query parameters -> (HTTP status, JSON payload).
AdminAction = Callable[[dict[str, str]], Awaitable[tuple[int, dict[str, Any]]]]


class HttpServer:
    """Answers the API and hands stream upgrades to `stream_handler` (None on a replica)."""

    def __init__(self, info: Callable[[], dict[str, Any]], status: Callable[[], dict[str, Any]],
                 stream_handler: Callable[[], StreamHandler | None], *,
                 admin: dict[str, AdminAction] | None = None, admin_token: bytes = b"") -> None:
        self._info = info
        self._status = status
        self._stream_handler = stream_handler
        self._admin = admin or {}
        self._admin_token = admin_token
        self._slots = trio.Semaphore(MAX_CONNECTIONS)

    async def serve(self, host: str, port: int, *,
                    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on host:port (all interfaces when host is empty) until cancelled."""
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        task_status.started(listeners)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            log.warning("more than %d HTTP connections: closing a new one", MAX_CONNECTIONS)
            await stream.aclose()
            return
        try:
            await self._serve_connection(stream)
        finally:
            self._slots.release()

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            peer = "%s:%s" % stream.socket.getpeername()[:2]
        except OSError:
            peer = "?"
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        try:
            while True:
                with trio.move_on_after(REQUEST_TIMEOUT) as timeout:
                    request, body_size = await _read_request(stream, conn)
                if timeout.cancelled_caught:
                    log.info("HTTP client %s sent no complete request within %.0fs; closing",
                             peer, REQUEST_TIMEOUT)
                    return
                if request is None:
                    return
                if body_size > MAX_REQUEST_BODY:
                    await _respond(stream, conn, 413, {"error": "request body too large"}, close=True)
                    return
                upgrade = await self._route(stream, conn, request, peer)
                if upgrade is not None:
                    handler, leftover = upgrade
                    await handler(MessageStream(stream, leftover), peer)
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            log.info("bad HTTP request from %s: %s", peer, exc)
            try:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _respond(stream, conn, exc.error_status_hint or 400,
                                   {"error": f"bad request: {exc}"}, close=True)
            except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError) as exc:
            log.debug("HTTP client %s went away: %s", peer, exc)
        except Exception:  # one connection's bug must not stop the server for everyone
            log.exception("unexpected error serving %s", peer)
        finally:
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _route(self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request,
                     peer: str) -> tuple[StreamHandler, bytes] | None:
        method = request.method.decode()
        path = request.target.decode(errors="replace").split("?", 1)[0]
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
        if method == "POST" and path in self._admin:
            await self._admin_call(stream, conn, request, path)
        elif method not in ("GET", "HEAD"):
            await _respond(stream, conn, 405, {"error": f"{method} is not allowed here"}, extra=[("Allow", "GET")])
        elif path == "/info":
            await _respond(stream, conn, 200, self._info(), head=method == "HEAD")
        elif path == "/status":
            await _respond(stream, conn, 200, self._status(), head=method == "HEAD")
        else:
            await _respond(stream, conn, 404, {"error": f"no such path: {path}"}, head=method == "HEAD")
        return None


    async def _admin_call(self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request,
                          path: str) -> None:
        token = _header(request, b"authorization").removeprefix(b"Bearer ").strip()
        if not self._admin_token or not hmac.compare_digest(token, self._admin_token):
            await _respond(stream, conn, 401, {"error": "admin calls need 'Authorization: Bearer <cluster secret>'"})
            return
        query = urllib.parse.urlsplit(request.target.decode(errors="replace")).query
        params = dict(urllib.parse.parse_qsl(query))
        status, payload = await self._admin[path](params)
        await _respond(stream, conn, status, payload)


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> tuple[h11.Request | None, int]:
    """The next request and its body size (the body is read and discarded); None at a clean close."""
    request: h11.Request | None = None
    body = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECEIVE_SIZE)
            conn.receive_data(data)
            if not data and request is None and conn.their_state is h11.IDLE:
                return None, 0
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += len(event.data)
            if body > MAX_REQUEST_BODY:
                return request, body
        elif isinstance(event, h11.EndOfMessage):
            return request, body
        elif isinstance(event, h11.ConnectionClosed):
            return None, 0
        elif event is h11.PAUSED:
            return request, body


def _header(request: h11.Request, name: bytes) -> bytes:
    for key, value in request.headers:
        if key == name:
            return bytes(value)
    return b""


async def _respond(stream: trio.SocketStream, conn: h11.Connection, status: int, payload: dict[str, Any],
                   *, close: bool = False, extra: list[tuple[str, str]] | None = None, head: bool = False) -> None:
    body = json.dumps(payload, indent=1, sort_keys=True).encode() + b"\n"
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if close:
        headers.append(("Connection", "close"))
    headers += extra or []
    data = conn.send(h11.Response(status_code=status, headers=headers))
    if not head:  # a HEAD response announces the body's length but carries none
        data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    with trio.fail_after(REQUEST_TIMEOUT):  # a client that does not read is dropped
        await stream.send_all(data)


__all__ = ["AdminAction", "HttpServer", "StreamHandler"]
