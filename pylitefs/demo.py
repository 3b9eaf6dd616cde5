"""`make demo`: a local three-node cluster with its own etcd, a web app behind each node's proxy, a failover.

Everything lives under `./demo` and on loopback: an etcd server, three
pylitefs nodes (all candidates, `lease.type: etcd`), each with its own mount,
data dir, HTTP port and write-forwarding proxy, and the sample web
application (pylitefs/sampleapp.py, SQLite on the node's mount) behind each
proxy. The demo sends writes to a replica's proxy and shows them landing on
the primary, reads the rows on every node with its position, kills the
primary with kill -9, shows the failover, and lets the old primary rejoin.
Every process is stopped and every mount taken down at the end, also on
Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pylitefs.cluster import Cluster, free_port, wait_caught_up, wait_for, wait_primary
from pylitefs.etcdserver import EtcdServer
from pylitefs.process import force_unmount, is_mounted

NODES = ("node1", "node2", "node3")
DB = "app.db"
TTL = "2s"


class App:
    """The sample web application of one node, on that node's mount, reached through the node's proxy."""

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name = name
        self.mountpoint = log_dir / "mnt"
        self.port = free_port()
        self.proxy_port = free_port()
        self.log_path = log_dir / "app.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}/"

    def start(self) -> None:
        """Start the app once its node's mount is up (the node's proxy forwards to it)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pylitefs.sampleapp", "--db", str(self.mountpoint / DB),
                 "--port", str(self.port), "--host", "127.0.0.1", "--name", self.name],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def request(url: str, data: dict[str, Any] | None = None, cookie: str | None = None,
            timeout: float = 10) -> tuple[int, dict[str, str], Any]:
    """One HTTP request (POST with a JSON body when `data` is given); (status, headers, JSON body)."""
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, method="POST" if data is not None else "GET")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if cookie:
        req.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode(errors="replace")


def txid_cookie(headers: dict[str, str]) -> str | None:
    """The proxy's TXID cookie from a write's response, ready to send back ("name=value")."""
    for key, value in headers.items():
        if key.lower() == "set-cookie":
            return value.split(";", 1)[0]
    return None


@contextmanager
def local_cluster(root: Path) -> Iterator[tuple[EtcdServer, Cluster, dict[str, App]]]:
    """etcd, three etcd-leased nodes with proxies, one app per node; all stopped and unmounted on the way out."""
    for name in NODES:  # left over from an interrupted demo
        if is_mounted(str(root / name / "mnt")):
            force_unmount(str(root / name / "mnt"))
        shutil.rmtree(root / name, ignore_errors=True)
    shutil.rmtree(root / "etcd", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    etcd = EtcdServer(root / "etcd" / "data", root / "etcd" / "etcd.log")
    cluster = Cluster(root)
    apps: dict[str, App] = {}
    try:
        etcd.start()
        print(f"1. etcd on {etcd.endpoint}; starting {', '.join(NODES)} (all candidates, lease TTL {TTL})")
        for name in NODES:
            app = App(name, root / name)
            node = cluster.etcd_node(name, [etcd.endpoint], ttl=TTL, proxy={
                "addr": f"127.0.0.1:{app.proxy_port}", "target": f"127.0.0.1:{app.port}", "db": DB})
            assert node.mountpoint == app.mountpoint
            app.start()
            apps[name] = app
        yield etcd, cluster, apps
    finally:
        for app in apps.values():
            app.stop()
        codes = [node.stop() for node in cluster.nodes]
        etcd.stop()
        gone = not any(is_mounted(str(node.mountpoint)) for node in cluster.nodes)
        print(f"8. stopped: apps, nodes (exit codes {', '.join(map(str, codes))}), etcd; "
              f"unmounted: {'yes' if gone else 'NO'}")
    if any(code != 0 for code in codes) or not gone:
        raise RuntimeError(f"a node did not stop cleanly; see the logs under {root}")


def show_rows(cluster: Cluster, apps: dict[str, App], cookie: str | None) -> None:
    """GET / through every running node's proxy (with the client's TXID cookie) and print what each holds."""
    for node in cluster.nodes:
        if not node.alive():
            continue
        status, _, body = request(apps[node.name].proxy_url, cookie=cookie)
        rows = len(body["rows"]) if status == 200 else f"HTTP {status}"
        txid, checksum = node.position(DB) or (0, 0)
        print(f"   {node.name}: {node.role() or '?':7} rows {rows}, position TXID {txid} checksum {checksum:016x}")


def post(app: App, text: str, deadline: float = 30) -> tuple[dict[str, str], Any]:
    """POST a message through `app`'s node's proxy, retrying while no primary is known (503)."""
    def attempt() -> tuple[dict[str, str], Any] | None:
        status, headers, body = request(app.proxy_url, {"text": text})
        return (headers, body) if status in (200, 201) else None

    return wait_for(attempt, deadline, f"a write through {app.name}'s proxy", interval=0.1)


def run(root: Path, writes: int) -> None:
    """The demo proper; raises on any failure."""
    with local_cluster(root) as (_, cluster, apps):
        primary = wait_primary(cluster.nodes)
        replicas = [n for n in cluster.nodes if n is not primary]
        for node in cluster.nodes:
            wait_for(lambda n=node: request(apps[n.name].proxy_url + "pylitefs/health")[0] == 200, 30,
                     f"{node.name} to be healthy")
        info = primary.http("/info")
        print(f"2. {primary.name} won the election (term {info['term']}); "
              f"{' and '.join(r.name for r in replicas)} replicate it")
        entry = apps[replicas[0].name]
        headers: dict[str, str] = {}
        for i in range(writes):
            headers, body = post(entry, f"hello {i} via {replicas[0].name}")
        cookie = txid_cookie(headers)
        print(f"3. {writes} POSTs sent to {replicas[0].name}'s proxy were written by "
              f"{body.get('node', '?')} (the primary); the last response carries {cookie}")
        wait_caught_up(primary, replicas, DB)
        print("4. GET / through every node's proxy, with that cookie (read-your-writes):")
        show_rows(cluster, apps, cookie)

        print(f"5. kill -9 of the primary {primary.name} (and its app)")
        killed_at = time.monotonic()
        primary.crash()
        apps[primary.name].stop()
        survivor = apps[replicas[1].name]
        headers, body = post(survivor, f"after the failover via {replicas[1].name}")
        new_primary = wait_primary(replicas)
        print(f"   {new_primary.name} is primary (term {new_primary.http('/info')['term']}); the first write "
              f"through {replicas[1].name}'s proxy was accepted {time.monotonic() - killed_at:.1f} s after "
              "the kill")

        print(f"6. {primary.name} restarts and rejoins as a replica")
        primary.start()
        apps[primary.name].start()
        others = [n for n in cluster.nodes if n is not new_primary]
        wait_caught_up(new_primary, others, DB)
        wait_for(lambda: primary.role() == "replica", 30, f"{primary.name} to be a replica")
        wait_for(lambda: request(apps[primary.name].proxy_url)[0] == 200, 30, f"{primary.name}'s app to serve")
        print("7. every node holds the same rows:")
        show_rows(cluster, apps, txid_cookie(headers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pylitefs-demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("demo"), help="where to put everything (default ./demo)")
    parser.add_argument("--writes", type=int, default=20, help="POSTs sent through a replica (default 20)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        run(args.dir.resolve(), args.writes)
    except KeyboardInterrupt:
        print("interrupted; everything was stopped and unmounted", file=sys.stderr)
        return 130
    except Exception as exc:  # the demo's one error boundary: say what failed
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print(f"done in {time.monotonic() - started:.1f}s (logs under {args.dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
