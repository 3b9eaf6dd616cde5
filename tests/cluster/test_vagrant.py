"""The Vagrant cluster (vagrant/): the Vagrantfile validates, the provisioning scripts' configs load, and the
provisioning runs against three network-namespace "hosts" on this machine.

The namespace hosts stand in for the VMs: each has its own address on a bridge
(10.231.0.11-13, as 192.168.56.11-13 in the Vagrantfile), runs the etcd member
that etcd.sh configures (its env file, as Debian's etcd.service reads it) and
`pylitefs mount` with the litefs.yml that pylitefs.sh generates (paths under a
tmp dir through PYLITEFS_ROOT, no systemd), exec'ing the sample app behind the
proxy. Processes enter only the namespace's network (`nsenter --net`, not
`ip netns exec`, which would also give them a private mount namespace and hide
their FUSE mounts from the test).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import etcd3
import pytest

from pylitefs.cluster import Node, wait_caught_up, wait_for, wait_primary
from pylitefs.config import load
from pylitefs.etcdserver import ETCD_BINARY
from tests.conftest import skip_unless_required

REPO = Path(__file__).resolve().parent.parent.parent
VAGRANT_DIR = REPO / "vagrant"
PROVISION = VAGRANT_DIR / "provision"
SECRET = "0123456789abcdef0123456789abcdef"
SUBNET = "10.231.0"
BRIDGE_ADDR = f"{SUBNET}.1/24"
NAMES = ["node1", "node2", "node3"]
DB = "app.db"


def addr(name: str) -> str:
    return f"{SUBNET}.{10 + int(name.removeprefix('node'))}"


PEERS = [f"{n}={addr(n)}" for n in NAMES]


def provision(script: str, name: str, root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run vagrant/provision/SCRIPT for node `name` with every path under `root` and no systemd."""
    environ = {**os.environ, "PYLITEFS_ROOT": str(root), "PYLITEFS_NO_SYSTEMD": "1",
               "PYLITEFS_CLUSTER_SECRET": SECRET, **env}
    return subprocess.run(["sh", str(PROVISION / script), name, addr(name), *PEERS], env=environ,
                          capture_output=True, text=True, timeout=30)


def test_vagrantfile_validates(tmp_path: Path) -> None:
    if shutil.which("vagrant") is None:
        skip_unless_required("the vagrant command is missing (Debian package vagrant)")
    env = {**os.environ, "PYLITEFS_SECRET_FILE": str(tmp_path / "secret"),
           "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"), "VAGRANT_HOME": str(tmp_path / "home"),
           "VAGRANT_CHECKPOINT_DISABLE": "1"}  # no version check over the network

    def validate(nodes: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=VAGRANT_DIR,
                              env={**env, "PYLITEFS_NODES": nodes}, capture_output=True, text=True, timeout=120)

    result = validate("3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout
    assert [f"node{i}" in result.stdout for i in range(1, 5)] == [True, True, True, False]
    secret = (tmp_path / "secret").read_text().strip()
    assert len(secret) == 64 and int(secret, 16) >= 0
    five = validate("5")
    assert five.returncode == 0 and "node5" in five.stdout, five.stdout + five.stderr
    assert (tmp_path / "secret").read_text().strip() == secret  # generated once
    bad = validate("zero")
    assert bad.returncode != 0 and "PYLITEFS_NODES must be a number of nodes" in bad.stdout + bad.stderr


def test_generated_configs_load_and_provisioning_is_idempotent(tmp_path: Path) -> None:
    for name in NAMES:
        root = tmp_path / name
        first = provision("pylitefs.sh", name, root)
        assert first.returncode == 0, first.stderr
        config_path = root / "etc/litefs.yml"
        assert config_path.stat().st_mode & 0o777 == 0o600  # it holds the secret
        config = load(str(config_path))
        assert config.hostname == name
        assert config.lease.type == "etcd" and config.lease.candidate
        assert config.lease.advertise_url == f"http://{addr(name)}:20202"
        assert config.lease.etcd.endpoints == tuple(f"http://{addr(n)}:2379" for n in NAMES)
        assert config.secret == SECRET.encode()
        assert (config.fuse.dir, config.data.dir) == (f"{root}/litefs", f"{root}/var/lib/litefs")
        assert (config.proxy.addr, config.proxy.target, config.proxy.db) == (":8080", "localhost:8081", DB)
        assert config.proxy.advertise_url == f"http://{addr(name)}:8080"
        assert [c.cmd for c in config.exec] == [f"python -m pylitefs.sampleapp --db {root}/litefs/{DB} --port 8081"]
        unit = (root / "etc/systemd/system/pylitefs.service").read_text()
        assert f"ExecStart=/opt/pylitefs/venv/bin/pylitefs mount --config {root}/etc/litefs.yml" in unit

        assert provision("etcd.sh", name, root).returncode == 0
        etcd_env = etcd_env_file(root)
        assert etcd_env["ETCD_NAME"] == name
        assert etcd_env["ETCD_INITIAL_CLUSTER"] == ",".join(f"{n}=http://{addr(n)}:2380" for n in NAMES)
        assert etcd_env["ETCD_ADVERTISE_CLIENT_URLS"] == f"http://{addr(name)}:2379"

        # Twice: nothing changes.
        written = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}
        assert provision("pylitefs.sh", name, root).returncode == 0
        assert provision("etcd.sh", name, root).returncode == 0
        assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()} == written

    # Bad input: a clear message, nothing written.
    root = tmp_path / "bad"
    no_secret = provision("pylitefs.sh", "node1", root, PYLITEFS_CLUSTER_SECRET="")
    assert no_secret.returncode == 1 and "PYLITEFS_CLUSTER_SECRET is empty" in no_secret.stderr
    outsider = subprocess.run(["sh", str(PROVISION / "gen-config.sh"), "node4", "10.231.0.14", *PEERS],
                              env={**os.environ, "PYLITEFS_CLUSTER_SECRET": SECRET}, capture_output=True, text=True)
    assert outsider.returncode == 1 and "is not in the peer list" in outsider.stderr
    assert not root.exists()


def test_install_dry_run_does_nothing_when_up_to_date(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = {**os.environ, "PYLITEFS_SRC": str(REPO), "PYLITEFS_VENV": str(venv), "PYLITEFS_DRY_RUN": "1"}
    fresh = subprocess.run(["sh", str(PROVISION / "install.sh")], env=env, capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr
    assert f"would run: python3 -m venv {venv}" in fresh.stdout
    assert f"would run: {venv}/bin/pip install -q -e {REPO}" in fresh.stdout
    venv.mkdir()
    (venv / ".installed").touch()
    again = subprocess.run(["sh", str(PROVISION / "install.sh")], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "would run" not in again.stdout and "is up to date" in again.stdout


def etcd_env_file(root: Path) -> dict[str, str]:
    """The KEY="value" lines of the etcd env file that etcd.sh wrote under `root`."""
    env = {}
    for line in (root / "etc/default/etcd").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value.strip('"')
    return env


class NsNode(Node):
    """A cluster Node whose daemon runs in network namespace `netns`, reached at `address`."""

    netns: str
    address: str

    @property
    def url(self) -> str:
        return f"http://{self.address}:20202"

    def command(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", *super().command()]


class NetnsHosts:
    """Three namespaces on a bridge, and every process started in them; `stop()` removes it all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        tag = f"plv{os.getpid() % 100000}"
        self.bridge = f"{tag}br"
        self.netns = {name: f"{tag}{name}" for name in NAMES}
        self.etcd: list[subprocess.Popen[bytes]] = []
        self.nodes: dict[str, NsNode] = {}

    def create(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", BRIDGE_ADDR, "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i, (name, ns) in enumerate(self.netns.items(), 1):
            veth = f"{self.bridge[:-2]}v{i}"
            ip("netns", "add", ns)
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", veth, "master", self.bridge, "up")
            ip("-n", ns, "addr", "add", f"{addr(name)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def start_etcd(self, name: str) -> None:
        """The etcd member etcd.sh configured for `name`, in its namespace."""
        root = self.root / name
        with open(root / "etcd.log", "ab") as log:
            self.etcd.append(subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.netns[name]}", ETCD_BINARY],
                env={**os.environ, **etcd_env_file(root)}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL))

    def node(self, name: str) -> NsNode:
        """`pylitefs mount` of the litefs.yml pylitefs.sh wrote for `name`, not yet started."""
        root = self.root / name
        path = os.environ.get("PATH", "")
        node = NsNode(mountpoint=root / "litefs", data_dir=root / "var/lib/litefs", log_path=root / "pylitefs.log",
                      extra_args=["--config", str(root / "etc/litefs.yml")],
                      # exec runs `python -m pylitefs.sampleapp`: this venv's python.
                      env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{path}"})
        node.name, node.port, node.config_path = name, 20202, root / "etc/litefs.yml"
        node.netns, node.address = self.netns[name], addr(name)
        self.nodes[name] = node
        return node

    def kill_leftovers(self, name: str, keep: set[int]) -> None:
        """SIGKILL every process in `name`'s namespace but `keep` (an orphaned application, a guard)."""
        out = subprocess.run(["ip", "netns", "pids", self.netns[name]], capture_output=True, text=True).stdout
        for pid in map(int, out.split()):
            if pid not in keep:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def stop(self) -> None:
        try:
            for node in self.nodes.values():
                node.stop()
            for proc in self.etcd:  # SIGKILL: their data is thrown away, and a member stopping cleanly
                proc.kill()         # waits seconds for peers that are stopping too
                proc.wait()
            for name in self.netns:
                self.kill_leftovers(name, keep=set())
        finally:
            for ns in self.netns.values():
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[NetnsHosts]:
    missing = [tool for tool in ("ip", "nsenter", ETCD_BINARY) if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        skip_unless_required(f"namespace hosts need root, ip, nsenter and etcd "
                             f"(missing: {', '.join(missing) or 'root'})")
    h = NetnsHosts(tmp_path)
    try:
        h.create()
        yield h
    finally:
        h.stop()


def http(url: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())


def etcd_ready() -> bool:
    client = etcd3.client(addr("node1"), 2379, timeout=1)
    try:
        client.get("/")  # a linearizable read: the members have a leader
        return True
    finally:
        client.close()


@pytest.mark.fuse
@pytest.mark.timeout(120)
def test_provisioned_namespace_hosts_replicate_and_fail_over(hosts: NetnsHosts, tmp_path: Path) -> None:
    began = time.monotonic()
    for name in NAMES:
        for script in ("etcd.sh", "pylitefs.sh"):
            result = provision(script, name, tmp_path / name, PYLITEFS_LEASE_TTL="2s", PYLITEFS_ETCD_TIMEOUT="500ms")
            assert result.returncode == 0, result.stderr
        hosts.start_etcd(name)
    wait_for(etcd_ready, 30, "the three etcd members to elect a leader")
    nodes = [hosts.node(name) for name in NAMES]
    for node in nodes:
        node.start()
    primary = wait_primary(nodes)
    replicas = [n for n in nodes if n is not primary]

    # A write through a replica's proxy lands on the primary; every node has it.
    row = wait_for(lambda: http(f"http://{replicas[0].address}:8080/", {"text": "through a replica"}), 30,
                   f"a write through {replicas[0].name}'s proxy")
    assert row["node"] == primary.name
    position = wait_caught_up(primary, replicas, DB, timeout=30)
    for node in nodes:
        # Each node's application starts once its node has caught up (exec).
        rows = wait_for(lambda n=node: http(f"http://{n.address}:8080/")["rows"], 30, f"{node.name}'s application")
        assert [r["text"] for r in rows] == ["through a replica"], node.name
        assert http(node.url + "/status")["databases"][DB]["txid"] == position[0]

    # kill -9 of the primary (and its application, as a dead machine): another node takes over.
    old = primary
    old.crash()
    hosts.kill_leftovers(old.name, keep={p.pid for p in hosts.etcd})
    primary = wait_primary(replicas, timeout=30)
    row = wait_for(lambda: http(f"http://{primary.address}:8080/", {"text": "after the failover"}), 30,
                   f"a write through the new primary {primary.name}")
    assert row["node"] == primary.name

    # The old primary comes back as a replica of the new one, with every row.
    old.start()
    wait_for(lambda: old.role() == "replica" and http(old.url + "/info")["primary"] == primary.name, 30,
             f"{old.name} to rejoin as a replica of {primary.name}")
    wait_caught_up(primary, [n for n in nodes if n is not primary], DB, timeout=30)
    rows = wait_for(lambda: http(f"http://{old.address}:8080/")["rows"], 30, f"{old.name}'s application")
    assert [r["text"] for r in rows] == ["through a replica", "after the failover"]
    print(f"namespace cluster: provisioned, replicated, failed over and rejoined in {time.monotonic() - began:.1f}s")

    # vagrant/check.sh, the check a user runs after `vagrant up`, against the namespace hosts: curl reaches
    # them on the bridge, and a stand-in for `vagrant ssh NODE -c "sudo systemctl ..."` kills or starts pylitefs.
    fake = fake_vagrant(hosts, tmp_path)
    check = subprocess.run(["bash", str(VAGRANT_DIR / "check.sh")], capture_output=True, text=True, timeout=90,
                           env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}",
                                "PYLITEFS_SUBNET": SUBNET, "PYLITEFS_CHECK_TIMEOUT": "30"})
    print(check.stdout)
    assert check.returncode == 0, check.stdout + check.stderr + cluster_state(hosts)
    assert "check.sh: replication and failover OK" in check.stdout
    old_name, new_name = re.search(r"(node\d) rejoined as a replica of (node\d)", check.stdout).groups()
    assert old_name != new_name
    # The last table: every node at the same TXID with 4 rows (2 written above, 2 by check.sh).
    last = check.stdout.splitlines()[-4:-1]
    assert [line.split()[:2] for line in last] == [[n, "primary" if n == new_name else "replica"] for n in NAMES]
    assert len({line.split()[4] for line in last}) == 1 and all("4 rows" in line for line in last), last


#: Stands in for `vagrant ssh NODE -c "sudo systemctl kill|restart ... pylitefs"` on a namespace host: kill
#: pylitefs's main process, then the rest of its "service" (its application, its guard) as systemd does; or
#: start pylitefs again, the venv first in PATH as in pylitefs.service (detached: NetnsHosts.stop() ends every
#: process of the namespaces).
FAKE_VAGRANT = """#!/bin/sh
set -eu
[ "$1" = ssh ] && [ "$3" = -c ] || {{ echo "fake vagrant: unexpected $*" >&2; exit 2; }}
node=$2 ns={prefix}$2
case $4 in
*"systemctl kill"*)
    main=
    for pid in $(ip netns pids "$ns"); do
        case $(tr '\\0' ' ' <"/proc/$pid/cmdline") in *"pylitefs mount"*) kill -9 "$pid"; main=$pid ;; esac
    done
    i=0
    while [ "$(ls "/proc/$main/task" 2>/dev/null | wc -l)" -gt 1 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    for pid in $(ip netns pids "$ns"); do grep -qx "$pid" {keep} || kill -9 "$pid"; done ;;
*"systemctl restart"*)
    cd {root}/$node
    PATH={bin}:$PATH nsenter --net=/run/netns/$ns {python} -m pylitefs mount --config {root}/$node/etc/litefs.yml \\
        >>restarted.log 2>&1 </dev/null &
    ;;
*) echo "fake vagrant: unexpected command $4" >&2; exit 2 ;;
esac
"""


def cluster_state(hosts: NetnsHosts) -> str:
    """Every node's /status (or why not), and the end of a restarted node's log: for failure messages."""
    lines = []
    for name, node in hosts.nodes.items():
        try:
            lines.append(f"{name}: {http(node.url + '/status')}")
        except OSError as exc:
            lines.append(f"{name}: no /status ({exc})")
        log = hosts.root / name / "restarted.log"
        if log.exists():
            lines += log.read_text(errors="replace").splitlines()[-30:]
    return "\n" + "\n".join(lines)


def fake_vagrant(hosts: NetnsHosts, root: Path) -> Path:
    """A directory holding FAKE_VAGRANT as `vagrant`."""
    keep = root / "etcd.pids"
    keep.write_text("".join(f"{p.pid}\n" for p in hosts.etcd))
    bin_dir = root / "bin"
    bin_dir.mkdir()
    script = bin_dir / "vagrant"
    script.write_text(FAKE_VAGRANT.format(prefix=hosts.netns["node1"].removesuffix("node1"), keep=keep,
                                          root=root, python=sys.executable, bin=Path(sys.executable).parent))
    script.chmod(0o755)
    return bin_dir
