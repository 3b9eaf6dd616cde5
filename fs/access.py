"""Who may write through the mount: the primary's applications, and the daemon's own threads.

On a replica the mount refuses application writes (DESIGN §5), but the daemon
applies replicated transactions by writing *through its own mount* from
worker threads, so that the kernel's one page cache stays coherent. Those
threads register with `Access.thread()`; a FUSE request whose `ctx.pid` is
one of them is privileged.

Measured with pyfuse3 3.5 on Linux 6.x: `ctx.pid` of a request is the id of
the *thread* that made the system call (the kernel's `task_pid`, i.e.
`threading.get_native_id()`), not the process id. Registering thread ids
therefore identifies exactly the daemon's applying threads, never its other
threads nor another process.

Lease fence (DESIGN §7): a primary accepts application writes only until
`writable_until` (a `time.monotonic()` instant the node moves forward at
each lease renewal). Past it, `writable()` is False although `primary` is
still True (the node has not noticed yet), and the mount refuses writes
exactly as a replica does.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from fs.errors import FsError, ReadOnlyDatabase, ReadOnlyReplica
from fs.names import Kind


class ClusterStatus(Protocol):
    """What the mount's `.primary` and `.lag` files show (implemented by the node).

    Called on the thread serving the mount, at every lookup, getattr and
    read of those files: must answer at once, never block.
    """

    def primary_hostname(self) -> str | None:
        """The primary's hostname while this node is a replica; None on the primary."""

    def lag_ms(self) -> int:
        """How far this node's databases are behind the primary, in milliseconds."""


class Access:
    """Whether this node's mount accepts application writes (primary) and which threads are the daemon's own.

    `primary` and `writable_until` may change at any time (failover, lease
    renewal); the mount reads them at each decision. Both are plain
    attributes, set by the node.
    """

    def __init__(self, primary: bool = True, writable_until: float = math.inf) -> None:
        self.primary = primary
        #: `time.monotonic()` instant after which application writes are refused
        #: even while `primary` (the lease's fence); infinite without a lease.
        self.writable_until = writable_until
        self._lock = threading.Lock()
        self._threads: Counter[int] = Counter()

    def writable(self) -> bool:
        """True while application writes are accepted: primary, and the lease's deadline not passed."""
        return self.primary and time.monotonic() < self.writable_until

    def privileged(self, pid: int) -> bool:
        """True if a FUSE request with this `ctx.pid` came from a registered daemon thread."""
        return pid in self._threads

    @contextmanager
    def thread(self) -> Iterator[None]:
        """Register the calling thread as the daemon's own for the block (nestable)."""
        tid = threading.get_native_id()
        with self._lock:
            self._threads[tid] += 1
        try:
            yield
        finally:
            with self._lock:
                self._threads[tid] -= 1
                if self._threads[tid] <= 0:
                    del self._threads[tid]


class Op(enum.Enum):
    """What an application asks of a file, as far as the replica policy cares."""

    CREATE = "create"
    OPEN_WRITE = "open for writing"
    WRITE = "write"
    TRUNCATE = "truncate"
    CHANGE = "change the attributes of"
    REMOVE = "unlink or rename"


def replica_refusal(op: Op, kind: Kind) -> FsError | None:
    """The error an application gets on a replica for `op` on a `kind` file, or None if allowed.

    - database: opening read-write is allowed (SQLite always does), writing
      or truncating it is EROFS, creating, removing or renaming one EACCES;
    - `-journal` and `-wal`: anything but reading is EACCES. SQLite turns
      EACCES on creating a journal/WAL that does not exist into "attempt to
      write a readonly database", and reopens an existing WAL read-only (its
      write transactions then fail with SQLITE_READONLY);
    - `-shm`: everything is allowed (readers create and write the wal-index).
    """
    if kind is Kind.SHM:
        return None
    if kind is Kind.DATABASE:
        if op is Op.OPEN_WRITE:
            return None
        if op in (Op.WRITE, Op.TRUNCATE, Op.CHANGE):
            return ReadOnlyDatabase(f"cannot {op.value} a database on a replica")
        return ReadOnlyReplica(f"cannot {op.value} a database on a replica")
    return ReadOnlyReplica(f"cannot {op.value} a {kind.value} file on a replica")
