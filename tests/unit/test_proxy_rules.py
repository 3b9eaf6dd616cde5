"""The proxy's pure decisions: routes, TXIDs from headers and cookies, header rewriting, health."""

from __future__ import annotations

import pytest

from pylitefs.proxy_rules import (
    Route,
    add_forwarded,
    classify,
    cookie,
    end_to_end,
    format_txid,
    health,
    path_of,
    redirect_location,
    request_headers,
    requested_txid,
    txid_headers,
)

UPGRADE = [(b"host", b"x"), (b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"websocket")]


@pytest.mark.parametrize(("method", "path", "headers", "route"), [
    (b"GET", "/", [], Route.READ),
    (b"HEAD", "/items", [], Route.READ),
    (b"POST", "/", [], Route.WRITE),
    (b"DELETE", "/items/1", [], Route.WRITE),
    (b"GET", "/login", [], Route.WRITE),            # always-forward
    (b"GET", "/admin/x/y", [], Route.WRITE),         # always-forward, * spans /
    (b"GET", "/img/a.png", [], Route.PASSTHROUGH),
    (b"POST", "/img/a.png", [], Route.PASSTHROUGH),  # passthrough wins, also for writes
    (b"GET", "/ws", UPGRADE, Route.WRITE),           # an upgraded connection may write
    (b"GET", "/ws", [(b"upgrade", b"websocket")], Route.READ),  # no Connection: upgrade, no upgrade
])
def test_classify(method: bytes, path: str, headers: list[tuple[bytes, bytes]], route: Route) -> None:
    assert classify(method, path, headers, passthrough=("*.png",), always_forward=("/login", "/admin/*")) is route


def test_path_of() -> None:
    assert path_of(b"/a%20b/c?x=1") == "/a b/c"


def test_txid_from_header_then_cookie() -> None:
    assert requested_txid([]) is None
    assert requested_txid([(b"cookie", b"a=1; __txid=000000000000002a; b=2")]) == 42
    assert requested_txid([(b"cookie", b"__txid=2a"), (b"pylitefs-txid", b"0000000000000100")]) == 256
    assert cookie([(b"cookie", b"x__txid=5")], "__txid") is None
    for bad in (b"zz", b"", b"1" * 17, b"-1"):
        with pytest.raises(ValueError, match="not a TXID"):
            requested_txid([(b"pylitefs-txid", bad)])


def test_txid_headers() -> None:
    assert format_txid(42) == "000000000000002a"
    headers = dict(txid_headers(42))
    assert headers[b"Pylitefs-Txid"] == b"000000000000002a"
    assert headers[b"set-cookie"].startswith(b"__txid=000000000000002a; Path=/; Max-Age=300; HttpOnly")
    assert requested_txid([(b"cookie", headers[b"set-cookie"].split(b";")[0])]) == 42


def test_hop_by_hop_headers_dropped() -> None:
    headers = [(b"host", b"h"), (b"connection", b"close, x-secret"), (b"x-secret", b"s"), (b"keep-alive", b"5"),
               (b"transfer-encoding", b"chunked"), (b"te", b"trailers"), (b"x-app", b"1")]
    assert end_to_end(headers) == [(b"host", b"h"), (b"x-app", b"1")]
    assert request_headers(headers, chunked=True, upgrade=False) == [
        (b"host", b"h"), (b"x-app", b"1"), (b"transfer-encoding", b"chunked")]
    kept = end_to_end(UPGRADE, upgrade=True)
    assert (b"upgrade", b"websocket") in kept and (b"connection", b"upgrade") in kept
    assert (b"upgrade", b"websocket") not in end_to_end(UPGRADE)


def test_forwarded_headers_added() -> None:
    out = dict(add_forwarded([(b"host", b"app.example")], client_ip="10.0.0.7"))
    assert out[b"x-forwarded-for"] == b"10.0.0.7"
    assert out[b"x-forwarded-proto"] == b"http" and out[b"x-forwarded-host"] == b"app.example"
    assert out[b"forwarded"] == b'for=10.0.0.7;proto=http;host="app.example"'


def test_forwarded_headers_from_a_load_balancer_kept() -> None:
    out = add_forwarded([(b"host", b"node1:8080"), (b"x-forwarded-for", b"1.2.3.4"),
                         (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"app.example"),
                         (b"forwarded", b"for=1.2.3.4")], client_ip="::1")
    values = dict(out)
    assert values[b"x-forwarded-for"] == b"1.2.3.4, ::1"
    assert values[b"forwarded"] == b'for=1.2.3.4, for="[::1]";proto=https;host="app.example"'
    assert [k for k, _ in out].count(b"x-forwarded-proto") == 1 and values[b"x-forwarded-proto"] == b"https"


def test_redirect_location() -> None:
    assert redirect_location("http://10.0.0.1:8080/", b"/items?x=1") == "http://10.0.0.1:8080/items?x=1"


def test_health() -> None:
    assert health("primary", False, 0, 10.0)[0] == 200
    assert health("replica", True, 500, 10.0) == (200, {"ok": True, "role": "replica", "lag_ms": 500})
    status, body = health("replica", False, 0, 10.0)
    assert status == 503 and body["reason"] == "not connected to a primary"
    status, body = health("replica", True, 12_000, 10.0)
    assert status == 503 and "lagging the primary by 12000 ms" in str(body["reason"])
