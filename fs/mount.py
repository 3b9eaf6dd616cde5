"""Mounting and unmounting: preflight checks, the data-dir lock, the serve loop.

`serve()` runs pyfuse3's request loop until it is cancelled (e.g. on SIGTERM)
or the kernel ends the session, and always unmounts on the way out.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyfuse3
import trio

from fs.guard import start_guard, stop_guard
from fs.operations import Operations

log = logging.getLogger(__name__)

FUSE_DEVICE = "/dev/fuse"
LOCK_NAME = ".pylitefs.lock"


class MountError(Exception):
    """The mount cannot start; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class MountOptions:
    """What `serve()` needs to mount."""

    mountpoint: str
    data_dir: str
    allow_other: bool = False
    debug: bool = False

    def fuse_options(self) -> set[str]:
        """The mount options handed to libfuse."""
        opts = set(pyfuse3.default_options)
        opts |= {f"fsname=pylitefs:{self.data_dir.replace(',', '_')}", "subtype=pylitefs"}
        if self.allow_other:
            opts.add("allow_other")
        if self.debug:
            opts.add("debug")
        return opts


def check_fuse_device(device: str = FUSE_DEVICE) -> None:
    """Raise MountError when the FUSE device is missing or cannot be opened."""
    if not os.path.exists(device):
        raise MountError(
            f"{device} is missing: load the fuse module, or give the container "
            "--device /dev/fuse --cap-add SYS_ADMIN"
        )
    try:
        os.close(os.open(device, os.O_RDWR))
    except OSError as exc:
        raise MountError(f"cannot open {device}: {exc.strerror}") from None


def prepare_mountpoint(mountpoint: str) -> None:
    """Make sure `mountpoint` is an existing, unused directory.

    A stale FUSE mount left by a daemon that died is detached first; a live
    mount is refused. Staleness is probed with a directory listing, which
    always reaches the daemon (a stat may be answered from the kernel's
    attribute cache even after the daemon died; when it is not cached, the
    stat itself fails with ENOTCONN).
    """
    try:
        os.lstat(mountpoint)
        dead = False
    except FileNotFoundError:
        raise MountError(f"mount point {mountpoint} does not exist (create it first)") from None
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise MountError(f"cannot use mount point {mountpoint}: {exc.strerror}") from None
        dead = True
    if dead or _is_mountpoint(mountpoint):
        try:
            os.listdir(mountpoint)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise MountError(f"cannot use mount point {mountpoint}: {exc.strerror}") from None
            log.warning("clearing stale mount at %s left by a daemon that died", mountpoint)
            unmount(mountpoint)
            if _is_mountpoint(mountpoint):
                raise MountError(f"cannot clear stale mount at {mountpoint}") from None
        else:
            raise MountError(f"mount point {mountpoint} is busy: something is already mounted there")
    if not os.path.isdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not a directory")


def _is_mountpoint(path: str) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return True  # a dead FUSE mount can fail even the stat


def preflight(options: MountOptions) -> None:
    """Check the FUSE device and the mount point; raise MountError when unusable."""
    check_fuse_device()
    prepare_mountpoint(options.mountpoint)


def unmount(mountpoint: str) -> bool:
    """Detach a FUSE mount (lazily); True if something was unmounted."""
    proc = subprocess.run(
        ["fusermount3", "-u", "-z", "-q", mountpoint],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return proc.returncode == 0


def _is_exiting(pid: str) -> bool:
    """True if process `pid` was killed and is waiting to finish exiting (its main thread is a zombie)."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, ValueError, IndexError):
        return False


@contextmanager
def data_dir_lock(data_dir: str) -> Iterator[None]:
    """Create the data dir if needed and hold its lock for the life of the mount.

    Two daemons on one data dir would corrupt it; the second gets a MountError.
    """
    try:
        os.makedirs(data_dir, exist_ok=True)
        fd = os.open(os.path.join(data_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise MountError(f"data dir {data_dir} is not writable: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            if _is_exiting(owner):
                raise MountError(
                    f"data dir {data_dir} is still held by pylitefs pid {owner}, which was killed but cannot "
                    "exit: one of its threads waits on its own FUSE mount. Abort that mount's connection "
                    "(echo 1 > /sys/fs/fuse/connections/<minor>/abort, <minor> from /proc/self/mountinfo; "
                    "then fusermount3 -u -z <mount point>) and start again") from None
            raise MountError(f"data dir {data_dir} is in use by another pylitefs (pid {owner})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        probe = os.path.join(data_dir, ".pylitefs.probe")
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            os.unlink(probe)
        except OSError as exc:
            raise MountError(f"data dir {data_dir} is not writable: {exc.strerror}") from None
        yield
    finally:
        os.close(fd)


async def serve(
    ops: Operations,
    options: MountOptions,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mount `ops` at `options.mountpoint` and serve requests until cancelled.

    Run `preflight(options)` first: it turns the usual mistakes into one-line
    MountErrors before anything is mounted.

    Calls `task_status.started()` once the mount is in place. Always unmounts
    before returning, also when cancelled or failing. A guard process
    (fs/guard.py) aborts the mount's connection if this process is killed
    while one of its threads is stuck on the mount.
    """
    try:
        pyfuse3.init(ops, options.mountpoint, options.fuse_options())
    except RuntimeError as exc:
        raise MountError(f"cannot mount {options.mountpoint}: {exc}") from None
    guard = start_guard(options.mountpoint)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            task_status.started()
    finally:
        # unmount=True detaches lazily: processes that still hold files get
        # ENOTCONN, and SQLite recovers their hot journals at the next open.
        pyfuse3.close(unmount=True)
        stop_guard(guard)
        log.info("unmounted %s", options.mountpoint)
