"""Running a `pylitefs mount` as a child process: used by the demo, benchmarks and tests.

`MountProcess.start()` returns once the mount is in place (or raises with the
daemon's log); `stop()` always leaves nothing mounted and nothing running:
SIGTERM, then SIGKILL, then a lazy unmount, and as the last resort it aborts
the FUSE connection through fusectl (a daemon stuck in the kernel survives
SIGKILL, DESIGN.md §9).
"""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fs.fusectl import abort_connection, mount_device_minor
from fs.mount import unmount

__all__ = ["MountProcess", "MountProcessError", "abort_connection", "force_unmount", "is_mounted"]

READY_MARKER = "pylitefs ready"


class MountProcessError(Exception):
    """The daemon did not come up; the message carries its log."""


def is_mounted(mountpoint: str) -> bool:
    """True when a FUSE filesystem is mounted at `mountpoint` (live or stale)."""
    return mount_device_minor(mountpoint) is not None


def force_unmount(mountpoint: str) -> None:
    """Detach whatever is mounted at `mountpoint` (lazy unmount)."""
    if is_mounted(mountpoint):
        unmount(mountpoint)
    if is_mounted(mountpoint):
        subprocess.run(["umount", "-l", mountpoint],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


@dataclass
class MountProcess:
    """A `pylitefs mount` child process with its mount point and data dir."""

    mountpoint: Path
    data_dir: Path
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line that runs the daemon.

        Without a config file or an explicit --http.addr, the node listens on
        an ephemeral loopback port, so that any number of single-node mounts
        can run side by side.
        """
        defaults = [] if any(a in ("--config", "--http.addr") for a in self.extra_args) else [
            "--http.addr", "127.0.0.1:0"]
        return [sys.executable, "-m", "pylitefs", "mount",
                "--fuse.dir", str(self.mountpoint), "--data.dir", str(self.data_dir),
                *defaults, *self.extra_args]

    def start(self, timeout: float = 30.0) -> MountProcess:
        """Start the daemon and wait until its mount is ready."""
        try:
            self.mountpoint.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # A stale mount left by a killed daemon, its attributes not cached: the daemon clears it.
            if exc.errno != errno.ENOTCONN:
                raise
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_MARKER in self.log_text(offset) and is_mounted(str(self.mountpoint)):
                return self
            if self.proc.poll() is not None:
                raise MountProcessError(
                    f"pylitefs exited with {self.proc.returncode} before mounting:\n{self.log_text(offset)}")
            time.sleep(0.02)
        self.stop()
        raise MountProcessError(f"pylitefs did not mount within {timeout}s:\n{self.log_text(offset)}")

    def log_text(self, offset: int = 0) -> str:
        """What the daemon logged (from byte `offset`)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        """True while the daemon process runs."""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        """Send `signum` to the daemon."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` s for the daemon to exit; its exit code, or None."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop the daemon and make sure nothing stays mounted; its exit code."""
        code: int | None = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            code = self.wait(timeout)
            if code is None:
                abort_connection(str(self.mountpoint))
                self.proc.kill()
                code = self.wait(timeout)
        if is_mounted(str(self.mountpoint)):
            abort_connection(str(self.mountpoint))
            force_unmount(str(self.mountpoint))
        return code
