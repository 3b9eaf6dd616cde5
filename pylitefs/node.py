"""The node: the mount, the store, the HTTP port and replication, wired for one configuration.

With a static lease the primary is fixed: `lease.candidate: true` marks it
(and a config with no `lease` section is a single primary). The primary
captures every commit into its store and serves replica streams on
`http.addr`; a replica follows `lease.advertise-url`, applies what it
receives through its own mount, and refuses application writes.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Mapping
from typing import Any

import trio

from fs.access import Access
from fs.apply import Applier
from fs.locks import LockTimeout
from fs.mount import MountError, MountOptions, data_dir_lock, preflight, serve
from fs.operations import Operations
from fs.snapshot import read_consistent
from pylitefs import __version__
from pylitefs.config import Config, parse_addr
from pylitefs.http import HttpServer, StreamHandler
from pylitefs.startup import recover_databases, recover_replica_databases
from replication.primary import PrimaryServer, SnapshotSource
from replication.replica import ReplicaClient
from replication.store import Store, StoreError
from replication.txn import Transaction

#: Under data.dir: the transaction logs and the node's own state.
STATE_DIR = ".pylitefs"
CLUSTER_ID_FILE = "cluster-id"
#: The term of a static lease: there is only ever one primary.
STATIC_TERM = 1

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ClusterId:
    """The cluster id, created once (by the primary) or adopted (by a replica), kept in the data dir."""

    def __init__(self, state_dir: str, configured: str) -> None:
        self.path = os.path.join(state_dir, CLUSTER_ID_FILE)
        try:
            with open(self.path, encoding="ascii") as f:
                self.value = f.read().strip()
        except FileNotFoundError:
            self.value = ""
        if configured and self.value and configured != self.value:
            raise MountError(f"this data dir belongs to cluster {self.value}, the config says "
                             f"cluster.id {configured}")
        if configured and not self.value:
            self.adopt(configured)

    def get(self) -> str:
        """The id, or '' while a replica has not met its primary yet."""
        return self.value

    def create(self) -> str:
        """The id, created now if this node has none (the primary's first start)."""
        if not self.value:
            self.adopt(uuid.uuid4().hex[:16])
            log.info("created cluster id %s", self.value)
        return self.value

    def adopt(self, value: str) -> None:
        """Store `value` as this node's cluster id (durably)."""
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.path)
        self.value = value


class _AppliedPositions:
    """What a replica's mount shows in `-pos` files: the positions applied to it."""

    def __init__(self, replica: ReplicaClient) -> None:
        self._replica = replica

    def position(self, db: str) -> tuple[int, int] | None:
        return self._replica.position(db)

    def commit(self, db: str, page_size: int, commit_size: int, pages: Mapping[int, bytes]) -> None:
        raise StoreError("a replica does not capture commits")

    def drop(self, db: str) -> None:
        raise StoreError("a replica does not capture commits")

    def rename(self, old: str, new: str) -> None:
        raise StoreError("a replica does not capture commits")

    def sync(self, db: str) -> None:
        return None


class _Status:
    """`.primary` and `.lag` for the mount."""

    def __init__(self, replica: ReplicaClient | None) -> None:
        self._replica = replica

    def primary_hostname(self) -> str | None:
        return self._replica.primary if self._replica is not None else None

    def lag_ms(self) -> int:
        return self._replica.lag_ms() if self._replica is not None else 0


async def run(config: Config, *, capture: bool = True) -> None:
    """Recover, mount, serve HTTP and replication; unmount cleanly on SIGINT/SIGTERM.

    With `capture` (always, but for benchmarks), the primary records every
    committed transaction in its logs. Returns when a stop signal arrives or
    the kernel ends the FUSE session. Raises MountError when the node cannot start.
    """
    options = MountOptions(
        mountpoint=config.fuse.dir,
        data_dir=config.data.dir,
        allow_other=config.fuse.allow_other,
        debug=config.fuse.debug,
    )
    is_primary = config.lease.candidate
    host, port = parse_addr(config.http.addr)
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals, data_dir_lock(options.data_dir):
        preflight(options)
        state_dir = os.path.join(options.data_dir, STATE_DIR)
        store = None
        if capture or not is_primary:
            store = Store(state_dir, node_id=config.hostname,
                          retention_seconds=config.data.retention,
                          retention_max_bytes=config.data.retention_max_size or None)
            recover = recover_databases if is_primary else recover_replica_databases
            await trio.to_thread.run_sync(recover, options.data_dir, store)
        os.makedirs(state_dir, exist_ok=True)
        cluster = ClusterId(state_dir, config.cluster.id)
        if is_primary:
            cluster.create()
        access = Access(primary=is_primary)
        applier = Applier(options.mountpoint, access)
        replica: ReplicaClient | None = None
        primary: PrimaryServer | None = None
        if store is not None and is_primary:
            primary = PrimaryServer(
                store, node_id=config.hostname, cluster_id=cluster.get(), secret=config.secret,
                term=STATIC_TERM, snapshot=_snapshot_source(options, access, store))
        elif store is not None:

            async def apply(db: str, txns: list[Transaction]) -> None:
                # A reader inside a long transaction holds SQLite's locks:
                # wait for it, as a SQLite writer would (applying is idempotent).
                while True:
                    try:
                        return await trio.to_thread.run_sync(applier.apply, db, txns)
                    except LockTimeout as exc:
                        log.warning("cannot apply TXID %d of %s yet, retrying: %s", txns[-1].txid, db, exc)

            replica = ReplicaClient(
                store, node_id=config.hostname, secret=config.secret, primary_url=config.primary_url,
                apply=apply, cluster_id=cluster.get, adopt_cluster_id=cluster.adopt)
        sink: Any = store if is_primary else (_AppliedPositions(replica) if replica else None)
        ops = Operations(options.data_dir, sink, access=access, status=_Status(replica))
        started = time.time()

        def info() -> dict[str, Any]:
            return {
                "node": config.hostname,
                "version": __version__,
                "cluster_id": cluster.get(),
                "role": "primary" if is_primary else "replica",
                "primary": config.hostname if is_primary else (replica.primary if replica else None),
                "primary_url": config.primary_url,
                "term": STATIC_TERM,
                "started": started,
            }

        def status() -> dict[str, Any]:
            return _status(info(), store, primary, replica)

        def stream_handler() -> StreamHandler | None:
            return primary.serve if primary is not None else None

        http = HttpServer(info, status, stream_handler)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(_serve_then_cancel, ops, options, nursery.cancel_scope)
                try:
                    listeners = await nursery.start(http.serve, host, port)
                except OSError as exc:
                    raise MountError(f"cannot listen on http.addr {config.http.addr}: {exc.strerror}") from None
                bound = listeners[0].socket.getsockname()
                if store is not None:
                    nursery.start_soon(monitor_retention, store, config.data.retention_monitor_interval)
                if replica is not None:
                    await nursery.start(replica.run)
                log.info("pylitefs ready: %s mounted (data dir %s), %s, http on %s:%d", options.mountpoint,
                         options.data_dir, "primary" if is_primary else f"replica of {config.primary_url}",
                         bound[0], bound[1])
                async for signum in signals:
                    log.info("received %s: unmounting", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
        finally:
            applier.close()
            ops.close()
            if store is not None:
                store.close()


def _snapshot_source(options: MountOptions, access: Access, store: Store) -> SnapshotSource:
    """The primary's way of taking a consistent copy of a database, for replicas."""

    async def snapshot(db: str) -> tuple[bytes, tuple[int, int] | None]:
        return await trio.to_thread.run_sync(
            read_consistent, options.mountpoint, options.data_dir, db, access, lambda: store.position(db))

    return snapshot


def _status(info: dict[str, Any], store: Store | None, primary: PrimaryServer | None,
            replica: ReplicaClient | None) -> dict[str, Any]:
    positions = store.positions() if store is not None else {}
    if replica is not None:
        positions = dict(replica.applied)
    out = dict(info)
    out["databases"] = {db: {"txid": txid, "checksum": f"{checksum:016x}"}
                        for db, (txid, checksum) in sorted(positions.items())}
    if primary is not None:
        out["replicas"] = {
            r.node_id: {"address": r.peer, "connected_at": r.connected_at, "acked_at": r.acked_at,
                        "positions": {db: {"txid": t, "checksum": f"{c:016x}"} for db, (t, c) in r.positions.items()}}
            for r in primary.replicas.values()
        }
    if replica is not None:
        out["connected"] = replica.connected
        out["lag_ms"] = replica.lag_ms()
    return out


async def monitor_retention(store: Store, interval: float) -> None:
    """Every `interval` seconds, drop logged transactions older than the retention."""
    while True:
        await trio.sleep(interval)
        try:
            dropped = await trio.to_thread.run_sync(store.compact)
        except Exception as exc:  # keep monitoring: the next round may succeed
            log.warning("cannot enforce retention, retrying in %.0fs: %s", interval, exc)
            continue
        if any(dropped.values()):
            log.info("retention: dropped %s", ", ".join(f"{n} from {db}" for db, n in dropped.items() if n))


async def _serve_then_cancel(
    ops: Operations,
    options: MountOptions,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve(ops, options, task_status=task_status)
    log.info("FUSE session ended")
    scope.cancel()
