"""`exec:` the application under the node: start order, steps, signal forwarding, exit codes.

The mount tests run real `pylitefs mount` processes whose `exec` runs a small
Python application (APP below) that notes what it sees in a marker file
outside the mount. The last tests drive `pylitefs.exec.Exec` directly with
real child processes and a stand-in node.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from pylitefs.cluster import Cluster, wait_for
from pylitefs.config import Config, ExecCommand, LeaseConfig
from pylitefs.exec import Exec
from pylitefs.process import MountProcess, is_mounted
from tests.conftest import MountFactory

#: The application: notes its start (what it sees of the mount) and the signals it gets, in a marker file.
#: argv: MARKER DB MODE, MODE `write` (insert a row at start) or `read` (count the rows at start).
APP = r'''
import json, os, signal, sqlite3, sys, time

marker, db, mode = sys.argv[1:4]
mount = os.environ["PYLITEFS_MOUNT"]


def note(**fields):
    with open(marker, "a") as f:
        f.write(json.dumps(fields) + "\n")


def on_signal(signum, frame):
    note(event=signal.Signals(signum).name)
    if signum == signal.SIGTERM:
        sys.exit(3)


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGHUP, on_signal)
fds = []
for fd in os.listdir("/proc/self/fd"):
    try:
        fds.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass  # the listing's own descriptor, closed by now
conn = sqlite3.connect(os.path.join(mount, db))
if mode == "write":
    conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
    with conn:
        conn.execute("INSERT INTO t VALUES (1)")
rows = conn.execute("SELECT count(*) FROM t").fetchone()[0]
conn.close()
note(event="start", mounted=os.path.ismount(mount), node=os.environ["PYLITEFS_NODE"], rows=rows, fds=fds)
parent = os.getppid()
while os.getppid() == parent:  # an orphan (its pylitefs was killed) ends itself
    time.sleep(0.05)
'''


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


def app_cmd(app: Path, marker: Path, mode: str) -> str:
    return f"{sys.executable} {app} {marker} app.db {mode}"


def events(marker: Path) -> list[dict[str, Any]]:
    """What the application noted so far."""
    if not marker.exists():
        return []
    return [json.loads(line) for line in marker.read_text().splitlines()]


def event(marker: Path, name: str) -> dict[str, Any] | None:
    return next((e for e in events(marker) if e["event"] == name), None)


def exec_node(mounts: MountFactory, tmp_path: Path, name: str, commands: list[Any]) -> MountProcess:
    """A single-primary mount whose config runs `commands`, started (its mount is ready)."""
    config = tmp_path / f"{name}.yml"
    config.write_text(yaml.safe_dump({
        "http": {"addr": "127.0.0.1:0"}, "lease": {"hostname": name}, "exec": commands}))
    return mounts.start(name, extra_args=["--config", str(config)])


def wait_exit(node: MountProcess, timeout: float = 20) -> int:
    code = node.wait(timeout)
    assert code is not None, f"pylitefs did not exit:\n{node.log_text()}"
    return code


@pytest.mark.fuse
def test_steps_in_order_then_the_app_gets_the_signals(mounts: MountFactory, tmp_path: Path, app: Path) -> None:
    steps, marker = tmp_path / "steps", tmp_path / "marker"
    node = exec_node(mounts, tmp_path, "n1", [
        {"cmd": f"sh -c 'echo one >> {steps}'"},
        {"cmd": f"sh -c 'echo two >> {steps}'", "if-candidate": True},
        {"cmd": app_cmd(app, marker, "write")},
    ])
    start = wait_for(lambda: event(marker, "start"), 20, "the application to start")
    assert steps.read_text() == "one\ntwo\n"
    assert start["mounted"] and start["node"] == "n1" and start["rows"] == 1
    assert not [fd for fd in start["fds"] if "fuse" in fd or ".pylitefs" in fd], start["fds"]

    node.signal(signal.SIGHUP)
    wait_for(lambda: event(marker, "SIGHUP"), 10, "the application to get SIGHUP")
    assert node.alive()

    node.signal(signal.SIGTERM)
    assert wait_exit(node) == 3
    assert event(marker, "SIGTERM") is not None
    assert not is_mounted(str(node.mountpoint))
    assert "exited with code 3" in node.log_text()


@pytest.mark.fuse
def test_failing_step_stops_the_node_with_its_code(mounts: MountFactory, tmp_path: Path, app: Path) -> None:
    go, marker = tmp_path / "go", tmp_path / "marker"
    node = exec_node(mounts, tmp_path, "n1", [
        f"sh -c 'until [ -e {go} ]; do sleep 0.02; done; exit 5'",
        app_cmd(app, marker, "write"),
    ])
    go.touch()
    assert wait_exit(node) == 5
    assert not marker.exists()
    assert not is_mounted(str(node.mountpoint))
    assert "ERROR pylitefs.exec: step" in node.log_text() and "failed with exit code 5" in node.log_text()


@pytest.mark.fuse
def test_app_exiting_by_itself_gives_its_code(mounts: MountFactory, tmp_path: Path) -> None:
    go = tmp_path / "go"
    node = exec_node(mounts, tmp_path, "n1", [
        f"""sh -c 'sqlite3 "$$PYLITEFS_MOUNT/app.db" "CREATE TABLE t (x)"; until [ -e {go} ]; do sleep 0.02; done; exit 7'"""])
    wait_for(lambda: (node.mountpoint / "app.db-pos").exists(), 10, "the application's write")
    go.touch()
    assert wait_exit(node) == 7
    assert not is_mounted(str(node.mountpoint))


@pytest.mark.fuse
def test_replica_app_starts_once_caught_up(cluster: Cluster, tmp_path: Path, app: Path) -> None:
    primary = cluster.primary()
    conn = sqlite3.connect(primary.mountpoint / "app.db")
    conn.execute("CREATE TABLE t (x)")
    for _ in range(100):  # 100 transactions for the replica to catch up with
        with conn:
            conn.execute("INSERT INTO t VALUES (?)", (b"x" * 2000,))
    conn.close()
    marker, skipped = tmp_path / "marker", tmp_path / "skipped"
    replica = cluster.replica("replica", start=False)
    config = yaml.safe_load(replica.config_path.read_text())
    config["exec"] = [{"cmd": f"touch {skipped}", "if-candidate": True}, app_cmd(app, marker, "read")]
    replica.config_path.write_text(yaml.safe_dump(config))
    replica.start()
    start = wait_for(lambda: event(marker, "start"), 30, "the replica's application to start")
    assert start["rows"] == 100  # everything the primary had, at the application's first read
    assert not skipped.exists()
    assert "skipping" in replica.log_text()
    replica.signal(signal.SIGTERM)
    assert wait_exit(replica) == 3


class FakeReplica:
    """What `Exec` reads of a replica: connected, the last heartbeat's positions, caught up or not."""

    def __init__(self) -> None:
        self.connected = False
        self.heartbeats = 0
        self.is_caught_up = False

    def caught_up(self) -> bool:
        return self.connected and self.is_caught_up


class FakeNode:
    def __init__(self, role: str) -> None:
        self.role = role
        self.replica = FakeReplica()


def exec_config(*commands: str, candidate: bool = True) -> Config:
    return Config(lease=LeaseConfig(candidate=candidate), exec=tuple(ExecCommand(c) for c in commands))


async def wait_until(condition: Any, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def test_replica_waits_for_a_heartbeat_of_its_stream(tmp_path: Path) -> None:
    """Connected with a heartbeat from before the check (maybe an earlier stream's) is not enough."""
    started = tmp_path / "started"
    node = FakeNode("replica")
    node.replica.connected, node.replica.is_caught_up = True, True
    runner = Exec(exec_config(f"touch {started}"), node)
    send, receive = trio.open_memory_channel[int](1)
    async with trio.open_nursery() as nursery:
        codes: list[int] = []

        async def run() -> None:
            codes.append(await runner.run(receive))

        nursery.start_soon(run)
        await trio.sleep(0.3)
        assert not started.exists()
        node.replica.heartbeats += 1  # the next heartbeat
        await wait_until(lambda: codes)
    assert codes == [0] and started.exists()


async def test_stop_before_ready_runs_nothing(tmp_path: Path) -> None:
    started = tmp_path / "started"
    runner = Exec(exec_config(f"touch {started}"), FakeNode("replica"))
    send, receive = trio.open_memory_channel[int](1)
    await send.send(signal.SIGTERM)
    with trio.fail_after(5):
        assert await runner.run(receive) == 0
    assert not started.exists()


async def test_app_ignoring_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    started = tmp_path / "started"
    script = f"trap '' TERM; touch {started}; while :; do sleep 0.05; done"
    runner = Exec(exec_config(f'sh -c "{script}"'),
                  FakeNode("primary"), stop_timeout=0.5)
    send, receive = trio.open_memory_channel[int](1)
    codes: list[int] = []
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            codes.append(await runner.run(receive))

        nursery.start_soon(run)
        await wait_until(started.exists)
        await send.send(signal.SIGTERM)
        with trio.fail_after(5):
            await wait_until(lambda: codes)
    assert codes == [128 + signal.SIGKILL]


async def test_a_command_that_cannot_start_gives_127(tmp_path: Path) -> None:
    send, receive = trio.open_memory_channel[int](1)
    runner = Exec(exec_config(f"{tmp_path}/no-such-app --port 8081"), FakeNode("primary"))
    with trio.fail_after(5):
        assert await runner.run(receive) == 127
