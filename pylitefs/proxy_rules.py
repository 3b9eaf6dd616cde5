"""The proxy's decisions, without I/O: where a request goes, which headers it carries, what health says.

Headers are h11's: lists of (name, value) byte pairs, names lower-cased on
the way in. Everything here is pure so that it is unit-tested on its own
(tests/unit/test_proxy_rules.py); pylitefs/proxy.py does the I/O.

Read-your-writes: the primary's proxy stamps every response to a write
(any method but GET and HEAD) with the position of `proxy.db` after it, as
16 lower-case hex digits like LiteFS's `-pos` file and its `__txid` cookie:
the header `Pylitefs-Txid` and the cookie `__txid`. A replica's proxy waits
until it has applied the TXID a request presents (the header wins over the
cookie) before the local application sees the read.
"""

from __future__ import annotations

import enum
import fnmatch
import json
import urllib.parse
from collections.abc import Iterable, Sequence

Headers = list[tuple[bytes, bytes]]

TXID_COOKIE = "__txid"
TXID_HEADER = "Pylitefs-Txid"
HEALTH_PATH = "/pylitefs/health"
#: Added by a replica's proxy to what it forwards (value: its node name): such a request is never
#: forwarded again, so two proxies that disagree on the primary during a failover cannot loop.
FORWARDED_MARK = "Pylitefs-Forwarded"
#: How long a browser keeps the `__txid` cookie (LiteFS: 5 minutes).
COOKIE_MAX_AGE = 300
#: Seconds a client is told to wait (`Retry-After`) while no primary can take a write.
RETRY_AFTER = 1
READ_METHODS = (b"GET", b"HEAD")

#: Meant for one connection only; never passed on (RFC 9110 §7.6.1), with Proxy-Connection of old clients.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                        b"trailer", b"transfer-encoding", b"upgrade", b"proxy-connection"})


class Route(enum.Enum):
    """Where a request goes."""

    #: To the local application, untouched: no waiting, no forwarding (`proxy.passthrough`).
    PASSTHROUGH = "passthrough"
    #: To the local application once this node has the client's TXID.
    READ = "read"
    #: To the primary (the local application on the primary).
    WRITE = "write"


def path_of(target: bytes) -> str:
    """The path of a request target (`/a/b?x=1` -> `/a/b`), percent-decoded."""
    return urllib.parse.unquote(target.decode("latin-1").split("?", 1)[0])


def matches(path: str, patterns: Iterable[str]) -> bool:
    """True when `path` matches one of the shell-style `patterns` (`*` also matches `/`)."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header `name` (lower case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return bytes(value)
    return None


def connection_tokens(headers: Sequence[tuple[bytes, bytes]]) -> set[bytes]:
    """The lower-cased tokens of every `Connection` header."""
    return {token.strip().lower() for key, value in headers if key.lower() == b"connection"
            for token in bytes(value).split(b",") if token.strip()}


def is_upgrade(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """True for a protocol upgrade request (WebSocket): `Connection: upgrade` and an `Upgrade` header."""
    return b"upgrade" in connection_tokens(headers) and header(headers, b"upgrade") is not None


def classify(method: bytes, path: str, headers: Sequence[tuple[bytes, bytes]], *,
             passthrough: Iterable[str], always_forward: Iterable[str]) -> Route:
    """Where a request goes: passthrough patterns first; upgrades (WebSocket) and writes to the primary.

    An upgraded connection may carry writes, so it goes to the primary like
    a write. GET and HEAD are reads unless `always_forward` matches the path.
    """
    if matches(path, passthrough):
        return Route.PASSTHROUGH
    if is_upgrade(headers):
        return Route.WRITE
    if method.upper() in READ_METHODS and not matches(path, always_forward):
        return Route.READ
    return Route.WRITE


def format_txid(txid: int) -> str:
    """A TXID as the proxy sends it: 16 lower-case hex digits."""
    return f"{txid:016x}"


def parse_txid(text: str) -> int:
    """A TXID from 1 to 16 hex digits; ValueError otherwise."""
    text = text.strip()
    if not 0 < len(text) <= 16 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ValueError(f"not a TXID (1 to 16 hex digits): {text[:40]!r}")
    return int(text, 16)


def cookie(headers: Sequence[tuple[bytes, bytes]], name: str) -> str | None:
    """The value of cookie `name` from the `Cookie` headers, or None."""
    for key, value in headers:
        if key.lower() != b"cookie":
            continue
        for pair in bytes(value).decode("latin-1").split(";"):
            key_text, sep, val = pair.strip().partition("=")
            if sep and key_text == name:
                return val.strip().strip('"')
    return None


def requested_txid(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    """The TXID a client presents (the `Pylitefs-Txid` header, else the `__txid` cookie); ValueError if malformed."""
    value = header(headers, TXID_HEADER.lower().encode())
    text = value.decode("latin-1") if value is not None else cookie(headers, TXID_COOKIE)
    return None if text is None else parse_txid(text)


def txid_headers(txid: int) -> Headers:
    """The header and the cookie a response to a write carries."""
    hexed = format_txid(txid)
    return [(TXID_HEADER.encode(), hexed.encode()),
            (b"set-cookie", f"{TXID_COOKIE}={hexed}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; "
                            "SameSite=Lax".encode())]


def end_to_end(headers: Sequence[tuple[bytes, bytes]], *, upgrade: bool = False) -> Headers:
    """`headers` without the hop-by-hop ones (also those named in `Connection`).

    With `upgrade`, `Upgrade` is kept and `Connection: upgrade` put back:
    the next hop must see the upgrade request (or the 101 answer) too.
    """
    drop = HOP_BY_HOP | connection_tokens(headers)
    out = [(bytes(k), bytes(v)) for k, v in headers if k.lower() not in drop]
    if upgrade:
        value = header(headers, b"upgrade")
        if value is not None:
            out += [(b"connection", b"upgrade"), (b"upgrade", value)]
    return out


def request_headers(headers: Sequence[tuple[bytes, bytes]], *, chunked: bool, upgrade: bool) -> Headers:
    """The headers of a request passed on to the next hop (framing as h11 must send it).

    A body of unknown length (chunked) goes on chunked; `Content-Length` is kept.
    """
    out = end_to_end(headers, upgrade=upgrade)
    if chunked and header(out, b"content-length") is None:
        out.append((b"transfer-encoding", b"chunked"))
    return out


def _forwarded_node(ip: str) -> str:
    """An address as RFC 7239 writes it (IPv6 in quoted brackets)."""
    return f'"[{ip}]"' if ":" in ip else ip


def add_forwarded(headers: Headers, *, client_ip: str) -> Headers:
    """`headers` plus `Forwarded` and `X-Forwarded-For/Proto/Host` for a request this proxy passes on.

    Existing values (from a load balancer in front) are kept: `For` lists are
    appended to, `Proto` and `Host` are set only when absent. This proxy
    speaks plain HTTP, so the protocol it saw is `http` unless told otherwise.
    """
    out = list(headers)
    proto = (header(out, b"x-forwarded-proto") or b"http").decode("latin-1")
    host = (header(out, b"x-forwarded-host") or header(out, b"host") or b"").decode("latin-1")
    previous_for = header(out, b"x-forwarded-for")
    previous_fwd = header(out, b"forwarded")
    out = [(k, v) for k, v in out if k.lower() not in (b"x-forwarded-for", b"forwarded")]
    xff = f"{previous_for.decode('latin-1')}, {client_ip}" if previous_for else client_ip
    element = f"for={_forwarded_node(client_ip)};proto={proto}" + (f';host="{host}"' if host else "")
    forwarded = f"{previous_fwd.decode('latin-1')}, {element}" if previous_fwd else element
    out += [(b"x-forwarded-for", xff.encode("latin-1")), (b"forwarded", forwarded.encode("latin-1"))]
    if header(out, b"x-forwarded-proto") is None:
        out.append((b"x-forwarded-proto", proto.encode()))
    if header(out, b"x-forwarded-host") is None and host:
        out.append((b"x-forwarded-host", host.encode("latin-1")))
    return out


def with_host(headers: Headers, host: str) -> Headers:
    """`headers` with a `Host` (HTTP/1.1 needs one): the client's when it sent one, else `host`."""
    return headers if header(headers, b"host") is not None else [(b"host", host.encode()), *headers]


def redirect_location(primary_proxy_url: str, target: bytes) -> str:
    """Where redirect mode sends a write: the same path and query on the primary's proxy."""
    return primary_proxy_url.rstrip("/") + target.decode("latin-1")


def health(role: str, connected: bool, lag_ms: int, max_lag: float) -> tuple[int, dict[str, object]]:
    """`/pylitefs/health`: 200 when this node can serve (the primary, or a replica connected and within
    `max_lag` seconds of it), else 503; the JSON body says why."""
    if role == "primary":
        return 200, {"ok": True, "role": role}
    if not connected:
        return 503, {"ok": False, "role": role, "reason": "not connected to a primary"}
    if lag_ms > max_lag * 1000:
        return 503, {"ok": False, "role": role, "lag_ms": lag_ms,
                     "reason": f"lagging the primary by {lag_ms} ms (proxy.max-lag {max_lag:g}s)"}
    return 200, {"ok": True, "role": role, "lag_ms": lag_ms}


def json_body(payload: dict[str, object]) -> bytes:
    """A JSON response body."""
    return json.dumps(payload, sort_keys=True).encode() + b"\n"
