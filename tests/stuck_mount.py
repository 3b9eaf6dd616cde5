"""A FUSE daemon that gets stuck on its own mount, for the guard's test (tests/mount/test_guard.py).

`python -m tests.stuck_mount MOUNTPOINT`: mounts a filesystem with one file,
`hang`, whose reads are never answered, starts the guard (fs/guard.py) as
the real daemon does, and reads `hang` from a thread of its own. It prints
"read sent" once that read is waiting in the kernel: killed then, the
process cannot exit unless the guard aborts the connection.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading

import pyfuse3
import trio

from fs.guard import start_guard

HANG_INODE = pyfuse3.ROOT_INODE + 1


class HangingOps(pyfuse3.Operations):
    """A root directory holding `hang`, a file whose reads never return."""

    def __init__(self) -> None:
        super().__init__()

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.st_mode = (stat.S_IFDIR | 0o755) if inode == pyfuse3.ROOT_INODE else (stat.S_IFREG | 0o644)
        attr.st_size = 0 if inode == pyfuse3.ROOT_INODE else 4096
        return attr

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != b"hang":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(HANG_INODE)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        print("read sent", flush=True)
        await trio.sleep_forever()
        return b""


def main(mountpoint: str) -> None:
    pyfuse3.init(HangingOps(), mountpoint, ["fsname=stuck"])
    start_guard(mountpoint)

    def read_own_mount() -> None:
        with open(os.path.join(mountpoint, "hang"), "rb") as f:
            f.read(1)

    threading.Thread(target=read_own_mount, daemon=True).start()
    trio.run(pyfuse3.main)


if __name__ == "__main__":
    main(sys.argv[1])
