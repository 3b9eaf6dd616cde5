"""Domain errors of the mount, each carrying the errno an application sees.

`fs.operations` is the single place that turns these (and OSError) into
`pyfuse3.FUSEError`; nothing else may escape a FUSE handler.
"""

from __future__ import annotations

import errno


class FsError(Exception):
    """An error the mount reports to the application with `errno`."""

    errno: int = errno.EIO


class NotPermitted(FsError):
    """The mount does not hold this kind of object (directories, links, reserved names)."""

    errno = errno.EPERM


class NotFound(FsError):
    """No such file in the mount."""

    errno = errno.ENOENT


class Stale(FsError):
    """A file the kernel looked up is gone since (another process unlinked it meanwhile).

    ESTALE: the kernel looks the name up again and retries the open once, so
    an open with O_CREAT creates the file, as on a local file system.
    """

    errno = errno.ESTALE


class InvalidContent(FsError):
    """A write that would store something that is not a SQLite database."""

    errno = errno.EINVAL


class Unsupported(FsError):
    """An operation the mount does not implement (e.g. RENAME_EXCHANGE)."""

    errno = errno.EINVAL


class ReadOnlyReplica(FsError):
    """An application tried to create, open for writing, or remove a file on a replica.

    EACCES: SQLite reports a journal or WAL it cannot create as "attempt to
    write a readonly database", and opens an existing WAL read-only instead.
    """

    errno = errno.EACCES


class ReadOnlyDatabase(FsError):
    """An application tried to write or truncate a database file on a replica."""

    errno = errno.EROFS


class TooFarAhead(FsError):
    """The primary has more unacknowledged transactions than `replication.max-lag` and none came in time.

    EIO: the application's write (and so its transaction) fails; nothing of it is committed.
    """

    errno = errno.EIO
