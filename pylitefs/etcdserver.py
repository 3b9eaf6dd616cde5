"""A real single-member etcd on free 127.0.0.1 ports, for tests, benchmarks and the demo; always stopped."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import etcd3
import etcd3.etcdrpc as etcdrpc

from election.etcd import new_client
from pylitefs.cluster import free_port

ETCD_BINARY = "/usr/bin/etcd"
#: How long stop() waits after SIGTERM before SIGKILL.
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class ServerTLS:
    """PEM files for an etcd that serves https and accepts only clients with a cert signed by `ca`."""

    ca: Path
    cert: Path  # the server's, valid for 127.0.0.1
    key: Path
    client_cert: Path  # what start() shows when it checks that etcd is up
    client_key: Path


class EtcdServer:
    """One etcd process; start() again after stop()/kill() restarts it on the same ports and data dir.

    With `tls`, clients reach it over https only and must show a client cert; `extra_args` go to etcd as they are."""

    def __init__(self, data_dir: Path, log_path: Path, name: str = "etcd0", *, tls: ServerTLS | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.name = name
        self.tls = tls
        self.extra_args = list(extra_args)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._login: dict[str, str] = {}  # etcd3.client() user/password once enable_auth() ran

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    def client_tls(self) -> dict[str, Any]:
        """etcd3.client() keyword arguments for reaching this server (its CA and the client cert; none without TLS)."""
        if self.tls is None:
            return {}
        return {"ca_cert": str(self.tls.ca), "cert_cert": str(self.tls.client_cert),
                "cert_key": str(self.tls.client_key)}

    def enable_auth(self, root_password: str) -> None:
        """Create etcd user `root` (role root) with `root_password` and switch authentication on.

        Later start()s log in as root to check that etcd is up."""
        client = etcd3.client("127.0.0.1", self.client_port, timeout=5, **self.client_tls())
        try:
            stub = etcdrpc.AuthStub(client.channel)
            stub.UserAdd(etcdrpc.AuthUserAddRequest(name="root", password=root_password), 5)
            stub.UserGrantRole(etcdrpc.AuthUserGrantRoleRequest(user="root", role="root"), 5)
            stub.AuthEnable(etcdrpc.AuthEnableRequest(), 5)
        finally:
            client.close()
        self._login = {"user": "root", "password": root_password}

    def command(self) -> list[str]:
        client = self.endpoint
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            ETCD_BINARY,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            # A single member elects itself: short timers make start and restart fast.
            "--heartbeat-interval", "10",
            "--election-timeout", "50",
            "--logger", "zap",
            "--log-outputs", "stderr",
            *self._tls_args(),
            *self.extra_args,
        ]

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return ["--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key),
                "--trusted-ca-file", str(self.tls.ca), "--client-cert-auth"]

    def start(self, timeout: float = 20.0) -> None:
        """Run etcd and return once a client call succeeds; RuntimeError with the log tail otherwise."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("etcd is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                self._read_once()
                return
            except Exception as exc:  # any failure means "not ready yet"
                last_error = exc
            time.sleep(0.02)
        code = self.process.poll()
        self.stop()
        state = f"exited with {code}" if code is not None else f"not ready after {timeout}s ({last_error!r})"
        raise RuntimeError(f"etcd {state}; log tail:\n{self.log_tail()}")

    def _read_once(self) -> None:
        """One read through a fresh client, logged in as root after enable_auth(); raises while etcd is not up.

        A fresh client each time: a gRPC channel that failed to connect backs off for a second or more."""
        client = new_client("127.0.0.1", self.client_port, plaintext=self.tls is None, timeout=1,
                            **self.client_tls(), **self._login)
        try:
            client.get("/")
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; does nothing when not running."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL (a crash): nothing is flushed or closed cleanly."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"
