"""Leader election with a real etcd: failover, fencing, handoff, rejoining (issue: election).

Three candidate nodes, each its own `pylitefs mount` process, elect a primary
with an etcd lease (etcd started by the test on loopback ports). A writer
process follows the primary through failovers (tests/failover_workload.py);
reader processes on the replicas check the workload's invariants inside every
read transaction, including that `seq.k` never goes back. Relays
(tests/relay.py) in front of etcd and of a node's HTTP port cut one node off,
or carry the replication streams and die with the primary (freeze, then
kill -9): what the primary had not got out is lost, as when a machine is.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pylitefs.cluster import Cluster, Node, free_port, wait_caught_up, wait_for, wait_primary
from pylitefs.tools import open_log
from tests.cluster.test_replication import finish, start_readers
from tests.conftest import integrity
from pylitefs.etcdserver import EtcdServer
from tests.relay import Relay

pytestmark = pytest.mark.fuse

WORKLOAD = str(Path(__file__).parent.parent / "sqlite_workload.py")
FAILOVER = str(Path(__file__).parent.parent / "failover_workload.py")
DB = "app.db"
TTL = 2.0
#: `replication.sync-timeout` of the machine-loss failovers: how long a commit waits for a dead network.
SYNC_TIMEOUT = "300ms"


class Writer:
    """A failover_workload writer process and what it printed."""

    def __init__(self, nodes: list[Node], stop: Path, only: str | None = None, marks: bool = False) -> None:
        self.stop_file = stop
        self.out = stop.with_suffix(".out")
        self.out.write_text("")
        self.args = [sys.executable, FAILOVER, "writer", "--db", DB, "--stop-file", str(stop)]
        for n in nodes:
            self.args += ["--node", f"{n.name}={n.url}={n.mountpoint}"]
        if only:
            self.args += ["--only", only]
        if marks:
            self.args += ["--marks"]
        #: Writers that a signal ended (SIGBUS: SQLite touched the -shm mapping of a node that died).
        self.restarts = 0
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[str]:
        with open(self.out, "a") as out:
            return subprocess.Popen(self.args, stdout=out, stderr=subprocess.PIPE, text=True)

    def _restart_if_killed(self) -> None:
        """An application whose node's machine died dies with it; its next instance carries on.

        SQLite maps `-shm`: touching a page of the mapping of a node whose daemon is gone raises
        SIGBUS. What the writer printed (its acknowledged commits) stays in the output file.
        """
        code = self.proc.poll()
        if code is not None and code < 0 and not self.stop_file.exists():
            self.restarts += 1
            assert self.restarts <= 10, f"the writer died {self.restarts} times (last: signal {-code})"
            self.proc.communicate()
            self.proc = self._spawn()

    def records(self) -> list[dict[str, Any]]:
        """Every line the writer printed so far, parsed."""
        self._restart_if_killed()
        out = []
        for line in self.out.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line being written
        return out

    def commits(self) -> list[dict[str, Any]]:
        """The commits it saw succeed, in order."""
        return [rec for rec in self.records() if "k" in rec]

    def outcomes(self, node: str) -> tuple[int, int]:
        """How many commits succeeded and how many failed on `node` so far."""
        records = [rec for rec in self.records() if rec.get("node") == node]
        return sum("k" in rec for rec in records), sum("error" in rec for rec in records)

    def wait_commits(self, node: str, more: int, timeout: float = 30) -> dict[str, Any]:
        """Wait for `more` new commits on `node`; the last one."""
        before = len([c for c in self.commits() if c["node"] == node])
        return wait_for(lambda: ([c for c in self.commits() if c["node"] == node][before + more - 1:] or [None])[0],
                        timeout, f"{more} commits on {node}")

    def wait_outcome(self, node: str, commits: int, failures: int, timeout: float = 15) -> None:
        """Wait until `commits` more commits succeed or `failures` more fail on `node`, whichever is first."""
        done, failed = self.outcomes(node)

        def reached() -> bool:
            now_done, now_failed = self.outcomes(node)
            return now_done >= done + commits or now_failed >= failed + failures

        wait_for(reached, timeout, f"{commits} more commits or {failures} failed ones on {node}")

    def finish(self) -> None:
        self.stop_file.touch()
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the writer is stuck: {_stuck(self.proc.pid)}") from None
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        assert self.proc.returncode == 0, f"writer failed:\n{err}"


def _stuck(pid: int) -> str:
    """Where a stuck process waits: its kernel stack and open files (for the failure message)."""
    out = []
    for what in ("stack", "wchan", "syscall"):
        try:
            out.append(f"{what}: " + Path(f"/proc/{pid}/{what}").read_text())
        except OSError as exc:
            out.append(f"{what}: {exc}")
    try:
        out.append("fds: " + ", ".join(os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")))
    except OSError as exc:
        out.append(f"fds: {exc}")
    return "\n".join(out)


@pytest.fixture
def relays() -> Iterator[dict[str, Relay]]:
    """Relays by node name, for `start_cluster`; all closed at the end."""
    made: dict[str, Relay] = {}
    try:
        yield made
    finally:
        for relay in made.values():
            relay.close()


def start_cluster(cluster: Cluster, etcd: EtcdServer, n: int = 3, ttl: float = TTL,
                  endpoints: list[str] | None = None, relays: dict[str, Relay] | None = None,
                  **kw: Any) -> tuple[list[Node], Node]:
    """`n` etcd-leased nodes and the workload's database; with `relays`, each node's advertise-url is a
    new relay (put there under its name) in front of its HTTP port, so replicas stream through it."""
    nodes = []
    for i in range(1, n + 1):
        name, port = f"n{i}", free_port()
        if relays is not None:
            relays[name] = Relay("127.0.0.1", port)
            kw["lease"] = {**kw.get("lease", {}), "advertise-url": relays[name].endpoint}
        nodes.append(cluster.etcd_node(name, endpoints or [etcd.endpoint], ttl=f"{ttl}s", port=port, **kw))
    primary = wait_primary(nodes)
    subprocess.run([sys.executable, WORKLOAD, "setup", str(primary.mountpoint / DB), "wal", "--seq"],
                   check=True, timeout=60)
    wait_caught_up(primary, [n for n in nodes if n is not primary], DB)
    return nodes, primary


def seq_k(node: Node) -> int:
    """`seq.k` as the node's mount shows it (0 while it has no copy: a node waiting for a snapshot)."""
    conn = sqlite3.connect(node.mountpoint / DB, timeout=10)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name='seq'").fetchone() is None:
            return 0
        return int(conn.execute("SELECT k FROM seq").fetchone()[0])
    finally:
        conn.close()


def assert_no_copy_discarded(nodes: list[Node]) -> None:
    """No node found its own copy untrustworthy (ERROR lines of startup, settle or reconcile)."""
    for node in nodes:
        text = node.log_text()
        assert "does not match its log" not in text and "discarding the copy" not in text, node.name


def converge(nodes: list[Node]) -> tuple[int, int]:
    """Wait until every running node has the primary's position of DB; check integrity; the position."""
    primary = wait_primary(nodes)
    others = [n for n in nodes if n is not primary and n.alive()]
    position = wait_caught_up(primary, others, DB, timeout=60)
    for node in [primary, *others]:
        assert integrity(node.mountpoint / DB) == "ok", node.name
    return position


def test_kill_9_of_the_primary_elects_the_most_advanced_replica(etcd: EtcdServer, cluster: Cluster,
                                                                 tmp_path: Path) -> None:
    nodes, primary = start_cluster(cluster, etcd)
    replicas = [n for n in nodes if n is not primary]
    writer = Writer(nodes, tmp_path / "stop")
    readers = [r for n in replicas for r in start_readers(n.mountpoint, DB, "wal", tmp_path / "stop-readers")]
    try:
        writer.wait_commits(primary.name, 100)
        killed_at = time.time()
        primary.crash()  # kill -9
        reached = max(seq_k(n) for n in replicas)  # what had reached a replica
        new = wait_primary(replicas, timeout=TTL + 10)
        first = writer.wait_commits(new.name, 1)
        # Every transaction that reached a replica is on the new primary: its first commit continues after them.
        assert first["k"] > reached, (first, reached)
        failover = first["t"] - killed_at
        assert failover < TTL + 5, failover  # measured precisely by bench/failover.py
        for node in replicas:
            if node is not new:  # `.primary` names the new primary at once
                wait_for(lambda n=node: (n.mountpoint / ".primary").read_text().strip() == new.name, 5,
                         f".primary on {node.name}")
                assert node.http("/info")["primary"] == new.name
        writer.wait_commits(new.name, 50)
        primary.start()  # rejoins as a replica (its unreplicated tail, if any, is replaced)
        writer.wait_commits(new.name, 20)
    finally:
        writer.finish()
    reports = finish(readers, tmp_path / "stop-readers")
    assert all(r["checks"] > 0 for r in reports)
    converge(nodes)
    assert_no_copy_discarded(nodes)
    assert wait_primary(nodes) is new


def test_clean_stop_hands_over_at_once(etcd: EtcdServer, cluster: Cluster, tmp_path: Path) -> None:
    nodes, primary = start_cluster(cluster, etcd)
    writer = Writer(nodes, tmp_path / "stop")
    try:
        writer.wait_commits(primary.name, 50)
        stopped_at = time.time()
        assert primary.stop() == 0
        new = wait_primary([n for n in nodes if n is not primary], timeout=5)
        first = writer.wait_commits(new.name, 1)
        assert first["t"] - stopped_at < TTL, "the stopped primary's lease was not passed on or revoked"
        assert "stopping: handed off to" in primary.log_text() or "resigning" in primary.log_text()
        # A clean stop loses nothing: the new primary continues exactly where the old one stopped.
        ks = [c["k"] for c in writer.commits()]
        assert ks == list(range(ks[0], ks[0] + len(ks))), "a commit the application saw was lost or repeated"
        primary.start()
        writer.wait_commits(new.name, 20)
    finally:
        writer.finish()
    converge(nodes)


def test_handoff_to_a_named_candidate(etcd: EtcdServer, cluster: Cluster, tmp_path: Path) -> None:
    nodes, primary = start_cluster(cluster, etcd)
    target = next(n for n in nodes if n is not primary)
    writer = Writer(nodes, tmp_path / "stop")
    try:
        writer.wait_commits(primary.name, 30)
        out = subprocess.run([sys.executable, "-m", "pylitefs", "handoff", "--config", str(primary.config_path),
                              "--to", target.name], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert f"handed off to {target.name}" in out.stdout
        assert wait_primary(nodes) is target
        writer.wait_commits(target.name, 30)
        ks = [c["k"] for c in writer.commits()]
        assert ks == list(range(ks[0], ks[0] + len(ks)))
        # Refused: not the primary any more, an unknown node, a wrong token.
        again = subprocess.run([sys.executable, "-m", "pylitefs", "handoff", "--config", str(primary.config_path)],
                               capture_output=True, text=True, timeout=30)
        assert again.returncode == 1 and "not the primary" in again.stderr
        # And back: a node that handed off leads again with writes open (its old fence is gone).
        back = subprocess.run([sys.executable, "-m", "pylitefs", "handoff", "--config", str(target.config_path),
                               "--to", primary.name], capture_output=True, text=True, timeout=30)
        assert back.returncode == 0, back.stderr
        writer.wait_commits(primary.name, 30)
        ks = [c["k"] for c in writer.commits()]
        assert ks == list(range(ks[0], ks[0] + len(ks)))
    finally:
        writer.finish()
    assert target.role() == "replica"
    converge(nodes)


def test_primary_cut_off_from_etcd_stops_writing_before_a_new_one_starts_then_is_reset(
        etcd: EtcdServer, cluster: Cluster, tmp_path: Path) -> None:
    # Every node reaches etcd, and is reached by the others, through its own relays.
    relays: dict[str, tuple[Relay, Relay]] = {}
    nodes = []
    try:
        for i in range(1, 4):
            name, port = f"n{i}", free_port()
            to_etcd = Relay("127.0.0.1", etcd.client_port)
            to_node = Relay("127.0.0.1", port)
            relays[name] = (to_etcd, to_node)
            nodes.append(cluster.etcd_node(name, [to_etcd.endpoint], ttl=f"{TTL}s", port=port,
                                           lease={"advertise-url": to_node.endpoint}))
        old = wait_primary(nodes)
        subprocess.run([sys.executable, WORKLOAD, "setup", str(old.mountpoint / DB), "wal", "--seq"],
                       check=True, timeout=60)
        wait_caught_up(old, [n for n in nodes if n is not old], DB)
        others = [n for n in nodes if n is not old]
        pinned = Writer(nodes, tmp_path / "stop-pinned", only=old.name)  # keeps writing to the old primary
        follower = Writer(others, tmp_path / "stop-follower")  # writes wherever the new primary is
        try:
            pinned.wait_commits(old.name, 20)
            for relay in relays[old.name]:
                relay.cut()
            new = wait_primary(others, timeout=TTL + 10)
            follower.wait_commits(new.name, 20)
            wait_for(lambda: old.role() == "replica", 10, "the old primary to step down")
        finally:
            pinned.finish()
            follower.finish()
        # No overlap, from both nodes' own records: the old primary's last transaction was captured
        # before the new primary captured its first.
        with open_log(str(old.data_dir), DB) as txlog:
            old_txns = [t for t in txlog if t.node_id == old.name]
        with open_log(str(new.data_dir), DB) as txlog:
            new_txns = [t for t in txlog if t.node_id == new.name]
        assert old_txns and new_txns
        assert old_txns[-1].timestamp_ns < new_txns[0].timestamp_ns, (
            "the old primary accepted a write after the new one started")
        assert new.http("/info")["term"] > 0
        diverged = old_txns[-1].txid > new_txns[0].txid - 1
        for relay in relays[old.name]:
            relay.restore()
        position = converge(nodes)
        assert old.position(DB) == position
        if diverged:
            assert "discarding this copy's history" in old.log_text()
    finally:
        for to_etcd, to_node in relays.values():
            to_etcd.close()
            to_node.close()


def test_etcd_down_the_primary_steps_down_and_everything_recovers(etcd: EtcdServer, cluster: Cluster,
                                                                   tmp_path: Path) -> None:
    nodes, primary = start_cluster(cluster, etcd)
    replicas = [n for n in nodes if n is not primary]
    before = seq_k(primary)
    etcd.stop()
    wait_for(lambda: primary.role() == "replica", TTL + 10, "the primary to step down")
    with pytest.raises(sqlite3.OperationalError):
        conn = sqlite3.connect(primary.mountpoint / DB, timeout=1, isolation_level=None)
        try:
            conn.execute("UPDATE seq SET k=k+1")
        finally:
            conn.close()
    for node in nodes:  # every node still serves reads
        assert seq_k(node) == before
    etcd.start()
    writer = Writer(nodes, tmp_path / "stop")
    try:
        new = wait_primary(nodes, timeout=30)
        writer.wait_commits(new.name, 20)
    finally:
        writer.finish()
    converge(nodes)
    assert replicas  # (all three recovered)


def test_twenty_kill_9_failovers_under_load(etcd: EtcdServer, cluster: Cluster, tmp_path: Path) -> None:
    ttl = 1.0
    nodes, _ = start_cluster(cluster, etcd, ttl=ttl)
    writer = Writer(nodes, tmp_path / "stop")
    try:
        for round_ in range(20):
            primary = wait_primary(nodes, timeout=ttl + 15)
            writer.wait_commits(primary.name, 10)
            primary.crash()
            survivors = [n for n in nodes if n is not primary]
            reached = max(seq_k(n) for n in survivors)
            new = wait_primary(survivors, timeout=ttl + 15)
            first = writer.wait_commits(new.name, 1)
            assert first["k"] > reached, f"round {round_}: lost a replicated transaction ({first}, {reached})"
            primary.start()
    finally:
        writer.finish()
    converge(nodes)
    assert_no_copy_discarded(nodes)


def failovers_losing_the_network(writer: Writer, nodes: list[Node], relays: dict[str, Relay], rounds: int,
                                 ttl: float) -> None:
    """`rounds` times the primary's machine is lost while the writer commits, then comes back as a replica.

    Its relay freezes first (the network dies: nothing more it sends reaches a replica, nothing a replica
    sends reaches it, and what the relay still held is dropped); then, once the writer saw two more
    commits succeed or one fail there (an application that goes on committing on a machine whose
    network is gone: without sync, at least the second of the two is lost; with sync, a commit can only
    wait for replicas that cannot answer, and fails after `sync-timeout`), kill -9.
    """
    for round_ in range(rounds):
        primary = wait_primary(nodes, timeout=ttl + 15)
        writer.wait_commits(primary.name, 5)
        survivors = [n for n in nodes if n is not primary]
        relays[primary.name].freeze()
        writer.wait_outcome(primary.name, commits=2, failures=1)
        primary.crash()
        new = wait_primary(survivors, timeout=ttl + 15)
        writer.wait_commits(new.name, 1)
        relays[primary.name].thaw()
        primary.start()


def lost_acknowledged_commits(nodes: list[Node], writer: Writer) -> list[dict[str, Any]]:
    """The commits the writer saw succeed whose `marks` row (by tag) is not on the final primary."""
    conn = sqlite3.connect(wait_primary(nodes).mountpoint / DB)
    try:
        final = {tag for (tag,) in conn.execute("SELECT tag FROM marks")}
    finally:
        conn.close()
    return [c for c in writer.commits() if c["tag"] not in final]


def start_marks_cluster(cluster: Cluster, etcd: EtcdServer, relays: dict[str, Relay], ttl: float,
                        sync: int) -> list[Node]:
    nodes, primary = start_cluster(cluster, etcd, ttl=ttl, relays=relays,
                                   replication={"sync": sync, "sync-timeout": SYNC_TIMEOUT,
                                                "sync-fallback": "fail"})
    conn = sqlite3.connect(primary.mountpoint / DB)
    conn.execute("CREATE TABLE marks(k INTEGER PRIMARY KEY, tag TEXT NOT NULL, payload BLOB)")
    conn.commit()
    conn.close()
    return nodes


def test_twenty_kill_9_failovers_with_sync_lose_no_acknowledged_commit(
        etcd: EtcdServer, cluster: Cluster, relays: dict[str, Relay], tmp_path: Path) -> None:
    """replication.sync: 1: every commit the application saw survives 20 machine losses of the primary.

    The same run with `sync: 0` loses acknowledged commits (the next test): this one would notice.
    """
    ttl = 1.0
    nodes = start_marks_cluster(cluster, etcd, relays, ttl, sync=1)
    writer = Writer(nodes, tmp_path / "stop", marks=True)
    try:
        failovers_losing_the_network(writer, nodes, relays, 20, ttl)
    finally:
        writer.finish()
    converge(nodes)
    assert_no_copy_discarded(nodes)
    lost = lost_acknowledged_commits(nodes, writer)
    assert not lost, f"{len(lost)} acknowledged commits lost: {lost[:10]}"
    acknowledged = [c["k"] for c in writer.commits()]
    assert acknowledged == sorted(set(acknowledged)), "an acknowledged K was committed twice"


def test_the_same_failovers_without_sync_lose_acknowledged_commits(
        etcd: EtcdServer, cluster: Cluster, relays: dict[str, Relay], tmp_path: Path) -> None:
    """replication.sync: 0 through the same machine losses: commits the application saw are lost.

    What makes the sync test above discriminating: its check and its failovers do catch a loss. The
    writer sees commits succeed on the primary after its network died; they are gone after the failover.
    """
    ttl = 1.0
    nodes = start_marks_cluster(cluster, etcd, relays, ttl, sync=0)
    writer = Writer(nodes, tmp_path / "stop", marks=True)
    try:
        failovers_losing_the_network(writer, nodes, relays, 5, ttl)
    finally:
        writer.finish()
    converge(nodes)
    lost = lost_acknowledged_commits(nodes, writer)
    # At least the second commit acknowledged after each freeze began after it: never replicated.
    assert len(lost) >= 5, f"only {len(lost)} acknowledged commits lost over 5 failovers: {lost}"
    # A lost K is committed again by the next primary: the K sequence the writer saw goes back.
    acknowledged = [c["k"] for c in writer.commits()]
    assert acknowledged != sorted(set(acknowledged))


def test_a_node_of_another_cluster_refuses_to_join(etcd: EtcdServer, cluster: Cluster, tmp_path: Path) -> None:
    nodes, primary = start_cluster(cluster, etcd, n=1)
    stranger = cluster.etcd_node("stranger", [etcd.endpoint], start=False, cluster={"id": "0123456789abcdef"})
    stranger.mountpoint.mkdir(parents=True)
    stranger.proc = subprocess.Popen(stranger.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
    out, _ = stranger.proc.communicate(timeout=30)
    assert stranger.proc.returncode != 0
    assert "holds cluster" in out and "0123456789abcdef" in out
    assert primary.role() == "primary"


def test_lease_promote_takes_over_once_caught_up(etcd: EtcdServer, cluster: Cluster, tmp_path: Path) -> None:
    nodes, primary = start_cluster(cluster, etcd, n=1)
    preferred = cluster.etcd_node("preferred", [etcd.endpoint], ttl=f"{TTL}s", lease={"promote": True})
    wait_for(lambda: preferred.role() == "primary", 30, "the preferred candidate to take over")
    assert wait_primary([primary, preferred]) is preferred
    assert preferred.position(DB) == primary.position(DB)
    assert primary.role() == "replica"
