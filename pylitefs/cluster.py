"""A local cluster of real `pylitefs mount` processes on loopback: tests, benchmarks, demo.

Each node is its own process with its own mount, data dir, config file and
HTTP port; `Cluster.stop()` leaves nothing running or mounted, whatever
happened before.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pylitefs.process import MountProcess

SECRET = "local-cluster-secret"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll `condition` until it returns something truthy; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (OSError, sqlite3.Error, ValueError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


class Node(MountProcess):
    """One cluster node: a MountProcess with a config file and an HTTP port."""

    name: str
    port: int
    config_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def position(self, db: str) -> tuple[int, int] | None:
        """(TXID, checksum) from the mount's `-pos` file, None if the database is absent."""
        try:
            text = (self.mountpoint / f"{db}-pos").read_text()
        except FileNotFoundError:
            return None
        txid, checksum = text.strip().split("/")
        return int(txid, 16), int(checksum, 16)

    def http(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            return json.loads(resp.read())

    def crash(self) -> None:
        """kill -9, as if the node's machine died; returns once the daemon is gone.

        A daemon killed while one of its own threads waits on its own mount
        is finished by its guard (fs/guard.py), as a dead machine would be.
        """
        assert self.proc is not None
        self.proc.kill()
        if self.wait(10) is None:
            raise AssertionError(f"{self.name}: pylitefs pid {self.proc.pid} did not exit after kill -9")

    def role(self) -> str | None:
        """"primary" or "replica" as the node's /info says; None if it does not answer."""
        try:
            return str(self.http("/info")["role"])
        except (OSError, ValueError, KeyError):
            return None


class Cluster:
    """Creates nodes under `root`; every one is stopped by `stop()`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[Node] = []
        self.primary_url = ""

    def config(self, name: str, port: int, *, candidate: bool, **sections: dict[str, Any]) -> Path:
        """Write `name`'s litefs.yml; extra sections/keys override the defaults."""
        cfg: dict[str, Any] = {
            "fuse": {"dir": str(self.root / name / "mnt")},
            "data": {"dir": str(self.root / name / "data")},
            "http": {"addr": f"127.0.0.1:{port}"},
            "lease": {"type": "static", "candidate": candidate, "hostname": name,
                      "advertise-url": self.primary_url or f"http://127.0.0.1:{port}"},
            "cluster": {"secret": SECRET},
        }
        for section, values in sections.items():
            cfg.setdefault(section, {}).update(values)
        path = self.root / name / "litefs.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg))
        return path

    def node(self, name: str, *, candidate: bool, port: int | None = None, start: bool = True,
             **sections: dict[str, Any]) -> Node:
        port = port or free_port()
        path = self.config(name, port, candidate=candidate, **sections)
        node = Node(mountpoint=self.root / name / "mnt", data_dir=self.root / name / "data",
                    log_path=self.root / name / "pylitefs.log", extra_args=["--config", str(path)])
        node.name, node.port, node.config_path = name, port, path
        self.nodes.append(node)
        if candidate:
            self.primary_url = node.url
        if start:
            node.start()
        return node

    def etcd_node(self, name: str, endpoints: list[str], *, candidate: bool = True, ttl: str = "2s",
                  prefix: str = "/pylitefs/", start: bool = True, port: int | None = None,
                  **sections: dict[str, Any]) -> Node:
        """A node of an etcd-leased cluster (lease.type: etcd) using the etcd at `endpoints`."""
        port = port or free_port()
        lease = {"type": "etcd", "candidate": candidate, "hostname": name,
                 "advertise-url": f"http://127.0.0.1:{port}",
                 "etcd": {"endpoints": list(endpoints), "ttl": ttl, "timeout": "500ms", "prefix": prefix}}
        lease.update(sections.pop("lease", {}))
        path = self.config(name, port, candidate=candidate, **sections)
        cfg = yaml.safe_load(path.read_text())
        cfg["lease"] = lease
        path.write_text(yaml.safe_dump(cfg))
        node = Node(mountpoint=self.root / name / "mnt", data_dir=self.root / name / "data",
                    log_path=self.root / name / "pylitefs.log", extra_args=["--config", str(path)])
        node.name, node.port, node.config_path = name, port, path
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def primary(self, name: str = "primary", **sections: dict[str, Any]) -> Node:
        return self.node(name, candidate=True, **sections)

    def replica(self, name: str, **sections: dict[str, Any]) -> Node:
        assert self.primary_url, "start the primary first"
        return self.node(name, candidate=False, **sections)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def wait_primary(nodes: list[Node], timeout: float = 30) -> Node:
    """Wait until exactly one of the running `nodes` says it is primary; return it."""
    def one() -> Node | None:
        primaries = [n for n in nodes if n.alive() and n.role() == "primary"]
        return primaries[0] if len(primaries) == 1 else None

    return wait_for(one, timeout, "one primary among " + ", ".join(n.name for n in nodes))


def wait_caught_up(primary: Node, replicas: list[Node], db: str, timeout: float = 60) -> tuple[int, int]:
    """Wait until every replica shows the primary's position of `db`; return it."""
    target = wait_for(lambda: primary.position(db), timeout, f"{db} on the primary")
    for replica in replicas:
        wait_for(lambda r=replica: r.position(db) == target, timeout,
                 f"{replica.name} to reach {db} at TXID {target[0]} (it was at {replica.position(db)} "
                 "when the wait began)")
    return target


def committed_image(node: Node, db: str) -> bytes:
    """`db`'s committed content on a primary: checkpointed through the mount, then its data-dir file.

    (On a replica the WAL stays empty: its data-dir file is the content.)
    """
    conn = sqlite3.connect(node.mountpoint / db)
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return (node.data_dir / db).read_bytes()
