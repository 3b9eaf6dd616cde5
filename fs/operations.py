"""pyfuse3 operations: the mount's root directory, passed through to the data dir.

Every handler is wrapped by `fuse_handler`, the mount's one error boundary:
domain errors (`fs.errors.FsError`) and `OSError` become `FUSEError` with their
errno; anything else is logged once with its traceback and becomes `EIO`, so
no exception can reach pyfuse3's main loop.

Replica policy (DESIGN §5): while `access.writable()` is False (a replica,
or a primary past its lease's deadline, the fence of DESIGN §7), application
requests follow `fs.access.replica_refusal` (databases are opened read-write
but never written; journals and WALs are never created, opened for writing
or removed; `-shm` is free). Requests from the daemon's own registered
threads (`Access.thread()`, how `fs.apply` writes transactions through the
mount) are always passed through, never captured. Whether a write is allowed
— and so captured — is decided once per request (`_write_access`), so a
failover or a passed deadline takes effect on open files at once, and no
request can be allowed as a primary's yet miss capture. `fsync` and
`fsyncdir` keep making the log durable while `access.primary`, deadline or
not (syncing what was captured is always harmless).

Virtual files: `<db>-pos` (the database's position), and at the root, when a
`ClusterStatus` is given, `.lag` (milliseconds) and, on a replica,
`.primary` (the primary's hostname). All are read-only and direct_io.

Cache policy (measured, DESIGN.md §9): files are opened with `keep_cache`,
entries and attributes (also negative lookups) are cached for `CACHE_TIMEOUT`,
and the mtime the kernel sees never moves for writes made through the mount,
so libfuse's `auto_inval_data` never drops valid pages. Every process on this
host goes through the same kernel page cache, which is what keeps SQLite's
file, lock and `-shm` semantics coherent.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from fs.access import Access, ClusterStatus, Op, replica_refusal
from fs.capture import Capture, CommitGate, CommitSink
from fs.errors import FsError, InvalidContent, NotFound, NotPermitted, Stale, Unsupported
from fs.formats.wal import WAL_HEADER_SIZE
from fs.inodes import ROOT_INODE, Inode, InodeTable
from fs.names import FileName, Kind, classify, is_valid

log = logging.getLogger(__name__)

#: Seconds the kernel may cache entries and attributes, negative lookups too.
#: Only the daemon changes files, and it invalidates what it changes itself.
CACHE_TIMEOUT = 3600.0
#: `-pos`, `.primary` and `.lag` entries come and go: cache them briefly.
POSITION_TIMEOUT = 1.0
#: File handles of virtual files start here, far above any descriptor number.
_FIRST_VIRTUAL_FH = 1 << 32
#: Files whose application writes pass the admission check (a `-shm` write never waits).
_ADMITTED = frozenset({Kind.DATABASE, Kind.JOURNAL, Kind.WAL})
POSITION_SIZE = 34  # 16 hex digits, '/', 16 hex digits, newline (LiteFS's format)
#: Root files served by the daemon from its `ClusterStatus` (LiteFS's names).
PRIMARY_FILE = ".primary"
LAG_FILE = ".lag"
STATUS_FILES = (PRIMARY_FILE, LAG_FILE)

SQLITE_MAGIC = b"SQLite format 3\x00"

# Flags that concern the name, not the open file (O_TRUNC is done by `open`
# itself, with capture); O_APPEND is resolved by the kernel (it sends the
# offset), and pwrite on an O_APPEND fd would ignore it.
_STRIP_OPEN_FLAGS = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY | os.O_APPEND

P = ParamSpec("P")
R = TypeVar("R")


def fuse_handler(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Wrap a handler so that only `pyfuse3.FUSEError` can leave it."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError as exc:
            log.debug("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in FUSE handler %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass(slots=True, eq=False)
class Handle:
    """One FUSE open: its own data-dir descriptor (also used as the fh).

    `privileged`: opened by one of the daemon's own threads (`Access.thread()`);
    such a handle may always write, and its writes are never captured.
    """

    fd: int
    inode: Inode
    privileged: bool = False


class Operations(pyfuse3.Operations):
    """The mount's file operations over one flat data directory."""

    supports_dot_lookup = False
    enable_writeback_cache = False  # commit capture must see every write

    def __init__(
        self,
        data_dir: str,
        sink: CommitSink | None = None,
        access: Access | None = None,
        status: ClusterStatus | None = None,
        admission: Callable[[str], Awaitable[None]] | None = None,
        gate: CommitGate | None = None,
    ) -> None:
        """Serve `data_dir`.

        With a `sink`, every transaction committed through the mount while
        `access.writable()` is captured into it, and `<db>-pos` files show
        `sink.position(db)`. Without `access`, the mount is a primary. With a
        `status`, the root holds `.lag` and (on a replica) `.primary`. With
        `admission`, an application's write to a database, journal or WAL on
        the primary first awaits `admission(db)`, which may hold it (bounded
        replication lag) or raise an FsError. With a `gate`, the write,
        truncate or unlink that completes a commit of a database the gate
        holds is performed only once the gate confirmed the logged
        transaction (synchronous replication; see fs.capture).
        """
        super().__init__()
        self.data_dir = data_dir
        self._dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
        self._inodes = InodeTable()
        self._handles: dict[int, Handle] = {}
        self._root_mtime_ns = os.stat(self._dir_fd).st_mtime_ns
        self._sink = sink
        self._gate = gate
        self._capture = Capture(sink, self._dir_fd, gate) if sink is not None else None
        self._access = access if access is not None else Access(primary=True)
        self._status = status
        self._admission = admission
        self._virtual: dict[int, Callable[[], bytes]] = {}  # fh of an open virtual file -> content
        self._next_virtual_fh = _FIRST_VIRTUAL_FH

    def close(self) -> None:
        """Close every descriptor the operations hold."""
        for handle in self._handles.values():
            os.close(handle.fd)
        self._handles.clear()
        os.close(self._dir_fd)

    # ------------------------------------------------------- replica policy

    def _privileged(self, ctx: pyfuse3.RequestContext | None) -> bool:
        return ctx is not None and self._access.privileged(ctx.pid)

    def _write_access(self, ops: Op | tuple[Op, ...], kind: Kind, privileged: bool) -> Capture | None:
        """The one decision on a request that changes a `kind` file: allowed and captured, or not.

        - privileged (the daemon's own threads): allowed, never captured: None;
        - `access.writable()` (primary within its deadline): allowed and
          captured: the Capture (None without a sink);
        - otherwise the replica policy: raise `replica_refusal` of the first
          of `ops` that is refused, else allowed uncaptured: None.
        """
        if privileged:
            return None
        if self._access.writable():
            return self._capture
        for op in (ops,) if isinstance(ops, Op) else ops:
            refusal = replica_refusal(op, kind)
            if refusal is not None:
                raise refusal
        return None

    def reset_capture(self) -> None:
        """Forget what capture knew of every database: it reloads it from the files when next needed.

        For the node becoming primary again after being a replica: the
        applier's writes bypassed capture, so its per-database state (journal
        header, WAL tracker, mode) is stale. Call on the thread serving the
        mount, before the node becomes writable.
        """
        if self._sink is not None:
            self._capture = Capture(self._sink, self._dir_fd, self._gate)

    # ----------------------------------------------------------- attributes

    def _root_attrs(self) -> pyfuse3.EntryAttributes:
        st = os.stat(self._dir_fd)
        attrs = _attrs_from_stat(st, ROOT_INODE, self._root_mtime_ns)
        attrs.st_nlink = 2
        return attrs

    def _inode_attrs(self, inode: Inode) -> pyfuse3.EntryAttributes:
        if inode.kind is Kind.POSITION:
            return self._virtual_attrs(inode, POSITION_SIZE)
        if inode.kind is Kind.STATUS:
            assert inode.name is not None
            return self._virtual_attrs(inode, len(self._status_text(inode.name.name)))
        if inode.name is not None:
            st = os.stat(inode.name.name, dir_fd=self._dir_fd, follow_symlinks=False)
        elif inode.fds:
            st = os.fstat(next(iter(inode.fds)))
        else:
            raise NotFound(f"inode {inode.ino} was deleted")
        return _attrs_from_stat(st, inode.ino, inode.mtime_ns)

    def _bind(self, name: str) -> tuple[Inode, pyfuse3.EntryAttributes]:
        """Bind `name` (existing in the data dir) to an inode and count the lookup."""
        if name in STATUS_FILES:
            return self._bind_status(name)
        fname = classify(name)
        if fname.kind is Kind.POSITION:
            return self._bind_position(fname)
        inode = self._inodes.by_name(name)
        if inode is None:
            st = os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise NotFound(f"{name!r} in the data dir is not a regular file")
            inode = self._inodes.bind(fname, st.st_mtime_ns)
        attrs = self._inode_attrs(inode)
        inode.lookups += 1
        return inode, attrs

    def _inode(self, ino: int) -> Inode:
        inode = self._inodes.get(ino)
        if inode is None:
            raise NotFound(f"no inode {ino}")
        return inode

    @staticmethod
    def _check_root(parent_inode: int) -> None:
        if parent_inode != ROOT_INODE:
            raise NotFound("the mount has no subdirectories")

    # ---------------------------------------------------- position files

    def _bind_position(self, fname: FileName) -> tuple[Inode, pyfuse3.EntryAttributes]:
        if self._sink is None:
            raise NotFound("position files exist only when capture is on")
        try:
            os.stat(fname.database, dir_fd=self._dir_fd)
        except FileNotFoundError:
            raise NotFound(f"no database {fname.database!r}") from None
        inode = self._inodes.bind(fname, self._root_mtime_ns)
        inode.lookups += 1
        return inode, self._virtual_attrs(inode, POSITION_SIZE)

    def _bind_status(self, name: str) -> tuple[Inode, pyfuse3.EntryAttributes]:
        size = len(self._status_text(name))  # raises NotFound when it does not exist now
        inode = self._inodes.bind(FileName(name, Kind.STATUS, ""), self._root_mtime_ns)
        inode.lookups += 1
        return inode, self._virtual_attrs(inode, size)

    def _status_text(self, name: str) -> bytes:
        """The content of `.primary` or `.lag`; NotFound when the file does not exist now."""
        status = self._status
        if status is not None:
            if name == LAG_FILE:
                return f"{status.lag_ms()}\n".encode()
            if name == PRIMARY_FILE:
                host = status.primary_hostname()
                if host is not None:
                    return f"{host}\n".encode()
        raise NotFound(f"no {name} on this node")

    @staticmethod
    def _virtual_attrs(inode: Inode, size: int) -> pyfuse3.EntryAttributes:
        attrs = _negative_entry()
        attrs.st_ino = inode.ino
        attrs.entry_timeout = POSITION_TIMEOUT
        attrs.attr_timeout = POSITION_TIMEOUT
        attrs.st_mode = stat.S_IFREG | 0o444
        attrs.st_nlink = 1
        attrs.st_size = size
        attrs.st_blksize = 4096
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = inode.mtime_ns
        return attrs

    def _open_virtual(self, fname: FileName, flags: int) -> pyfuse3.FileInfo:
        if flags & (os.O_ACCMODE | os.O_TRUNC) != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EACCES)
        content: Callable[[], bytes]
        if fname.kind is Kind.POSITION:
            db = fname.database
            content = lambda: self._position_text(db)  # noqa: E731
        else:
            name = fname.name
            self._status_text(name)  # NotFound if it went away since the lookup
            content = lambda: self._status_text(name)  # noqa: E731
        fh = self._next_virtual_fh
        self._next_virtual_fh += 1
        self._virtual[fh] = content
        # direct_io: the content changes while the kernel's idea of the size does not.
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    def _position_text(self, db: str) -> bytes:
        """LiteFS's position format: 16 hex digits of TXID, '/', 16 of checksum, newline."""
        assert self._sink is not None
        txid, checksum = self._sink.position(db) or (0, 0)
        return f"{txid:016x}/{checksum:016x}\n".encode()

    # ------------------------------------------------------------- handlers

    @fuse_handler
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        self._check_root(parent_inode)
        text = os.fsdecode(name)
        if text in (".", ".."):
            return self._root_attrs()
        if text in STATUS_FILES:
            return self._bind(text)[1]  # NotFound is not cached: it may appear at any moment
        if not is_valid(text):
            return _negative_entry()
        try:
            return self._bind(text)[1]
        except FileNotFoundError:
            return _negative_entry()
        except NotFound:
            if text.endswith("-pos"):
                raise  # uncached: the database may appear at any moment
            return _negative_entry()

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # pyfuse3 runs forget with no reply: any exception, FUSEError too,
        # would end its main loop. So nothing may escape here.
        try:
            for ino, count in inode_list:
                self._inodes.forget(ino, count)
        except Exception:
            log.exception("unexpected error in forget")

    @fuse_handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        if inode == ROOT_INODE:
            return self._root_attrs()
        return self._inode_attrs(self._inode(inode))

    @fuse_handler
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if inode == ROOT_INODE:
            raise NotPermitted("the mount's root cannot be changed")
        node = self._inode(inode)
        target: int | str
        if fh is not None:
            target = fh
        elif node.name is not None:
            target = node.name.name
        else:
            raise NotFound(f"inode {inode} was deleted")
        at = {} if isinstance(target, int) else {"dir_fd": self._dir_fd}
        if node.kind in (Kind.POSITION, Kind.STATUS):
            raise NotPermitted("files served by pylitefs are read-only")
        handle = self._handles.get(fh) if fh is not None else None
        privileged = (handle is not None and handle.privileged) or self._privileged(ctx)
        ops: tuple[Op, ...] = (Op.TRUNCATE,) if fields.update_size else ()
        if fields.update_mode or fields.update_uid or fields.update_gid or fields.update_atime \
                or fields.update_mtime:
            ops += (Op.CHANGE,)
        capture = self._write_access(ops, node.kind, privileged)
        if fields.update_size:
            if isinstance(target, int):
                await self._truncate(node, target, attr.st_size, capture)
            else:
                fd = os.open(target, os.O_WRONLY, dir_fd=self._dir_fd)
                try:
                    await self._truncate(node, fd, attr.st_size, capture)
                finally:
                    os.close(fd)
        if fields.update_mode:
            os.chmod(target, stat.S_IMODE(attr.st_mode), **at)
        if fields.update_uid or fields.update_gid:
            os.chown(
                target,
                attr.st_uid if fields.update_uid else -1,
                attr.st_gid if fields.update_gid else -1,
                **at,
            )
        if fields.update_atime or fields.update_mtime:
            st = os.stat(target, **at)
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(target, ns=(atime, mtime), **at)
            if fields.update_mtime:
                node.mtime_ns = mtime
        return self._inode_attrs(node)

    @staticmethod
    async def _truncate(node: Inode, fd: int, size: int, capture: Capture | None) -> None:
        """Truncate the file open as `fd` to `size`, telling `capture` (if any) around it."""
        db = node.name.database if capture is not None and node.name is not None else None
        if capture is None or db is None:
            os.ftruncate(fd, size)
            return
        if node.kind is Kind.DATABASE or node.kind is Kind.WAL:
            await _sync_log_if_due(capture, db)
        if node.kind is Kind.JOURNAL:
            capture.journal_truncate(db, size)
            if capture.held is not None:
                await capture.confirm()
        elif node.kind is Kind.DATABASE:
            capture.database_truncate(db, os.fstat(fd).st_size, size)
        os.ftruncate(fd, size)
        if node.kind is Kind.WAL:
            capture.wal_truncated(db, size)

    @fuse_handler
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        raise NotPermitted("the mount holds only SQLite databases and their journals")

    @fuse_handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        raise NotPermitted("the mount has no subdirectories")

    @fuse_handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        raise NotPermitted("the mount holds no symbolic links")

    @fuse_handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        raise NotPermitted("the mount holds no hard links")

    @fuse_handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise NotFound("the mount has no subdirectories")

    @fuse_handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_root(parent_inode)
        fname = classify(os.fsdecode(name))
        if fname.kind is Kind.POSITION:
            raise NotPermitted("position files cannot be deleted")
        capture = self._write_access(Op.REMOVE, fname.kind, self._privileged(ctx))
        if capture is not None and fname.kind is Kind.WAL:
            await _sync_log_if_due(capture, fname.database)
        if capture is not None and fname.kind is Kind.JOURNAL:
            capture.journal_unlink(fname.database)
            if capture.held is not None:
                await capture.confirm()
        os.unlink(fname.name, dir_fd=self._dir_fd)
        self._inodes.unbind(fname.name)
        if capture is not None:
            if fname.kind is Kind.WAL:
                capture.wal_unlinked(fname.database)
            elif fname.kind is Kind.DATABASE:
                capture.database_unlinked(fname.database)

    @fuse_handler
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._check_root(parent_inode_old)
        self._check_root(parent_inode_new)
        old, new = classify(os.fsdecode(name_old)), classify(os.fsdecode(name_new))
        if old.kind is not new.kind:
            raise NotPermitted(f"cannot rename a {old.kind.value} file to a {new.kind.value} name")
        if old.kind is Kind.POSITION:
            raise NotPermitted("position files cannot be renamed")
        capture = self._write_access(Op.REMOVE, old.kind, self._privileged(ctx))
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise Unsupported("RENAME_EXCHANGE is not supported")
        if flags & pyfuse3.RENAME_NOREPLACE:
            try:
                os.stat(new.name, dir_fd=self._dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                raise pyfuse3.FUSEError(errno.EEXIST)
        os.rename(old.name, new.name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        self._inodes.rename(old.name, new)
        if capture is not None and old.kind is Kind.DATABASE:
            capture.database_renamed(old.name, new.name)

    @fuse_handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._inode(inode)
        if node.name is None:
            raise Stale(f"inode {inode} was deleted")
        if node.kind in (Kind.POSITION, Kind.STATUS):
            return self._open_virtual(node.name, flags)
        privileged = self._privileged(ctx)
        ops: tuple[Op, ...] = (Op.OPEN_WRITE,) if flags & os.O_ACCMODE != os.O_RDONLY else ()
        if flags & os.O_TRUNC:
            ops += (Op.TRUNCATE,)
        capture = self._write_access(ops, node.kind, privileged) if ops else None
        try:
            fd = os.open(node.name.name, flags & ~_STRIP_OPEN_FLAGS, dir_fd=self._dir_fd)
        except FileNotFoundError:
            # Unlinked since the kernel's lookup, e.g. SQLite's last connection
            # removing `-shm` while another process opens it with O_CREAT.
            raise Stale(f"{node.name.name} was removed since it was looked up") from None
        if flags & os.O_TRUNC:  # libfuse asks for atomic O_TRUNC: it arrives here
            try:
                await self._truncate(node, fd, 0, capture)
            except BaseException:
                os.close(fd)
                raise
        return self._new_handle(fd, node, privileged)

    @fuse_handler
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._check_root(parent_inode)
        fname = classify(os.fsdecode(name))
        if fname.kind is Kind.POSITION:
            raise NotPermitted("position files are served by pylitefs and cannot be created")
        if not stat.S_ISREG(mode):
            raise NotPermitted("the mount holds only regular files")
        privileged = self._privileged(ctx)
        self._write_access(Op.CREATE, fname.kind, privileged)
        open_flags = (flags & ~_STRIP_OPEN_FLAGS) | os.O_CREAT | (flags & os.O_EXCL)
        fd = os.open(fname.name, open_flags, stat.S_IMODE(mode), dir_fd=self._dir_fd)
        try:
            if ctx is not None and os.geteuid() == 0:
                os.fchown(fd, ctx.uid, ctx.gid)
            inode, attrs = self._bind(fname.name)
        except BaseException:
            os.close(fd)
            raise
        return self._new_handle(fd, inode, privileged), attrs

    def _new_handle(self, fd: int, inode: Inode, privileged: bool) -> pyfuse3.FileInfo:
        self._handles[fd] = Handle(fd, inode, privileged)
        inode.fds.add(fd)
        # Never direct_io: SQLite mmaps `-shm` with MAP_SHARED (DESIGN.md §9).
        return pyfuse3.FileInfo(fh=fd, keep_cache=True, direct_io=False)

    @fuse_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        if fh >= _FIRST_VIRTUAL_FH:
            return self._virtual[fh]()[off : off + size]
        return os.pread(fh, size, off)

    @fuse_handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        inode = handle.inode
        kind = inode.kind
        if (self._admission is not None and not handle.privileged and inode.name is not None
                and kind in _ADMITTED and self._access.writable()):
            await self._admission(inode.name.database)  # decided again below: the role may change meanwhile
        capture = self._write_access(Op.WRITE, kind, handle.privileged)
        if off < len(SQLITE_MAGIC) and kind is Kind.DATABASE:
            _check_database_header(off, buf)
        if capture is None or inode.name is None:
            return os.pwrite(fh, buf, off)
        db = inode.name.database
        if kind is Kind.DATABASE or (kind is Kind.WAL and off < WAL_HEADER_SIZE):
            await _sync_log_if_due(capture, db)
        if kind is Kind.WAL:
            if self._gate is not None and self._gate.holds(db):
                return await capture.wal_write_held(db, off, buf, lambda: os.pwrite(fh, buf, off))
            return capture.wal_write(db, off, buf, lambda: os.pwrite(fh, buf, off))
        if kind is Kind.DATABASE:
            capture.database_write(db, off, buf)
        elif kind is Kind.JOURNAL:
            capture.journal_write(db, off, buf)
            if capture.held is not None:
                await capture.confirm()
        return os.pwrite(fh, buf, off)

    @fuse_handler
    async def release(self, fh: int) -> None:
        if fh >= _FIRST_VIRTUAL_FH:
            del self._virtual[fh]
            return
        handle = self._handles.pop(fh)
        os.close(fh)
        self._inodes.closed(handle.inode, fh)

    @fuse_handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        if fh >= _FIRST_VIRTUAL_FH:
            return
        handle = self._handles[fh]
        inode = handle.inode
        # Syncing the log is harmless past the deadline: whenever primary.
        capture = self._capture if self._access.primary and not handle.privileged else None
        db = inode.name.database if capture is not None and inode.name is not None else None

        def flush() -> None:
            # The log first: a crash in between leaves the log ahead of the
            # database, which recovery resolves exactly (never the reverse).
            # Not for the WAL: its commits are durable in it (see fs.capture).
            if capture is not None and db is not None and inode.kind is not Kind.WAL:
                capture.sync(db)
            (os.fdatasync if datasync else os.fsync)(fh)

        await trio.to_thread.run_sync(flush)

    @fuse_handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != ROOT_INODE:
            raise NotFound("the mount has no subdirectories")
        return ROOT_INODE

    @fuse_handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        names = [n for n in os.listdir(self._dir_fd) if is_valid(n)]
        if self._sink is not None:
            names += [f"{n}-pos" for n in names if classify(n).kind is Kind.DATABASE]
        if self._status is not None:
            names += [LAG_FILE] + ([PRIMARY_FILE] if self._status.primary_hostname() is not None else [])
        names.sort()
        for index in range(start_id, len(names)):
            try:
                inode, attrs = self._bind(names[index])
            except (FileNotFoundError, NotFound):
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(names[index]), attrs, index + 1):
                inode.lookups -= 1  # the kernel did not take this entry
                return

    @fuse_handler
    async def releasedir(self, fh: int) -> None:
        return None

    @fuse_handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        capture = self._capture if self._access.primary else None

        def flush() -> None:
            if capture is not None:
                capture.sync_pending()
            os.fsync(self._dir_fd)

        await trio.to_thread.run_sync(flush)

    @fuse_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self._dir_fd)
        data = pyfuse3.StatvfsData()
        for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                     "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(data, attr, getattr(sv, attr))
        return data

    # flush, getxattr, setxattr, listxattr and removexattr are left to
    # pyfuse3's defaults (ENOSYS): the kernel then stops sending them for the
    # life of the mount. The mount holds no buffers to flush, and without this
    # the kernel asks for `security.capability` on most writes (measured: ~40%
    # of the requests of small WAL transactions).


async def _sync_log_if_due(capture: Capture, db: str) -> None:
    """fsync `db`'s log (in a thread) if WAL commits only the WAL holds durably are about to be checkpointed or lost."""
    if capture.log_sync_due(db):
        await trio.to_thread.run_sync(capture.sync, db)


def _check_database_header(off: int, buf: bytes) -> None:
    """Refuse a write that puts anything but SQLite's magic in a database's first 16 bytes."""
    end = min(len(SQLITE_MAGIC), off + len(buf))
    if buf[: end - off] != SQLITE_MAGIC[off:end]:
        raise InvalidContent("only SQLite databases can be stored in the mount")


def _attrs_from_stat(st: os.stat_result, ino: int, mtime_ns: int) -> pyfuse3.EntryAttributes:
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = ino
    attrs.generation = 0
    attrs.entry_timeout = CACHE_TIMEOUT
    attrs.attr_timeout = CACHE_TIMEOUT
    attrs.st_mode = st.st_mode
    attrs.st_nlink = 1
    attrs.st_uid = st.st_uid
    attrs.st_gid = st.st_gid
    attrs.st_rdev = 0
    attrs.st_size = st.st_size
    attrs.st_blksize = st.st_blksize
    attrs.st_blocks = st.st_blocks
    attrs.st_atime_ns = mtime_ns
    attrs.st_mtime_ns = mtime_ns
    attrs.st_ctime_ns = mtime_ns
    return attrs


def _negative_entry() -> pyfuse3.EntryAttributes:
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = 0
    attrs.entry_timeout = CACHE_TIMEOUT
    return attrs
