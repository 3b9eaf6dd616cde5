"""Inode numbers the daemon allocates itself, and the kernel's references to them.

ext4 reuses a deleted journal's inode number at once, so data-dir inode
numbers would make the kernel confuse a new `-journal` with the old one; here
every name that appears gets a fresh number for the life of the mount. An
inode lives while it has a name, a kernel lookup reference, or an open handle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyfuse3

from fs.names import FileName, Kind

ROOT_INODE: int = pyfuse3.ROOT_INODE


@dataclass(slots=True, eq=False)
class Inode:
    """One file of the mount.

    `mtime_ns` is the modification time the kernel is shown. It moves only when
    the file changes behind the kernel's back (never for writes that go
    through the mount), so libfuse's `auto_inval_data` never drops pages the
    kernel already holds correctly.
    """

    ino: int
    kind: Kind
    name: FileName | None
    mtime_ns: int
    lookups: int = 0
    fds: set[int] = field(default_factory=set)


class InodeTable:
    """Maps names to inodes and inode numbers to inodes (root excluded)."""

    def __init__(self) -> None:
        self._next_ino = ROOT_INODE + 1
        self._by_name: dict[str, Inode] = {}
        self._by_ino: dict[int, Inode] = {}

    def get(self, ino: int) -> Inode | None:
        """The inode with this number, if it is still alive."""
        return self._by_ino.get(ino)

    def by_name(self, name: str) -> Inode | None:
        """The inode currently bound to `name`, if the daemon has seen it."""
        return self._by_name.get(name)

    def bind(self, name: FileName, mtime_ns: int) -> Inode:
        """The inode bound to `name`, allocating a fresh number if it has none."""
        inode = self._by_name.get(name.name)
        if inode is None:
            inode = Inode(self._next_ino, name.kind, name, mtime_ns)
            self._next_ino += 1
            self._by_name[name.name] = inode
            self._by_ino[inode.ino] = inode
        return inode

    def unbind(self, name: str) -> Inode | None:
        """Detach `name` from its inode (unlink, or the target of a rename)."""
        inode = self._by_name.pop(name, None)
        if inode is not None:
            inode.name = None
            self._maybe_drop(inode)
        return inode

    def rename(self, old: str, new: FileName) -> None:
        """Move the inode bound to `old` to `new`, replacing what `new` had."""
        self.unbind(new.name)
        inode = self._by_name.pop(old, None)
        if inode is not None:
            inode.name = new
            self._by_name[new.name] = inode

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped `count` references to `ino`."""
        inode = self._by_ino.get(ino)
        if inode is not None:
            inode.lookups -= count
            self._maybe_drop(inode)

    def closed(self, inode: Inode, fd: int) -> None:
        """A handle on `inode` was released."""
        inode.fds.discard(fd)
        self._maybe_drop(inode)

    def names(self) -> list[str]:
        """Names bound to an inode."""
        return list(self._by_name)

    def _maybe_drop(self, inode: Inode) -> None:
        if inode.name is None and inode.lookups <= 0 and not inode.fds:
            self._by_ino.pop(inode.ino, None)
