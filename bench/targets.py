"""The three places a benchmark database can live: native, pylitefs, bindfs.

Each target is a context manager: entering it makes `path` a directory where
SQLite databases can be created (mounting if needed), leaving it always tears
down whatever was started, also on errors and Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType

from pylitefs.process import MountProcess, abort_connection, force_unmount, is_mounted

#: Seconds to wait for a mount to appear or a daemon to exit.
MOUNT_TIMEOUT = 30.0

TARGET_NAMES = ("native", "pylitefs", "nocapture", "bindfs")


class MountFailed(Exception):
    """A target's file system did not come up; the message says why."""


class Target(AbstractContextManager["Target"]):
    """A directory to run workloads in; subclasses mount something there."""

    name = "native"

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.path = work_dir / self.name

    def __enter__(self) -> Target:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Undo `__enter__`; safe to call more than once."""

    def describe(self) -> str:
        """One line saying what this target is."""
        return f"plain directory {self.path}"

    def check(self) -> None:
        """Raise MountFailed unless the target still serves `path`.

        A mount whose daemon died leaves a plain directory behind: a workload
        run there would measure the local disk and report it as the mount.
        """

    def remove_database(self, name: str) -> None:
        """Delete database `name` and its companions, through this target's path."""
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(self.path / f"{name}{suffix}")
            except FileNotFoundError:
                pass


class PylitefsTarget(Target):
    """The pylitefs mount, run by `pylitefs.process.MountProcess`."""

    name = "pylitefs"

    def __init__(self, work_dir: Path, extra_args: list[str] | None = None) -> None:
        super().__init__(work_dir)
        self.mount = MountProcess(mountpoint=self.path, data_dir=work_dir / f"{self.name}-data",
                                  log_path=work_dir / f"{self.name}.log", extra_args=extra_args or [])

    def __enter__(self) -> Target:
        try:
            self.mount.start(timeout=MOUNT_TIMEOUT)
        except Exception as exc:
            self.stop()
            raise MountFailed(f"pylitefs: {exc}") from exc
        return self

    def stop(self) -> None:
        if self.mount.proc is not None:
            self.mount.stop()

    def check(self) -> None:
        if not self.mount.alive() or not is_mounted(str(self.path)):
            raise MountFailed(f"pylitefs is gone (exit code {self.mount.proc and self.mount.proc.poll()}); "
                              f"see {self.mount.log_path}")

    def describe(self) -> str:
        return f"pylitefs mount {self.path} (data {self.mount.data_dir}, log {self.mount.log_path})"


class NoCaptureTarget(PylitefsTarget):
    """The same pylitefs mount with commit capture off: the cost of capture, by difference."""

    name = "nocapture"

    def __init__(self, work_dir: Path, extra_args: list[str] | None = None) -> None:
        super().__init__(work_dir, [*(extra_args or []), "--no-capture"])


class BindfsTarget(Target):
    """bindfs, the C FUSE passthrough reference, with its default options.

    Run in the foreground (`-f`) as our child so that it can be stopped by pid.
    Its defaults are libfuse's: single-threaded, 1 s entry/attr caching, no
    negative-lookup caching, page cache dropped at each open.
    """

    name = "bindfs"

    def __init__(self, work_dir: Path, extra_args: list[str] | None = None) -> None:
        super().__init__(work_dir)
        self.source = work_dir / "bindfs-src"
        self.extra_args = extra_args or []
        self.log_path = work_dir / "bindfs.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The bindfs command line."""
        return ["bindfs", "-f", "--no-allow-other", *self.extra_args, str(self.source), str(self.path)]

    def __enter__(self) -> Target:
        if shutil.which("bindfs") is None:
            raise MountFailed("bindfs: not installed (apt-get install bindfs), or use --only")
        self.source.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(str(self.path)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise MountFailed(f"bindfs did not mount: {self.log_path.read_text(errors='replace')}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        mountpoint = str(self.path)
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-q", mountpoint], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                self.proc.wait(MOUNT_TIMEOUT / 2)
            except subprocess.TimeoutExpired:
                abort_connection(mountpoint)
                self.proc.kill()
                self.proc.wait(MOUNT_TIMEOUT / 2)
        if is_mounted(mountpoint):
            abort_connection(mountpoint)
            force_unmount(mountpoint)

    def check(self) -> None:
        if self.proc is None or self.proc.poll() is not None or not is_mounted(str(self.path)):
            raise MountFailed(f"bindfs is gone; see {self.log_path}")

    def describe(self) -> str:
        return f"bindfs {' '.join(self.command()[1:])}"


def make_target(name: str, work_dir: Path, pylitefs_args: list[str], bindfs_args: list[str]) -> Target:
    """The target called `name` (one of TARGET_NAMES), not yet entered."""
    if name == "native":
        return Target(work_dir)
    if name == "pylitefs":
        return PylitefsTarget(work_dir, pylitefs_args)
    if name == "nocapture":
        return NoCaptureTarget(work_dir, pylitefs_args)
    if name == "bindfs":
        return BindfsTarget(work_dir, bindfs_args)
    raise ValueError(f"unknown target {name!r}")
