"""The write-forwarding proxy (issue 6): real nodes, real applications, real HTTP on loopback.

Every node runs `pylitefs mount` with a proxy in front of an application on
its own mount: the sample app (pylitefs/sampleapp.py, a WSGI app on SQLite)
or a WebSocket echo app (tests/apps/ws_echo.py). Clients are stdlib HTTP
clients, raw sockets and a wsproto WebSocket client.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, RejectConnection, TextMessage
from wsproto.events import Request as WsRequest

from pylitefs.cluster import Cluster, Node, free_port, wait_caught_up, wait_for, wait_primary
from pylitefs.etcdserver import EtcdServer
from pylitefs.proxy_rules import format_txid

pytestmark = pytest.mark.fuse

DB = "app.db"
ROOT = Path(__file__).parent.parent.parent
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass
class Site:
    """Nodes with proxies (name -> proxy port) and the application processes behind them."""

    cluster: Cluster
    nodes: list[Node] = field(default_factory=list)
    proxy_ports: dict[str, int] = field(default_factory=dict)
    app_ports: dict[str, int] = field(default_factory=dict)
    apps: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def port(self, node: Node) -> int:
        return self.proxy_ports[node.name]

    def add(self, make: Any, name: str, *, app: list[str] | None, mode: str = "forward", **kw: Any) -> Node:
        """Start node `name` (make(name, proxy=..., **kw)) and, unless `app` is None, its application."""
        app_port, proxy_port = free_port(), free_port()
        proxy = {"addr": f"127.0.0.1:{proxy_port}", "target": f"127.0.0.1:{app_port}", "db": DB, "mode": mode,
                 "wait-timeout": "1s", "client-timeout": "1s"}
        node = make(name, proxy=proxy, **kw)
        self.nodes.append(node)
        self.proxy_ports[name] = proxy_port
        self.app_ports[name] = app_port
        if app is not None:
            log = open(self.cluster.root / f"{name}-app.log", "wb")
            args = [a.format(db=node.mountpoint / DB, port=app_port, name=name) for a in app]
            self.apps.append(subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log, stderr=log))
            log.close()
            wait_for(lambda: _connects(app_port), 20, f"{name}'s application on port {app_port}")
        return node

    def stop(self) -> None:
        for app in self.apps:
            app.kill()
            app.wait(10)
        self.cluster.stop()


SAMPLE_APP = ["-m", "pylitefs.sampleapp", "--db", "{db}", "--port", "{port}", "--name", "{name}"]
WS_APP = ["-m", "tests.apps.ws_echo", "--port", "{port}", "--name", "{name}"]


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def request(port: int, method: str, path: str = "/", body: str | bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to 127.0.0.1:port: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send `data` on a fresh connection and return everything received until the proxy closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A static primary and two replicas, each with the sample app behind its proxy."""
    s = Site(Cluster(tmp_path_factory.mktemp("proxy")))
    try:
        s.add(s.cluster.primary, "primary", app=SAMPLE_APP)
        for name in ("replica1", "replica2"):
            s.add(s.cluster.replica, name, app=SAMPLE_APP)
        yield s
    finally:
        s.stop()


def test_writes_through_replicas_land_on_the_primary_and_are_read_back_anywhere(site: Site) -> None:
    primary, r1, r2 = site.nodes
    for i in range(10):
        via, then = (r1, r2) if i % 2 == 0 else (r2, r1)
        status, headers, body = request(site.port(via), "POST", "/?n=1", f"text=w{i}", FORM)
        assert status == 201, body
        row = json.loads(body)
        assert row["node"] == "primary" and row["text"] == f"w{i}"  # the primary's application wrote it
        txid = int(headers["pylitefs-txid"], 16)
        assert 0 < txid <= primary.position(DB)[0]
        cookie = headers["set-cookie"].split(";")[0]
        assert cookie == f"__txid={format_txid(txid)}"
        status, _, body = request(site.port(then), "GET", "/", headers={"Cookie": cookie})
        assert status == 200
        page = json.loads(body)
        assert page["node"] == then.name and row in page["rows"]  # served by the other replica, with the write
    # JSON bodies and the primary's own proxy work too; reads there carry no TXID
    status, headers, body = request(site.port(primary), "POST", "/", json.dumps({"text": "direct"}),
                                    {"Content-Type": "application/json"})
    assert status == 201 and "pylitefs-txid" in headers
    status, headers, _ = request(site.port(primary), "GET", "/")
    assert status == 200 and "pylitefs-txid" not in headers


def test_a_read_waits_for_the_clients_txid(site: Site) -> None:
    primary, r1, _ = site.nodes
    assert request(site.port(primary), "POST", "/", "text=schema", FORM)[0] == 201  # each POST after: one TXID
    start = wait_caught_up(primary, [r1], DB)[0]
    wanted = {"Pylitefs-Txid": format_txid(start + 2)}
    with ThreadPoolExecutor(1) as pool:
        read = pool.submit(request, site.port(r1), "GET", "/", None, wanted)
        assert request(site.port(primary), "POST", "/", "text=first", FORM)[0] == 201
        wait_caught_up(primary, [r1], DB)
        assert not read.done()  # the replica has start+1: still waiting
        assert request(site.port(primary), "POST", "/", "text=second", FORM)[0] == 201
        status, _, body = read.result(timeout=10)
    assert status == 200
    assert {"first", "second"} <= {row["text"] for row in json.loads(body)["rows"]}
    began = time.monotonic()
    status, _, body = request(site.port(r1), "GET", "/", headers={"Cookie": f"__txid={format_txid(start + 1000)}"})
    assert status == 504 and b"did not reach TXID" in body
    assert 0.9 < time.monotonic() - began < 5  # proxy.wait-timeout: 1s
    status, _, body = request(site.port(r1), "GET", "/", headers={"Cookie": "__txid=nope"})
    assert status == 400 and b"not a TXID" in body


def test_health(site: Site) -> None:
    for node in site.nodes:
        status, headers, body = request(site.port(node), "GET", "/pylitefs/health")
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body)["role"] == ("primary" if node.name == "primary" else "replica")


def test_a_write_to_a_replicas_app_itself_fails_readonly(site: Site) -> None:
    """What the proxy spares the application: a write on a replica's mount."""
    primary, r1, _ = site.nodes
    assert request(site.port(r1), "POST", "/", "text=through the proxy", FORM)[0] == 201
    wait_caught_up(primary, [r1], DB)
    status, _, body = request(site.app_ports["replica1"], "POST", "/", "text=x", FORM)
    assert status == 500 and "readonly database" in json.loads(body)["error"]


def test_bad_input_gets_clear_errors_and_the_proxy_keeps_serving(site: Site) -> None:
    port = site.port(site.nodes[1])
    assert raw(port, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n").startswith(
        b"HTTP/1.1 431 ")
    began = time.monotonic()
    assert raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n") == b""  # a slow client is dropped
    assert 0.9 < time.monotonic() - began < 5  # proxy.client-timeout: 1s
    # a client that stops sending midway through its body is dropped too
    assert raw(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf") == b""
    # pipelined requests on one connection are answered in order
    both = raw(port, b"GET /pylitefs/health HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert both.count(b"HTTP/1.1 200 ") == 2
    assert request(port, "GET", "/")[0] == 200


@pytest.fixture(scope="module")
def ws_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A static primary running the WebSocket echo app, a forwarding replica (no application) and a
    redirecting one."""
    s = Site(Cluster(tmp_path_factory.mktemp("proxy-ws")))
    try:
        s.add(s.cluster.primary, "wsprimary", app=WS_APP)
        s.add(s.cluster.replica, "forwarder", app=None)
        s.add(s.cluster.replica, "redirector", app=None, mode="redirect")
        yield s
    finally:
        s.stop()


def ws_echo(port: int, texts: list[str]) -> list[str]:
    """Open a WebSocket to 127.0.0.1:port/ws, send `texts`, return the replies, close."""
    ws = WSConnection(ConnectionType.CLIENT)
    replies: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:

        def events() -> list[Any]:
            data = s.recv(65536)
            ws.receive_data(data or None)
            assert data, "the connection closed"
            return list(ws.events())

        s.sendall(ws.send(WsRequest(host=f"127.0.0.1:{port}", target="/ws")))
        accepted = False
        while not accepted:
            got = events()
            assert not any(isinstance(e, RejectConnection) for e in got)
            accepted = any(isinstance(e, AcceptConnection) for e in got)
        for text in texts:
            s.sendall(ws.send(Message(data=text)))
            reply, finished = "", False
            while not finished:  # a long message arrives in fragments
                for e in events():
                    if isinstance(e, TextMessage):
                        reply += e.data
                        finished = e.message_finished
            replies.append(reply)
        s.sendall(ws.send(CloseConnection(code=1000)))
    return replies


def test_websocket_through_a_replica_reaches_the_primarys_app(ws_site: Site) -> None:
    _, forwarder, _ = ws_site.nodes
    assert ws_echo(ws_site.port(forwarder), ["hello", "x" * 200_000]) == ["wsprimary: hello",
                                                                          "wsprimary: " + "x" * 200_000]
    # a read on the forwarder goes to its own application, which is not running: 502
    status, _, body = request(ws_site.port(forwarder), "GET", "/")
    assert status == 502 and b"application is unreachable" in body


def test_redirect_mode(ws_site: Site) -> None:
    primary, _, redirector = ws_site.nodes
    status, headers, _ = request(ws_site.port(redirector), "POST", "/items?x=1", "text=a", FORM)
    assert status == 307
    assert headers["location"] == f"http://127.0.0.1:{ws_site.port(primary)}/items?x=1"


def test_no_primary_means_503_with_retry_after(ws_site: Site) -> None:
    primary, forwarder, redirector = ws_site.nodes
    primary.stop()
    for node in (forwarder, redirector):
        status, headers, body = request(ws_site.port(node), "POST", "/", "text=a", FORM)
        if node is forwarder:  # its cached primary proxy refuses connections
            assert status == 503 and headers["retry-after"] == "1", body
        wait_for(lambda n=node: request(ws_site.port(n), "GET", "/pylitefs/health")[0] == 503, 10,
                 f"{node.name}'s health to fail")
        status, headers, body = request(ws_site.port(node), "GET", "/pylitefs/health")
        assert json.loads(body)["reason"] == "not connected to a primary"
        status, headers, body = request(ws_site.port(node), "POST", "/", "text=a", FORM)
        assert status == 503 and headers["retry-after"] == "1", body


def test_failover_window_503_then_writes_succeed(tmp_path: Path, etcd: EtcdServer) -> None:
    s = Site(Cluster(tmp_path))
    try:
        for name in ("n1", "n2", "n3"):
            s.add(lambda n, **kw: s.cluster.etcd_node(n, [etcd.endpoint], ttl="2s", **kw), name, app=SAMPLE_APP)
        old = wait_primary(s.nodes)
        survivors = [n for n in s.nodes if n is not old]
        via = survivors[0]
        wait_for(lambda: all(request(s.port(n), "GET", "/pylitefs/health")[0] == 200 for n in s.nodes), 30,
                 "every node healthy")
        status, _, body = request(s.port(via), "POST", "/", "text=before", FORM)
        assert status == 201 and json.loads(body)["node"] == old.name
        wait_caught_up(old, survivors, DB)
        old.crash()
        status, headers, body = request(s.port(via), "POST", "/", "text=during", FORM)
        assert status == 503 and headers["retry-after"] == "1", body
        new = wait_primary(survivors)

        def write() -> tuple[dict[str, Any], str] | None:
            status, headers, body = request(s.port(via), "POST", "/", "text=after", FORM)
            return (json.loads(body), headers["pylitefs-txid"]) if status == 201 else None

        row, txid = wait_for(write, 30, "a write through the proxy after the failover")
        assert row["node"] == new.name
        status, _, body = request(s.port(via), "GET", "/", headers={"Pylitefs-Txid": txid})
        assert {"before", "after"} <= {r["text"] for r in json.loads(body)["rows"]}
    finally:
        s.stop()
