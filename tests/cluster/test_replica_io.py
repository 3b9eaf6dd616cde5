"""What applications and peers see: read-only replicas, `.primary`/`.lag`, bad input on the port."""

from __future__ import annotations

import secrets
import socket
import sqlite3
import struct

import pytest

from replication.wire import PROTOCOL_VERSION, Hello, encode_message
from pylitefs.cluster import Cluster, Node, wait_caught_up, wait_for

pytestmark = pytest.mark.fuse


def make_db(node: Node, db: str, mode: str) -> None:
    conn = sqlite3.connect(node.mountpoint / db, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={mode}")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO t(v) VALUES('from the primary')")
    conn.close()


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal"])
@pytest.mark.parametrize("mmap", [False, True])
def test_writes_on_a_replica_fail_cleanly(cluster: Cluster, mode: str, mmap: bool) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r1")
    make_db(primary, "ro.db", mode)
    before = wait_caught_up(primary, [replica], "ro.db")
    conn = sqlite3.connect(replica.mountpoint / "ro.db", isolation_level=None, timeout=1)
    try:
        if mmap:
            conn.execute("PRAGMA mmap_size=268435456")
        assert conn.execute("SELECT v FROM t").fetchall() == [("from the primary",)]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("INSERT INTO t(v) VALUES('from a replica')")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("CREATE TABLE other(x)")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)  # still usable
        with sqlite3.connect(primary.mountpoint / "ro.db", isolation_level=None) as pconn:
            pconn.execute("INSERT INTO t(v) VALUES('second')")
        wait_for(lambda: conn.execute("SELECT count(*) FROM t").fetchone() == (2,), 30,
                 "the open replica connection to see the next commit")
    finally:
        conn.close()
    assert replica.position("ro.db")[0] == before[0] + 1
    assert (replica.mountpoint / "ro.db").read_bytes()[:16] == b"SQLite format 3\x00"


def test_primary_and_lag_files(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r1")
    assert not (primary.mountpoint / ".primary").exists()
    assert (primary.mountpoint / ".lag").read_text() == "0\n"
    wait_for(lambda: (replica.mountpoint / ".primary").read_text() == "primary\n", 30, ".primary on the replica")
    make_db(primary, "lag.db", "wal")
    wait_caught_up(primary, [replica], "lag.db")
    wait_for(lambda: (replica.mountpoint / ".lag").read_text() == "0\n", 30, ".lag to be 0 when caught up")
    info = replica.http("/status")
    assert info["role"] == "replica" and info["databases"]["lag.db"]["txid"] == replica.position("lag.db")[0]
    assert "r1" in primary.http("/status")["replicas"]


def raw(node: Node, data: bytes, *, upgrade: bool = True, read: bool = True) -> bytes:
    """Send `data` to the node's port (after the stream upgrade, unless not `upgrade`); what came back."""
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        if upgrade:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: pylitefs-stream\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                assert chunk, "closed before the upgrade"
                head += chunk
            assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while read:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            out += chunk
        return out


def test_bad_input_on_the_stream_port_is_refused_and_logged(cluster: Cluster) -> None:
    primary = cluster.primary()
    good = cluster.replica("good")
    make_db(primary, "x.db", "wal")
    wait_caught_up(primary, [good], "x.db")

    assert raw(primary, b"\x00\xffgarbage\r\n\r\n", upgrade=False).startswith(b"HTTP/1.1 400")
    raw(primary, b"\x00\x00\x00\x10\xc1\xc1garbage-garbage")  # not msgpack
    raw(primary, b"\x00\x00\x10")  # truncated length
    raw(primary, struct.pack(">I", 1 << 31) + b"x" * 100)  # oversized
    raw(primary, struct.pack(">I", 100_000) + b"x" * 100_000)  # more than a handshake frame may be
    raw(primary, encode_message(Hello(PROTOCOL_VERSION + 98, "", "old", secrets.token_bytes(16), "")))
    bad_secret = cluster.replica("intruder", cluster={"secret": "wrong"})
    other_cluster = cluster.replica("stranger", cluster={"id": "0123456789abcdef"})
    wait_for(lambda: "could not prove it knows the cluster secret" in primary.log_text(), 30,
             "the wrong secret to be refused")
    wait_for(lambda: "belongs to cluster 0123456789abcdef" in primary.log_text(), 30,
             "the other cluster to be refused")
    log_text = primary.log_text()
    assert "bad HTTP request" in log_text
    assert f"protocol version {PROTOCOL_VERSION + 98} is not supported" in log_text
    assert "frame of 2147483648 bytes announced, more than the limit" in log_text
    assert "frame of 100000 bytes announced" in log_text
    assert "connection closed in the middle of a frame" in log_text
    assert "not valid msgpack" in log_text
    assert "refused replication" in bad_secret.log_text()
    assert not (bad_secret.mountpoint / "x.db").exists()
    assert not (other_cluster.mountpoint / "x.db").exists()
    # and everyone else is still served
    with sqlite3.connect(primary.mountpoint / "x.db", isolation_level=None) as conn:
        conn.execute("INSERT INTO t(v) VALUES('after the attacks')")
    wait_caught_up(primary, [good], "x.db")
    assert primary.alive() and good.alive()
