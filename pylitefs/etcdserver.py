"""A real single-member etcd on free 127.0.0.1 ports, for tests, benchmarks and the demo; always stopped."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import etcd3

from pylitefs.cluster import free_port

ETCD_BINARY = "/usr/bin/etcd"
#: How long stop() waits after SIGTERM before SIGKILL.
STOP_TIMEOUT = 5.0


class EtcdServer:
    """One etcd process; start() again after stop()/kill() restarts it on the same ports and data dir."""

    def __init__(self, data_dir: Path, log_path: Path, name: str = "etcd0") -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

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
        ]

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
            # A fresh client each time: a gRPC channel that failed to connect backs off for a second or more.
            client = etcd3.client("127.0.0.1", self.client_port, timeout=1)
            try:
                client.get("/")
                return
            except Exception as exc:  # any failure means "not ready yet"
                last_error = exc
            finally:
                client.close()
            time.sleep(0.02)
        code = self.process.poll()
        self.stop()
        state = f"exited with {code}" if code is not None else f"not ready after {timeout}s ({last_error!r})"
        raise RuntimeError(f"etcd {state}; log tail:\n{self.log_tail()}")

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
