"""The kernel's view of a FUSE mount: its connection number and fusectl's abort switch.

Read from /proc and /sys so that it works even when the mount no longer
answers (a daemon that died, or one stuck in the kernel).
"""

from __future__ import annotations

import os
import subprocess

FUSECTL_DIR = "/sys/fs/fuse/connections"


def mount_device_minor(mountpoint: str) -> int | None:
    """The FUSE connection number of the mount at `mountpoint` (None: no FUSE mount there)."""
    target = os.path.abspath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            lines = f.readlines()
    except OSError:
        return None
    for line in reversed(lines):
        parts = line.split()
        if len(parts) > 4 and parts[4] == target and "fuse" in line.split(" - ", 1)[-1]:
            return int(parts[2].split(":")[1])
    return None


def connection_exists(minor: int) -> bool:
    """True while FUSE connection `minor` is alive (mounting fusectl if needed)."""
    _mount_fusectl(minor)
    return os.path.isdir(os.path.join(FUSECTL_DIR, str(minor)))


def abort_minor(minor: int) -> bool:
    """Abort FUSE connection `minor`: every request waiting on it fails; True if done."""
    _mount_fusectl(minor)
    try:
        with open(os.path.join(FUSECTL_DIR, str(minor), "abort"), "w", encoding="ascii") as f:
            f.write("1")
    except OSError:
        return False
    return True


def abort_connection(mountpoint: str) -> bool:
    """Abort the FUSE connection of `mountpoint` through fusectl; True if done."""
    minor = mount_device_minor(mountpoint)
    return minor is not None and abort_minor(minor)


def _mount_fusectl(minor: int) -> None:
    if not os.path.isdir(os.path.join(FUSECTL_DIR, str(minor))) and not os.path.ismount(FUSECTL_DIR):
        subprocess.run(["mount", "-t", "fusectl", "none", FUSECTL_DIR],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
