"""The HTTP API and the admin CLI on real nodes: /metrics, /events, status, import, export, verify.

Real `pylitefs mount` processes on loopback (static lease; etcd for a
primary change), the real CLI in subprocesses, and Prometheus's own text
parser for `/metrics`.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import sqlite3
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pylitefs.cluster import Cluster, Node, wait_caught_up, wait_for, wait_primary
from pylitefs.etcdserver import EtcdServer

pytestmark = pytest.mark.fuse

DB = "app.db"


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pylitefs", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, **(env or {})})


def write(node: Node, *values: int) -> None:
    conn = sqlite3.connect(node.mountpoint / DB)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS t(x)")
        conn.commit()
        for value in values:
            conn.execute("INSERT INTO t VALUES (?)", (value,))
            conn.commit()
    finally:
        conn.close()


def rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT * FROM t ORDER BY rowid").fetchall()
    finally:
        conn.close()


def metrics(node: Node) -> dict[str, Any]:
    """Every sample of the node's /metrics, parsed by prometheus_client: (name, labels) -> value."""
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    return {"families": families, "samples": samples}


class Events:
    """A client of a node's GET /events, reading lines in a thread."""

    def __init__(self, node: Node) -> None:
        host, port = urllib.parse.urlsplit(node.url).netloc.split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.conn.request("GET", "/events")
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.response:
                self.lines.put(json.loads(line))
        except (OSError, ValueError, http.client.HTTPException):
            pass

    def next(self, timeout: float = 30) -> dict[str, Any]:
        return self.lines.get(timeout=timeout)

    def until(self, predicate: Any, timeout: float = 30) -> list[dict[str, Any]]:
        """Every event up to and including the first matching `predicate`."""
        got = []
        while True:
            event = self.next(timeout)
            got.append(event)
            if predicate(event):
                return got

    def close(self) -> None:
        self.conn.close()


def test_metrics_events_and_status_on_a_three_node_cluster(cluster: Cluster) -> None:
    primary = cluster.primary()
    replicas = [cluster.replica("r1"), cluster.replica("r2")]
    write(primary, 0)
    start = wait_caught_up(primary, replicas, DB)
    events = {n.name: Events(n) for n in (primary, replicas[0])}
    try:
        inits = {name: e.next() for name, e in events.items()}
        write(primary, 1, 2, 3, 4, 5)
        end = wait_caught_up(primary, replicas, DB)
        assert end[0] == start[0] + 5
        for name, e in events.items():
            init = inits[name]
            assert init["type"] == "init" and init["primary"] == "primary" and init["term"] == 1
            assert init["databases"][DB]["txid"] == start[0]
            txs = e.until(lambda ev: ev.get("type") == "tx" and ev["txid"] == end[0])
            assert [ev["txid"] for ev in txs] == list(range(start[0] + 1, end[0] + 1)), name
            assert all(ev["db"] == DB and ev["pages"] >= 1 and ev["time"] > 0 for ev in txs)
            assert txs[-1]["checksum"] == f"{end[1]:016x}"
    finally:
        for e in events.values():
            e.close()

    wait_for(lambda: all(r["positions"].get(DB, {}).get("txid") == end[0]
                         for r in primary.http("/status")["replicas"].values()), 10, "every replica's ack")
    m = metrics(primary)
    s = m["samples"]
    assert s[("pylitefs_is_primary", ())] == 1 and s[("pylitefs_term", ())] == 1
    assert s[("pylitefs_db_txid", (("db", DB),))] == primary.position(DB)[0]
    assert s[("pylitefs_transactions_logged_total", (("db", DB),))] >= 6
    assert s[("pylitefs_connected_replicas", ())] == 2
    assert s[("pylitefs_replica_txid", (("db", DB), ("replica", "r1")))] == end[0]
    assert m["families"]["pylitefs_commit_seconds"].type == "histogram"
    assert s[("pylitefs_commit_seconds_count", ())] >= 6
    assert s[("pylitefs_commit_seconds_bucket", (("le", "+Inf"),))] == s[("pylitefs_commit_seconds_count", ())]
    m = metrics(replicas[0])
    s = m["samples"]
    assert s[("pylitefs_is_primary", ())] == 0 and s[("pylitefs_stream_connected", ())] == 1
    assert s[("pylitefs_db_txid", (("db", DB),))] == replicas[0].position(DB)[0] == end[0]
    assert s[("pylitefs_transactions_applied_total", (("db", DB),))] >= 5
    assert s[("pylitefs_apply_seconds_count", ())] >= 1
    assert m["families"]["pylitefs_transactions_logged"].type == "counter"

    status = replicas[0].http("/status")
    assert status["databases"][DB]["txid"] == end[0] and status["nodes"]["primary"] == primary.url
    out = cli("status", "--url", primary.url)
    assert out.returncode == 0, out.stderr
    assert replicas[0].url in out.stdout and replicas[1].url in out.stdout  # found through the primary
    table = out.stdout.splitlines()
    assert table[0].split()[:4] == ["NODE", "ROLE", "TERM", "DATABASE"]
    for name in ("primary", "r1", "r2"):
        assert any(line.split()[0] == name and str(end[0]) in line.split() for line in table[1:]), out.stdout
    as_json = json.loads(cli("status", "--url", replicas[0].url, "--json").stdout)
    assert set(as_json) == {"primary", "r1", "r2"} and as_json["r1"]["role"] == "replica"


def test_import_export_and_verify(cluster: Cluster, tmp_path: Path) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r1")
    write(primary, 1, 2)
    before = wait_caught_up(primary, [replica], DB)
    config = str(primary.config_path)

    source = tmp_path / "import.db"
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE t(x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(5000)])
    conn.commit()
    conn.close()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all\n" * 1000)

    # Refused, nothing changed: not SQLite, a wrong token, a replica, a bad name.
    out = cli("import", "--config", config, "--name", DB, str(garbage))
    assert out.returncode == 1 and "not a SQLite database" in out.stderr
    out = cli("import", "--url", primary.url, "--name", DB, str(source), cwd=tmp_path,
              env={"PYLITEFS_ADMIN_TOKEN": "wrong"})
    assert out.returncode == 1 and "HTTP 401" in out.stderr and "Authorization: Bearer" in out.stderr
    out = cli("import", "--config", config, "--url", replica.url, "--name", DB, str(source))
    assert out.returncode == 1 and "HTTP 409" in out.stderr and "not the primary: import on primary" in out.stderr
    out = cli("import", "--config", config, "--name", "../x.db", str(source))
    assert out.returncode == 1 and "HTTP 400" in out.stderr
    assert primary.position(DB) == before and rows(primary.mountpoint / DB) == [(1,), (2,)]

    out = cli("import", "--config", config, "--name", DB, str(source))
    assert out.returncode == 0, out.stderr
    assert f"TXID {before[0] + 1} " in out.stdout
    after = wait_caught_up(primary, [replica], DB)
    assert after[0] == before[0] + 1
    expected = rows(source)
    assert rows(primary.mountpoint / DB) == rows(replica.mountpoint / DB) == expected

    exported = tmp_path / "export.db"
    out = cli("export", "--config", config, "--url", replica.url, "--name", DB, str(exported))
    assert out.returncode == 0, out.stderr
    assert f"at TXID {after[0]} (checksum {after[1]:016x})" in out.stdout
    assert rows(exported) == expected
    out = cli("export", "--url", primary.url, "--name", DB, str(tmp_path / "x.db"), cwd=tmp_path,
              env={"PYLITEFS_ADMIN_TOKEN": "wrong"})
    assert out.returncode == 1 and "HTTP 401" in out.stderr and not (tmp_path / "x.db").exists()

    urls = ["--url", primary.url]  # the replica is found through the primary (it told its URL)
    out = cli("verify", "--config", config, *urls)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all 2 node(s) agree" in out.stdout
    with open(replica.data_dir / DB, "r+b") as f:  # a copy changed behind the node's back
        f.seek(4096 + 100)
        f.write(b"\xde\xad" * 500)
    out = cli("verify", "--config", config, *urls)
    assert out.returncode == 1
    assert "DISAGREES: r1" in out.stdout and f"r1: {DB} at TXID {after[0]}: DISAGREES" in out.stdout
    assert f"primary: {DB} at TXID {after[0]}: ok" in out.stdout


def test_events_show_a_primary_change(etcd: EtcdServer, cluster: Cluster) -> None:
    nodes = [cluster.etcd_node(name, [etcd.endpoint]) for name in ("n1", "n2")]
    primary = wait_primary(nodes)
    other = next(n for n in nodes if n is not primary)
    write(primary, 1)
    wait_caught_up(primary, [other], DB)
    events = Events(other)
    try:
        init = events.next()
        assert init["type"] == "init" and init["role"] == "replica" and init["primary"] == primary.name
        out = cli("handoff", "--config", str(primary.config_path), "--to", other.name)
        assert out.returncode == 0, out.stderr
        change = events.until(lambda ev: ev.get("type") == "primary" and ev["primary"] == other.name)[-1]
        assert change["term"] > init["term"]
        write(other, 2)
        tx = events.until(lambda ev: ev.get("type") == "tx")[-1]
        assert tx["txid"] == other.position(DB)[0]
    finally:
        events.close()
    status = cli("status", "--url", other.url)
    assert status.returncode == 0 and all(n.name in status.stdout for n in nodes), status.stdout
