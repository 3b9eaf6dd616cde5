"""Nodes leased through an etcd that wants a password, or TLS with client certs (issue 5).

The etcd servers and certs come from tests/election/test_etcd_security.py; the auth test's
etcd hands out JWT tokens that expire 2 s after they were issued, used or not, so the nodes' clients
must re-authenticate as they go, and the primary keep its term meanwhile.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pylitefs.cluster import Cluster, Node, wait_caught_up, wait_for, wait_primary
from pylitefs.etcdserver import EtcdServer
from pylitefs.process import is_mounted
from tests.election.test_etcd_security import PASSWORD, jwt_etcd_server, running, tls_etcd_server

pytestmark = pytest.mark.fuse

DB = "app.db"


@pytest.fixture
def jwt_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    yield from running(jwt_etcd_server(tmp_path), PASSWORD)


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    yield from running(tls_etcd_server(tmp_path))


def etcd_node(cluster: Cluster, name: str, etcd: EtcdServer, *, start: bool = True, **keys: Any) -> Node:
    """A candidate node leased through `etcd`, with extra lease.etcd keys (credentials, TLS files)."""
    lease_etcd = {"endpoints": [etcd.endpoint], "ttl": "2s", "timeout": "500ms", "prefix": "/pylitefs/", **keys}
    return cluster.etcd_node(name, [etcd.endpoint], start=start, lease={"etcd": lease_etcd})


def write_rows(node: Node, rows: int) -> None:
    conn = sqlite3.connect(node.mountpoint / DB, timeout=10)
    try:
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        with conn:
            conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    finally:
        conn.close()


def test_nodes_with_a_password_elect_a_primary_and_replicate(jwt_etcd: EtcdServer, cluster: Cluster) -> None:
    nodes = [etcd_node(cluster, name, jwt_etcd, username="root", password=PASSWORD) for name in ("n1", "n2")]
    primary = wait_primary(nodes)
    write_rows(primary, 100)
    wait_caught_up(primary, [n for n in nodes if n is not primary], DB)
    # Past several token lifetimes, the primary still holds its term and replicates.
    term = primary.http("/info")["term"]
    wait_for(lambda: primary.log_text().count("no longer accepts our auth token") >= 2, timeout=20,
             what="the primary to re-authenticate after its token expired, twice")
    write_rows(primary, 100)
    wait_caught_up(primary, [n for n in nodes if n is not primary], DB)
    assert primary.role() == "primary" and primary.http("/info")["term"] == term, primary.log_text()[-3000:]

    # Wrong credentials cannot get better by retrying: the node stops at once, saying why, unmounted.
    intruder = etcd_node(cluster, "intruder", jwt_etcd, start=False, username="root", password="wrong")
    intruder.mountpoint.mkdir(parents=True)
    intruder.proc = subprocess.Popen(intruder.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
    out, _ = intruder.proc.communicate(timeout=30)
    assert intruder.proc.returncode == 1, out
    assert f"pylitefs: cannot connect to etcd at {jwt_etcd.endpoint}: authentication failed for user " \
           "'root'" in out, out
    assert "Traceback" not in out and not is_mounted(str(intruder.mountpoint)), out
    assert wait_primary(nodes) is primary


def test_a_node_over_tls_becomes_primary(tls_etcd: EtcdServer, cluster: Cluster) -> None:
    tls = tls_etcd.tls
    assert tls is not None and tls_etcd.endpoint.startswith("https://")
    node = etcd_node(cluster, "n1", tls_etcd, **{"tls-ca": str(tls.ca), "tls-cert": str(tls.client_cert),
                                                "tls-key": str(tls.client_key)})
    assert wait_primary([node]) is node
    write_rows(node, 10)
    assert node.position(DB) is not None

    certless = etcd_node(cluster, "certless", tls_etcd, **{"tls-ca": str(tls.ca)})
    expected = f"at {tls_etcd.endpoint}: TLS failed: etcd refused the connection"
    wait_for(lambda: expected in certless.log_text(), timeout=10, what="the node without a client cert to say why")
    assert "Traceback" not in certless.log_text(), certless.log_text()[-3000:]
    assert certless.role() == "replica" and node.role() == "primary"
