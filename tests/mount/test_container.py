"""The container's parts, outside Docker: the entrypoint with the example config, the compose file, the Dockerfile.

No Docker engine runs here. The entrypoint (docker/entrypoint.sh) reads
every path and port from the environment, so it runs as it would in the
image, mounting under a tmp dir, with the example config (docker/litefs.yml:
etcd lease, proxy, the sample application through `exec`) and a real etcd.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pylitefs.cluster import free_port, wait_for
from pylitefs.config import parse
from pylitefs.etcdserver import EtcdServer
from pylitefs.process import MountProcess, is_mounted

ROOT = Path(__file__).resolve().parent.parent.parent
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
EXAMPLE_CONFIG = ROOT / "docker" / "litefs.yml"
COMPOSE = ROOT / "docker" / "compose.yml"


@dataclass
class EntrypointProcess(MountProcess):
    """The image's entrypoint run as a MountProcess: same readiness wait, same guaranteed clean-up."""

    def command(self) -> list[str]:
        return ["/bin/sh", str(ENTRYPOINT)]


def container_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """The environment of a container, with this machine's paths; PATH finds the venv's pylitefs and python."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYLITEFS_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(PYLITEFS_CONFIG=str(EXAMPLE_CONFIG), PYLITEFS_MOUNT_DIR=str(tmp_path / "litefs"),
               PYLITEFS_DATA_DIR=str(tmp_path / "var-lib-litefs"), **values)
    return env


def request(url: str, data: dict[str, str] | None = None) -> tuple[int, Any]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    with urllib.request.urlopen(url, data=body, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


@pytest.mark.fuse
def test_entrypoint_runs_the_example_config(tmp_path: Path, etcd: EtcdServer) -> None:
    http_port, proxy_port, app_port = free_port(), free_port(), free_port()
    env = container_env(
        tmp_path, PYLITEFS_HOSTNAME="node1", PYLITEFS_HTTP_PORT=str(http_port),
        PYLITEFS_ADVERTISE_URL=f"http://127.0.0.1:{http_port}", PYLITEFS_ETCD_ENDPOINTS=etcd.endpoint,
        PYLITEFS_CLUSTER_SECRET="container-secret", PYLITEFS_PROXY_PORT=str(proxy_port),
        PYLITEFS_PROXY_URL=f"http://127.0.0.1:{proxy_port}", PYLITEFS_APP_PORT=str(app_port))
    node = EntrypointProcess(mountpoint=tmp_path / "litefs", data_dir=tmp_path / "var-lib-litefs",
                             log_path=tmp_path / "node.log", env=env)
    try:
        node.start()
        proxy = f"http://127.0.0.1:{proxy_port}/"
        status, row = wait_for(lambda: request(proxy, {"text": "hello"}), 30,
                               f"a write through the proxy to the application\n{node.log_text()}")
        assert status == 201 and row["text"] == "hello" and row["node"] == "node1"
        status, listing = request(proxy)
        assert status == 200 and [r["text"] for r in listing["rows"]] == ["hello"]
        assert (node.mountpoint / "app.db-pos").exists()  # the application wrote through the mount
        assert "started the application" in node.log_text()
        node.signal(signal.SIGTERM)
        code = node.wait(30)
        assert code == 128 + signal.SIGTERM, node.log_text()  # the sample application dies of the SIGTERM
        assert not is_mounted(str(node.mountpoint))
    finally:
        node.stop()


def test_entrypoint_refuses_without_a_secret(tmp_path: Path) -> None:
    out = subprocess.run(["/bin/sh", str(ENTRYPOINT)], env=container_env(tmp_path), capture_output=True,
                         text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 1
    assert out.stderr.strip() == ("pylitefs-entrypoint: PYLITEFS_CLUSTER_SECRET is not set: "
                                  "every node of the cluster needs the same secret")
    assert not (tmp_path / "litefs").exists()  # nothing created


def test_example_config_with_the_entrypoint_defaults() -> None:
    """What the entrypoint's defaults make of docker/litefs.yml in a container named node2."""
    defaults = dict(re.findall(r'^: "\$\{(PYLITEFS_\w+):=(.*)\}"$', ENTRYPOINT.read_text(), re.M))
    env = {name: value.replace("$(uname -n)", "node2") for name, value in defaults.items()}
    for _ in range(2):  # defaults that name other variables
        env = {name: re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], value) for name, value in env.items()}
    env["PYLITEFS_CLUSTER_SECRET"] = "s"
    config = parse(EXAMPLE_CONFIG.read_text(), env=env)
    assert (config.fuse.dir, config.data.dir, config.http.addr) == ("/litefs", "/var/lib/litefs", ":20202")
    assert (config.lease.type, config.lease.hostname, config.lease.advertise_url) == (
        "etcd", "node2", "http://node2:20202")
    assert config.lease.etcd.endpoints == ("http://etcd:2379",)
    assert (config.proxy.addr, config.proxy.target, config.proxy.db) == (":8080", "127.0.0.1:8081", "app.db")
    assert [c.cmd for c in config.exec] == [
        "python -m pylitefs.sampleapp --db /litefs/app.db --port 8081"]


def test_compose_file_runs_etcd_and_three_fuse_nodes() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"etcd", "node1", "node2", "node3"}
    ports = set()
    for name in ("node1", "node2", "node3"):
        node = services[name]
        assert node["hostname"] == name
        assert node["devices"] == ["/dev/fuse"] and node["cap_add"] == ["SYS_ADMIN"]
        assert node["build"]["context"] == ".." and (COMPOSE.parent / ".." / node["build"]["dockerfile"]).exists()
        assert node["environment"]["PYLITEFS_ETCD_ENDPOINTS"] == "http://etcd:2379"
        assert "PYLITEFS_CLUSTER_SECRET" in node["environment"]
        assert f"{name}-data:/var/lib/litefs" in node["volumes"]
        ports.update(p.split(":")[0] for p in node["ports"])
    assert len(ports) == 3
    assert "--advertise-client-urls=http://etcd:2379" in services["etcd"]["command"]


def test_dockerfile_copies_what_exists_and_runs_the_entrypoint() -> None:
    text = (ROOT / "Dockerfile").read_text()
    sources = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ") and "--from" not in line]
    for paths in sources:
        for path in paths:
            assert (ROOT / path).exists(), path
    assert "COPY docker/entrypoint.sh /usr/local/bin/pylitefs-entrypoint" in text
    assert 'ENTRYPOINT ["/usr/local/bin/pylitefs-entrypoint"]' in text
    assert "COPY docker/litefs.yml /etc/litefs.yml" in text
    assert os.access(ENTRYPOINT, os.X_OK)
