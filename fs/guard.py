"""The guard: a small process that ends the FUSE connection of a daemon killed while stuck on its own mount.

A daemon that reads or writes its own mount (a replica applying, a settle, a
snapshot) and is killed at that moment cannot finish exiting: its thread waits
for an answer only the dead daemon could give, so the FUSE connection stays up
and everything that touches the mount hangs. A machine that dies leaves no
such thing behind; the guard makes `kill -9` of the daemon end the same way.
It polls the daemon; when the daemon was killed (its main thread is dead
while another thread lives on, or a thread still has the SIGKILL pending)
and is still there after a grace period, it aborts the
mount's FUSE connection through fusectl (the stuck thread gets an error, the
daemon finishes exiting and releases its data dir) and detaches the mount.
It exits as soon as the daemon or its mount is gone.

Run by `start_guard()` from the daemon; `python -m fs.guard PID MINOR MOUNTPOINT`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from fs.fusectl import abort_minor, connection_exists, mount_device_minor

log = logging.getLogger(__name__)

#: How often the guard looks at the daemon.
POLL_INTERVAL = 0.25
#: How long a killed daemon may take to finish exiting before its connection is aborted.
EXIT_GRACE = 1.0


def _state(pid: int) -> str | None:
    """The state letter of `pid`'s main thread (R, S, D, Z, ...); None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


#: SIGKILL's bit in /proc's signal masks.
_SIGKILL_BIT = 1 << (9 - 1)


def _kill_pending(pid: int, tid: str) -> bool:
    """True when thread `tid` of `pid` has a SIGKILL it has not acted on (it waits in the kernel)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & _SIGKILL_BIT:
                    return True
    except (OSError, ValueError, IndexError):
        pass
    return False


def _stuck(pid: int) -> bool:
    """True when `pid` was killed but has not finished exiting.

    Either its main thread is already a zombie while another thread lives
    on, or one of its threads (the main one included: it may be the one
    waiting, in its exit, on a request to its own mount) still has the
    SIGKILL pending.
    """
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    if _state(pid) == "Z":
        return any(tid != str(pid) for tid in tids)
    return any(_kill_pending(pid, tid) for tid in tids)


def watch(pid: int, minor: int, mountpoint: str) -> None:
    """Guard daemon `pid` and its FUSE connection `minor` mounted at `mountpoint` until either is gone."""
    while _state(pid) is not None and connection_exists(minor):
        if _stuck(pid):
            deadline = time.monotonic() + EXIT_GRACE
            while _stuck(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _stuck(pid) and connection_exists(minor):
                log.error("pylitefs pid %d was killed while one of its threads waited on its own mount %s: "
                          "aborting FUSE connection %d so that it can exit", pid, mountpoint, minor)
                abort_minor(minor)
                if mount_device_minor(mountpoint) == minor:
                    subprocess.run(["fusermount3", "-u", "-z", "-q", mountpoint],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            return
        time.sleep(POLL_INTERVAL)


def start_guard(mountpoint: str) -> subprocess.Popen[bytes] | None:
    """Start the guard for this process's mount at `mountpoint`; None if nothing is mounted there.

    The guard runs in its own session (a Ctrl-C meant for the daemon does
    not reach it) and holds none of the daemon's files.
    """
    minor = mount_device_minor(mountpoint)
    if minor is None:
        return None
    return subprocess.Popen([sys.executable, "-m", "fs.guard", str(os.getpid()), str(minor), mountpoint],
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop_guard(guard: subprocess.Popen[bytes] | None) -> None:
    """End the guard of a daemon that is stopping cleanly."""
    if guard is not None and guard.poll() is None:
        guard.terminate()
        guard.wait()


def main(argv: list[str]) -> int:
    """Entry point: PID MINOR MOUNTPOINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) != 3:
        print("usage: python -m fs.guard PID MINOR MOUNTPOINT", file=sys.stderr)
        return 2
    watch(int(argv[0]), int(argv[1]), argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
