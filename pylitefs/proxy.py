"""The HTTP proxy in front of the application (`proxy.addr`): reads here, writes on the primary.

Every node runs the application on its own mount (`proxy.target`) behind
its proxy; a load balancer may send any request to any node. Per request
(decisions in `pylitefs.proxy_rules`):

- `proxy.passthrough` paths go to the local application as they are;
- reads (GET/HEAD, unless `proxy.always-forward` matches) go to the local
  application, on a replica once it has applied the TXID of `proxy.db` the
  client presents (`Pylitefs-Txid` header or `__txid` cookie), or `504`
  after `proxy.wait-timeout`;
- writes (any other method) and protocol upgrades (WebSocket) go to the
  local application on the primary, whose response is stamped with the
  TXID after it; on a replica they are forwarded to the primary's proxy
  (`forward`: bodies streamed both ways, `X-Forwarded-*`/`Forwarded` added,
  an upgraded connection spliced byte for byte after the `101`) or answered
  with a `307` to it (`redirect`, only while replication is connected to
  the primary). No reachable primary: `503` with `Retry-After`.
- `GET /pylitefs/health`: `200` when this node can serve, else `503`.

A replica finds the primary's proxy through the lease: the primary's HTTP
API URL, whose `/info` gives its `proxy_url` (cached per URL and term,
fetched again after a failure). HTTP is h11 on both sides (client
connections through `pylitefs.h11io`, shared with the API port). Heads are limited
to MAX_HEAD bytes (`431`), malformed requests get `400`, a client silent for
`proxy.client-timeout` is disconnected, and nothing a client or an
upstream does stops the proxy for others.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import TYPE_CHECKING, Any

import h11
import trio

from pylitefs.config import ProxyConfig, parse_addr, parse_url
from pylitefs.h11io import RECEIVE_SIZE, Limits, Peer, serve_connection, serve_tcp
from pylitefs.proxy_rules import (
    FORWARDED_MARK,
    HEALTH_PATH,
    READ_METHODS,
    RETRY_AFTER,
    Route,
    add_forwarded,
    classify,
    end_to_end,
    header,
    health,
    is_upgrade,
    json_body,
    path_of,
    redirect_location,
    request_headers,
    requested_txid,
    txid_headers,
    with_host,
)

if TYPE_CHECKING:
    from pylitefs.node import Node

log = logging.getLogger(__name__)

#: Largest request or response head (status line and headers).
MAX_HEAD = 64 * 1024
#: Connections served at once; more are closed at once.
MAX_CONNECTIONS = 1024
#: Longest wait to connect to the application or the primary's proxy.
CONNECT_TIMEOUT = 5.0
#: Longest wait for the application's (or the primary's) response head, and between two chunks of it.
UPSTREAM_TIMEOUT = 120.0
#: Longest wait for the primary's `/info`.
INFO_TIMEOUT = 3.0
MAX_INFO_BODY = 1 << 20
#: Body bytes of a refused request read (and dropped) so the client sees the answer; beyond: close.
MAX_DRAIN = 1 << 20
#: How long a connection that broke HTTP is read (and dropped) after its error answer, before it is closed.
LINGER_TIMEOUT = 1.0


class UpstreamUnavailable(Exception):
    """The application or the primary's proxy could not be reached (nothing was sent to the client yet)."""


class UpstreamFailed(Exception):
    """The application or the primary's proxy failed before its response head arrived."""


class _UpstreamBroken(Exception):
    """The upstream stopped taking the request body."""


class ProxyServer:
    """Serves `proxy.addr` for `node` (roles, positions, the lease) in front of `proxy.target`."""

    def __init__(self, config: ProxyConfig, node: Node, *, name: str = "") -> None:
        self.config = config
        self.node = node
        #: This node's name, sent in FORWARDED_MARK.
        self.name = name or "pylitefs"
        host, port = parse_addr(config.target)
        self.target = (host or "127.0.0.1", port)
        self._limits = Limits(max_head=MAX_HEAD, head_timeout=config.client_timeout,
                              linger_bytes=MAX_DRAIN, linger_seconds=LINGER_TIMEOUT)
        #: ((lease URL, term), the primary's proxy URL) last learned.
        self._primary: tuple[tuple[str, int], str] | None = None

    async def serve(self, host: str, port: int, *,
                    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on host:port (all interfaces when host is empty) until cancelled."""
        await serve_tcp(self._connection, host, port, max_connections=MAX_CONNECTIONS, what="proxy",
                        task_status=task_status)

    # ------------------------------------------------------------ connections

    async def _connection(self, stream: trio.SocketStream) -> None:
        await serve_connection(stream, self._serve_request, self._answer_error, self._limits, "proxy")

    async def _serve_request(self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request,
                             peer: Peer) -> bool:
        """Answer one request; False when the connection must be closed afterwards."""
        try:
            return await self._handle(stream, conn, request, peer.ip)
        except UpstreamFailed as exc:  # after the response head: the client sees a cut response
            log.warning("upstream failed while answering %s: %s", peer, exc)
            return False

    async def _answer_error(self, stream: trio.SocketStream, conn: h11.Connection, status: int,
                            payload: dict[str, Any]) -> None:
        """The answer to a malformed request (h11io.serve_connection closes the connection after it)."""
        await self._respond(stream, conn, status, payload)

    async def _client_event(self, stream: trio.SocketStream, conn: h11.Connection) -> Any:
        """The next body event of the client's request (Data, EndOfMessage or PAUSED)."""
        with trio.fail_after(self.config.client_timeout):
            while True:
                event = conn.next_event()
                if event is not h11.NEED_DATA:
                    return event
                conn.receive_data(await stream.receive_some(RECEIVE_SIZE))

    async def _send_client(self, stream: trio.SocketStream, data: bytes) -> None:
        """Send `data` to the client; TooSlowError if it does not take it within client-timeout."""
        with trio.fail_after(self.config.client_timeout):  # a client that does not read is dropped
            await stream.send_all(data)

    # ------------------------------------------------------------ routing

    async def _handle(self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request,
                      peer_ip: str) -> bool:
        """Answer one request; False when the connection must be closed afterwards."""
        path = path_of(request.target)
        head = request.method == b"HEAD"
        if path == HEALTH_PATH and request.method in READ_METHODS:
            status, payload = health(self.node.role, self.node.replica.connected, self.node.lag_ms(),
                                     self.config.max_lag)
            return await self._respond(stream, conn, status, payload, head=head)
        route = classify(request.method, path, request.headers, passthrough=self.config.passthrough,
                         always_forward=self.config.always_forward)
        if route is Route.PASSTHROUGH:
            return await self._to_app(stream, conn, request, stamp=False)
        if route is Route.READ:
            return await self._read(stream, conn, request)
        if self.node.role == "primary":
            return await self._to_app(stream, conn, request, stamp=True)
        if header(request.headers, FORWARDED_MARK.lower().encode()) is not None:
            return await self._respond(stream, conn, 503, {"error": "forwarded here by another node's proxy, "
                                                           "but this node is not the primary (it just changed)"},
                                       extra=[("Retry-After", str(RETRY_AFTER))], head=head)
        primary = await self._primary_proxy()
        # A redirect is not checked by a connection: it is given only while replication shows the primary up.
        if primary is None or (self.config.mode == "redirect" and not self.node.replica.connected):
            return await self._respond(stream, conn, 503, {"error": "no primary is known right now"},
                                       extra=[("Retry-After", str(RETRY_AFTER))], head=head)
        if self.config.mode == "redirect":
            location = redirect_location(primary, request.target)
            return await self._respond(stream, conn, 307, {"location": location},
                                       extra=[("Location", location)], head=head)
        try:
            return await self._proxy(stream, conn, request, parse_url(primary), stamp=False, peer_ip=peer_ip)
        except UpstreamUnavailable as exc:
            self._primary = None  # learn it again: it may have moved
            log.warning("cannot reach the primary's proxy at %s: %s", primary, exc)
            return await self._respond(stream, conn, 503, {"error": f"the primary's proxy is unreachable: {exc}"},
                                       extra=[("Retry-After", str(RETRY_AFTER))], head=head)

    async def _read(self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request) -> bool:
        """A read: to the local application once this node has the TXID the client presents (else 504)."""
        try:
            txid = requested_txid(request.headers)
        except ValueError as exc:
            return await self._respond(stream, conn, 400, {"error": str(exc)}, head=request.method == b"HEAD")
        if txid is not None and self.node.role != "primary":
            if not await self.node.wait_position(self.config.db, txid, self.config.wait_timeout):
                position = self.node.position(self.config.db)
                return await self._respond(stream, conn, 504, {
                    "error": f"this replica did not reach TXID {txid} of {self.config.db} within "
                             f"{self.config.wait_timeout:g}s (it is at {position[0] if position else 0})"},
                    head=request.method == b"HEAD")
        return await self._to_app(stream, conn, request, stamp=False)

    async def _to_app(self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, *,
                      stamp: bool) -> bool:
        """Pass the request to the local application (502 if it cannot be reached)."""
        try:
            return await self._proxy(stream, conn, request, self.target, stamp=stamp, peer_ip=None)
        except UpstreamUnavailable as exc:
            log.warning("cannot reach the application at %s:%d: %s", *self.target, exc)
            return await self._respond(stream, conn, 502, {"error": f"the application is unreachable: {exc}"},
                                       head=request.method == b"HEAD")

    # ------------------------------------------------------------ the primary's proxy

    async def _primary_proxy(self) -> str | None:
        """The primary's proxy URL, from the lease and the primary's `/info`; None if unknown now."""
        elector = self.node.elector
        lease = elector.info() if elector is not None else None
        if lease is None or not lease.url:
            return None
        key = (lease.url, lease.term)
        if self._primary is not None and self._primary[0] == key:
            return self._primary[1]
        try:
            info = await get_json(lease.url, "/info")
        except (OSError, ValueError, trio.TooSlowError, UpstreamFailed) as exc:
            log.warning("cannot learn the primary's proxy from %s/info: %s", lease.url, exc)
            return None
        url = info.get("proxy_url")
        if info.get("role") != "primary" or not isinstance(url, str) or not url:
            log.info("%s is not a primary with a proxy (role %s, proxy_url %r)", lease.url, info.get("role"), url)
            return None
        self._primary = (key, url)
        log.info("the primary's proxy is %s (term %d)", url, lease.term)
        return url

    # ------------------------------------------------------------ proxying

    async def _proxy(self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request,
                     upstream_addr: tuple[str, int], *, stamp: bool, peer_ip: str | None) -> bool:
        """Pass `request` to `upstream_addr` and its response back; False when the connection must close.

        `peer_ip`: add the forwarded headers for this client. `stamp`: add the
        TXID of proxy.db to the response. Raises UpstreamUnavailable (nothing
        sent to the client) when the upstream cannot be reached.
        """
        host, port = upstream_addr
        upgrade = is_upgrade(request.headers)
        chunked = b"chunked" in (header(request.headers, b"transfer-encoding") or b"").lower()
        headers = request_headers([(k, v) for k, v in request.headers if k != b"expect"],
                                  chunked=chunked, upgrade=upgrade)
        if peer_ip is not None:
            headers = add_forwarded(headers, client_ip=peer_ip) + [(FORWARDED_MARK.encode(), self.name.encode())]
        headers = with_host(headers, f"{host}:{port}")
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                upstream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            raise UpstreamUnavailable(str(exc) or "connection timed out") from None
        up = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        try:
            try:
                await self._send_upstream(upstream, up.send(h11.Request(
                    method=request.method, target=request.target, headers=headers)))
            except _UpstreamBroken as exc:
                raise UpstreamUnavailable(str(exc)) from None
            if conn.they_are_waiting_for_100_continue:
                await self._send_client(stream, conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            await self._pass_request_body(stream, conn, upstream, up)
            try:
                response = await _response_head(upstream, up)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                    UpstreamFailed) as exc:
                log.warning("upstream %s:%d failed: %r", host, port, exc)
                return await self._respond(stream, conn, 502, {"error": f"bad gateway: {exc!r}"},
                                           head=request.method == b"HEAD")
            if response.status_code == 101 and upgrade:
                await self._send_client(stream, conn.send(h11.InformationalResponse(
                    status_code=101, headers=end_to_end(response.headers, upgrade=True), reason=response.reason)))
                await _splice(stream, bytes(conn.trailing_data[0]), upstream, bytes(up.trailing_data[0]))
                return False
            out = end_to_end(response.headers)
            if stamp and request.method not in READ_METHODS:
                position = self.node.position(self.config.db)
                if position is not None:
                    out += txid_headers(position[0])
            await self._send_client(stream, conn.send(h11.Response(
                status_code=response.status_code, headers=out, reason=response.reason)))
            await self._pass_response_body(stream, conn, upstream, up)
            return True
        finally:
            await upstream.aclose()

    async def _send_upstream(self, upstream: trio.SocketStream, data: bytes) -> None:
        """Send `data` upstream; _UpstreamBroken if it fails or takes longer than UPSTREAM_TIMEOUT."""
        try:
            with trio.fail_after(UPSTREAM_TIMEOUT):
                await upstream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            raise _UpstreamBroken(repr(exc)) from None

    async def _pass_request_body(self, stream: trio.SocketStream, conn: h11.Connection,
                                 upstream: trio.SocketStream, up: h11.Connection) -> None:
        """Stream the client's body to the upstream; if it stops taking it, read the rest and drop it."""
        broken = False
        while True:
            event = await self._client_event(stream, conn)
            if isinstance(event, h11.Data):
                if not broken:
                    try:
                        await self._send_upstream(upstream, up.send(h11.Data(data=event.data)))
                    except _UpstreamBroken as exc:
                        log.info("upstream stopped reading the request body: %s", exc)
                        broken = True
            elif isinstance(event, h11.EndOfMessage):
                if not broken:
                    try:
                        await self._send_upstream(upstream, up.send(h11.EndOfMessage()))
                    except _UpstreamBroken:
                        pass
                return
            else:
                raise h11.RemoteProtocolError(f"unexpected {event!r} in a request body", 400)

    async def _pass_response_body(self, stream: trio.SocketStream, conn: h11.Connection,
                                  upstream: trio.SocketStream, up: h11.Connection) -> None:
        """Stream the upstream's response body to the client (raises if the upstream fails midway)."""
        while True:
            with trio.fail_after(UPSTREAM_TIMEOUT):
                event = await _upstream_event(upstream, up)
            if isinstance(event, h11.Data):
                await self._send_client(stream, conn.send(h11.Data(data=event.data)))
            elif isinstance(event, h11.EndOfMessage):
                await self._send_client(stream, conn.send(h11.EndOfMessage()))
                return
            else:
                raise UpstreamFailed(f"unexpected {event!r} in a response body")

    async def _respond(self, stream: trio.SocketStream, conn: h11.Connection, status: int,
                       payload: dict[str, Any], *, extra: list[tuple[str, str]] | None = None,
                       head: bool = False) -> bool:
        """Answer with JSON (`head`: the length, no body); False when the connection must close
        (the request body could not be read)."""
        reusable = await self._drain(stream, conn)
        body = json_body(payload)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))] + (extra or [])
        if not reusable:
            headers.append(("Connection", "close"))
        data = conn.send(h11.Response(status_code=status, headers=headers))
        if not head:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await self._send_client(stream, data)
        return reusable

    async def _drain(self, stream: trio.SocketStream, conn: h11.Connection) -> bool:
        """Read and drop what is left of the request body (up to MAX_DRAIN); False if it could not be."""
        if conn.their_state is not h11.SEND_BODY:
            return conn.their_state is h11.DONE
        if conn.they_are_waiting_for_100_continue:  # it will not send the body: answer, then close
            return False
        dropped = 0
        with trio.move_on_after(self.config.client_timeout):
            while dropped <= MAX_DRAIN:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
                elif isinstance(event, h11.Data):
                    dropped += len(event.data)
                else:
                    return conn.their_state is h11.DONE
        return False


async def _upstream_event(upstream: trio.SocketStream, up: h11.Connection) -> Any:
    """The next event from an upstream; UpstreamFailed if it breaks HTTP."""
    try:
        while True:
            event = up.next_event()
            if event is not h11.NEED_DATA:
                return event
            up.receive_data(await upstream.receive_some(RECEIVE_SIZE))
    except h11.RemoteProtocolError as exc:
        raise UpstreamFailed(f"bad HTTP from upstream: {exc}") from None


async def _response_head(upstream: trio.SocketStream, up: h11.Connection) -> h11.Response | h11.InformationalResponse:
    """The upstream's final response head, or its 101 (other 1xx answers are skipped)."""
    with trio.fail_after(UPSTREAM_TIMEOUT):
        while True:
            event = await _upstream_event(upstream, up)
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    return event
                continue
            raise UpstreamFailed(f"the connection ended before a response ({event!r})")


async def _splice(client: trio.SocketStream, client_leftover: bytes,
                  upstream: trio.SocketStream, upstream_leftover: bytes) -> None:
    """Carry bytes both ways between an upgraded client and upstream until both directions end."""

    async def pipe(source: trio.SocketStream, sink: trio.SocketStream, first: bytes) -> None:
        try:
            if first:
                await sink.send_all(first)
            while data := await source.receive_some(RECEIVE_SIZE):
                await sink.send_all(data)
            await sink.send_eof()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            nursery.cancel_scope.cancel()  # one side is gone: so is the tunnel

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipe, client, upstream, client_leftover)
        nursery.start_soon(pipe, upstream, client, upstream_leftover)


async def get_json(base_url: str, path: str) -> dict[str, Any]:
    """GET `base_url` + `path` (h11 over trio) and parse its JSON object; raises on any failure."""
    parts = urllib.parse.urlsplit(base_url)
    host, port = parse_url(base_url)
    target = parts.path.rstrip("/") + path
    body = b""
    status = 0
    with trio.fail_after(INFO_TIMEOUT):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            await stream.send_all(conn.send(h11.Request(
                method="GET", target=target, headers=[("Host", f"{host}:{port}"), ("Connection", "close")]))
                + conn.send(h11.EndOfMessage()))
            while True:
                event = await _upstream_event(stream, conn)
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_INFO_BODY:
                        raise ValueError(f"{base_url}{path}: response too large")
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ValueError(f"{base_url}{path}: connection closed before the response ended")
    if status != 200:
        raise ValueError(f"{base_url}{path}: HTTP {status}")
    payload = json.loads(body)
    if not isinstance(payload, dict):
        raise ValueError(f"{base_url}{path}: not a JSON object")
    return payload


__all__ = ["ProxyServer", "get_json"]
