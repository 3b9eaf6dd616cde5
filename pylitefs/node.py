"""The node: the mount, the store, the HTTP port, replication and the lease, wired for one configuration.

The mount, the store and the HTTP port live as long as the process; the
elector (`election.elector`) decides the role and drives `Node` through
role changes: the primary captures every commit into its store and serves
replica streams on `http.addr`; a replica follows the primary, applies what it
receives through its own mount and refuses application writes.

- `lease.type: static`: the node with `lease.candidate: true` is the primary
  for ever (a config without a `lease` section is a single primary); replicas
  follow `lease.advertise-url`.
- `lease.type: etcd`: candidates compete for an etcd lease; see
  `election.elector.EtcdElector`.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import trio

from election.elector import ClusterMismatch, Elector, EtcdElector, HandoffError, StaticElector
from election.etcd import EtcdAuthError, EtcdSettings
from fs.access import Access
from fs.apply import Applier
from fs.capture import CaptureError
from fs.errors import TooFarAhead
from fs.locks import LockTimeout
from fs.mount import MountError, MountOptions, data_dir_lock, preflight, serve
from fs.operations import Operations
from fs.recovery import databases
from fs.snapshot import read_consistent
from pylitefs import __version__, api
from pylitefs.admin import admin_call
from pylitefs.config import Config, ReplicationPolicy, parse_addr
from pylitefs.exec import FORWARDED_SIGNALS, STOP_SIGNALS, Exec
from pylitefs.events import EventHub, tx_event
from pylitefs.http import StreamHandler
from pylitefs.metrics import Metrics
from pylitefs.proxy import ProxyServer
from pylitefs.scrub import Scrubber
from pylitefs.startup import _remove_database, recover_databases, recover_replica_databases
from replication.checksum import image_checksum
from replication.log import LogError
from replication.primary import PrimaryServer, SnapshotSource
from replication.replica import ReplicaClient
from replication.store import Store
from replication.txn import Transaction

#: Under data.dir: the transaction logs and the node's own state.
STATE_DIR = ".pylitefs"
CLUSTER_ID_FILE = "cluster-id"
#: The role this node last had ("primary" or "replica"): which recovery its files need at start.
ROLE_FILE = "role"
#: Longest a clean stop waits for a handoff or resignation.
STOP_TIMEOUT = 8.0

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        _write_line(self.path, value)
        self.value = value


def _write_line(path: str, text: str) -> None:
    """Replace the file at `path` with `text` and a newline, durably (write a copy, fsync, rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


class _Sink:
    """What the mount captures into (the store, on the primary) and what its `-pos` files show.

    On a replica the positions are those applied to the mount, which the
    store's log may run ahead of for a moment.
    """

    def __init__(self, node: Node) -> None:
        self._node = node

    def position(self, db: str) -> tuple[int, int] | None:
        return self._node.position(db)

    def commit(self, db: str, page_size: int, commit_size: int, pages: Mapping[int, bytes],
               *, retractable: bool = False) -> None:
        started = time.perf_counter()
        self._node.store.commit(db, page_size, commit_size, pages, retractable=retractable)
        self._node.metrics.commit_seconds.observe(time.perf_counter() - started)

    def drop(self, db: str) -> None:
        self._node.store.drop(db)

    def rename(self, old: str, new: str) -> None:
        self._node.store.rename(old, new)

    def sync(self, db: str) -> None:
        self._node.store.sync(db)


class Node:
    """One node's roles: the `election.elector.Roles` the elector drives, and what the status shows.

    The mount, the store and the HTTP port stay up across role changes;
    `promote` and `demote` switch what the mount does with writes, and which
    of the primary's server and the replica's client runs.
    """

    def __init__(self, config: Config, options: MountOptions, store: Store, access: Access,
                 cluster: ClusterId, state_dir: str) -> None:
        self.config = config
        self.options = options
        self.store = store
        self.access = access
        self.cluster = cluster
        self.applier = Applier(options.mountpoint, access)
        self._role_path = os.path.join(state_dir, ROLE_FILE)
        self.ops: Operations | None = None  # set by run() once built
        self.nursery: trio.Nursery | None = None
        self.elector: Elector | None = None
        self.scrubber: Scrubber | None = None
        self.role = "replica"
        self.term = 0
        self.primary_server: PrimaryServer | None = None
        self.replica = self._new_replica()
        self._replicating: tuple[trio.CancelScope, trio.Event] | None = None
        self._following: tuple[str, int] | None = None
        #: The primary's hostname as the lease says (None: unknown, or this node).
        self.known_primary: str | None = None
        self.started = time.time()
        self._policies: dict[str, ReplicationPolicy] = {}
        #: Commits that `replication.sync-fallback: async` let through unconfirmed; dbs in such an episode.
        self.sync_fallbacks = 0
        self._sync_degraded: set[str] = set()
        #: This node's proxy URL as other nodes reach it (None: no proxy); in /info.
        self.proxy_url: str | None = None
        #: Set (and replaced) whenever a replica has applied transactions: wakes wait_position.
        self._position_changed = trio.Event()
        self.metrics = Metrics()
        #: `GET /events`: every logged (primary) or applied (replica) transaction, every primary change.
        self.events = EventHub()
        self._announced: tuple[str | None, int] | None = None
        self._token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.get_ident()
        store.add_listener(self._on_logged)

    # ------------------------------------------------------------ roles

    def fence(self, until: float) -> None:
        self.access.writable_until = until

    def positions(self) -> dict[str, tuple[int, int]]:
        return self.store.positions()

    def replica_positions(self) -> dict[str, dict[str, tuple[int, int]]]:
        server = self.primary_server
        return {} if server is None else {n: dict(r.positions) for n, r in server.replicas.items()}

    async def wait_acked(self, node_id: str, positions: dict[str, tuple[int, int]]) -> None:
        if self.primary_server is None:
            raise RuntimeError("not the primary")
        await self.primary_server.wait_acked(node_id, positions)

    async def promote(self, term: int) -> None:
        """Stop following, apply everything logged, then capture and serve replicas in `term`."""
        await self._stop_replicating()
        self._following = None
        await self.replica.reconcile()
        await trio.to_thread.run_sync(self.applier.close)
        assert self.ops is not None
        self.ops.reset_capture()
        self.primary_server = PrimaryServer(
            self.store, node_id=self.config.hostname, cluster_id=self.cluster.create(),
            secret=self.config.secret, term=term,
            snapshot=_snapshot_source(self.options, self.access, self.store))
        self.term = term
        self.known_primary = None
        await trio.to_thread.run_sync(self._write_role, "primary")
        self.role = "primary"
        self.access.primary = True
        log.info("primary in term %d: accepting writes", term)
        self._announce(self.config.hostname, term)

    async def demote(self) -> None:
        """Refuse writes now; end the term's streams; make every database hold only committed content."""
        self.access.primary = False
        self.access.writable_until = 0.0
        server, self.primary_server = self.primary_server, None
        if server is not None:
            server.close()
        self.role = "replica"
        await trio.to_thread.run_sync(self.settle_all)
        await trio.to_thread.run_sync(self._write_role, "replica")
        self.replica = self._new_replica()
        log.info("stepped down: this node is a replica now")
        self._announce(None, self.term)

    async def follow(self, hostname: str | None, url: str | None, term: int) -> None:
        self.known_primary = hostname
        self._announce(hostname, term)
        if url is None:
            if self._following is not None:
                await self._stop_replicating()
                self._following = None
            return
        if self._following == (url, term) and self._replicating is not None:
            return
        await self._stop_replicating()
        self.replica.primary_url = url
        self.replica.min_term = term
        self._following = (url, term)
        assert self.nursery is not None
        self._replicating = await self.nursery.start(self._replicate)

    async def _replicate(self, *, task_status: trio.TaskStatus[tuple[trio.CancelScope, trio.Event]]
                         = trio.TASK_STATUS_IGNORED) -> None:
        done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                task_status.started((scope, done))
                await self.replica.run()
        finally:
            done.set()

    async def _stop_replicating(self) -> None:
        running, self._replicating = self._replicating, None
        if running is not None:
            scope, done = running
            scope.cancel()
            await done.wait()

    def _new_replica(self) -> ReplicaClient:

        async def apply(db: str, txns: list[Transaction]) -> None:
            # A reader inside a long transaction holds SQLite's locks:
            # wait for it, as a SQLite writer would (applying is idempotent).
            while True:
                started = time.perf_counter()
                try:
                    await trio.to_thread.run_sync(self.applier.apply, db, txns)
                except LockTimeout as exc:
                    log.warning("cannot apply TXID %d of %s yet, retrying: %s", txns[-1].txid, db, exc)
                else:
                    self._applied(db, txns, time.perf_counter() - started)
                    return

        return ReplicaClient(
            self.store, node_id=self.config.hostname, secret=self.config.secret,
            primary_url="", own_url=self.config.api_url,
            apply=apply, cluster_id=self.cluster.get, adopt_cluster_id=self.cluster.adopt)

    def settle_all(self, *, verify: bool = True) -> None:
        """After a term: every database file holds its committed content and matches its log (blocking).

        A transaction cut by the fence leaves a hot journal or uncommitted WAL
        frames, and the WAL holds committed frames the replica's applier would
        not see: `Applier.settle` writes the committed content into the file
        and empties the WAL. With `verify`, a file that then does not match
        its log (which should not happen) is discarded loudly: the primary
        sends a snapshot. (At start, recovery has just made that comparison.)
        """
        dir_fd = os.open(self.options.data_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for db in self.store.databases():
                self.store.sync(db)
            for db in sorted(set(databases(dir_fd)) | set(self.store.databases())):
                image = _retry_locked(lambda db=db: self.applier.settle(db, dir_fd), f"settle {db}")
                if not verify:
                    continue
                last = self.store.last(db)
                expected = 0 if last is None or last.dropped else last.post_checksum
                actual = image_checksum(image)
                if actual != expected:
                    log.error("%s: after the term its content (checksum %016x) does not match its log "
                              "(%016x); discarding it, the primary will send a snapshot", db, actual, expected)
                    self.applier.forget(db)
                    _remove_database(dir_fd, db)
                    self.store.forget(db)
        finally:
            os.close(dir_fd)

    def _write_role(self, role: str) -> None:
        _write_line(self._role_path, role)

    # ------------------------------------------------------------ bounded lag, synchronous replication

    def policy(self, db: str) -> ReplicationPolicy:
        """`db`'s replication settings (`replication:` and its `databases` entry)."""
        policy = self._policies.get(db)
        if policy is None:
            policy = self._policies[db] = self.config.replication.policy(db)
        return policy

    def unacknowledged(self, db: str) -> tuple[int, int]:
        """Transactions and log bytes of `db` on the primary that no replica has acknowledged in this term."""
        server = self.primary_server
        position = self.store.position(db)
        if server is None or position is None:
            return 0, 0
        acked = server.acked.get(db, 0)
        return max(0, position[0] - acked), self.store.bytes_after(db, acked)

    def _too_far_ahead(self, db: str, policy: ReplicationPolicy) -> bool:
        txns, size = self.unacknowledged(db)
        return (0 < policy.max_lag <= txns) or (0 < policy.max_lag_bytes <= size)

    async def admit(self, db: str) -> None:
        """Hold an application's write while `db` is `max-lag` transactions or `max-lag-bytes` ahead of every replica.

        Raises TooFarAhead (EIO) when no acknowledgement brings it back
        within `max-lag-timeout`.
        """
        policy = self.policy(db)
        server = self.primary_server
        if server is None or not self._too_far_ahead(db, policy):
            return
        self.metrics.max_lag_waits += 1
        with trio.move_on_after(policy.max_lag_timeout):
            while self._too_far_ahead(db, policy) and self.primary_server is server:
                await server.wait_ack()
            return
        txns, size = self.unacknowledged(db)
        message = (f"{db}: {txns} transactions ({size} bytes) not acknowledged by any replica "
                   f"(replication.max-lag {policy.max_lag}, max-lag-bytes {policy.max_lag_bytes}); "
                   f"refusing a write")
        log.warning("%s", message)
        self.metrics.max_lag_failures += 1
        raise TooFarAhead(message)

    def holds(self, db: str) -> bool:
        """CommitGate: whether commits of `db` wait for `replication.sync` replicas."""
        return self.policy(db).sync > 0

    async def confirm(self, db: str, txid: int, checksum: int) -> None:
        """CommitGate: return once `sync` replicas durably hold TXID `txid` of `db`, or after `sync-timeout`.

        After the timeout (or if this node stops being primary meanwhile):
        with `sync-fallback: fail`, raise CaptureError (the application gets
        EIO and the caller takes the transaction back); with `async`, count
        it in `sync_fallbacks`, warn once per episode, and return.
        """
        policy = self.policy(db)
        server = self.primary_server
        position = (txid, checksum)
        with trio.move_on_after(policy.sync_timeout):
            while server is not None and self.primary_server is server:
                if server.holding(db, position) >= policy.sync:
                    self.store.keep(db, txid)
                    self._sync_degraded.discard(db)
                    return
                await server.wait_ack()
        have = server.holding(db, position) if server is not None else 0
        if policy.sync_fallback == "async" and server is not None and self.primary_server is server:
            self.store.keep(db, txid)
            self.sync_fallbacks += 1
            if db not in self._sync_degraded:
                self._sync_degraded.add(db)
                log.warning("%s: TXID %d: %d of %d replicas acknowledged within %.1fs; committing "
                            "asynchronously (replication.sync-fallback: async) until they keep up again",
                            db, txid, have, policy.sync, policy.sync_timeout)
            return
        if server is not None and self.primary_server is server:
            why = f"within {policy.sync_timeout:.1f}s"
        else:
            why = "before this node stopped being primary"
        message = (f"{db}: TXID {txid}: {have} of {policy.sync} replicas acknowledged {why} "
                   f"(replication.sync); failing the commit")
        log.warning("%s", message)
        raise CaptureError(message)

    def retract(self, db: str, txid: int) -> None:
        """CommitGate: take TXID `txid` of `db` back from the log; replicas that may hold it resynchronise."""
        try:
            self.store.retract(db, txid)
        finally:
            server = self.primary_server
            if server is not None:
                server.retracted(db, txid)

    # ------------------------------------------------------------ scrubbing

    async def scrub_read(self, db: str) -> tuple[bytes, tuple[int, int] | None] | None:
        """`db`'s committed content and the position it must match, at one instant (None: not now)."""
        if self.role == "primary":
            try:
                return await trio.to_thread.run_sync(
                    read_consistent, self.options.mountpoint, self.options.data_dir, db, self.access,
                    lambda: self.store.position(db))
            except FileNotFoundError:
                return None
        replica = self.replica
        before = replica.applied.get(db)

        def read() -> tuple[bytes, tuple[int, int] | None]:
            dir_fd = os.open(self.options.data_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                return self.applier.read_applied(db, dir_fd)
            finally:
                os.close(dir_fd)

        image, applied = await trio.to_thread.run_sync(read)
        if applied is None:  # nothing applied since the start: the replica's position holds, if it held still
            applied = replica.applied.get(db)
            if applied != before or applied != self.store.position(db) or self.role != "replica":
                return None
        return image, applied

    async def scrub_mismatch(self, db: str) -> None:
        """A replica's copy is wrong: it asks for a snapshot. The primary's is only reported."""
        if self.role != "primary" and await self.replica.request_resync(db):
            log.warning("scrub: asked the primary for a snapshot of %s to repair this copy", db)

    # ------------------------------------------------------------ metrics and events

    def _on_logged(self, txn: Transaction) -> None:
        """Store listener (on the committing thread): count every logged transaction."""
        if threading.get_ident() == self._trio_thread:
            self._logged(txn)
        else:  # a replica logs big batches in a worker thread
            self._token.run_sync_soon(self._logged, txn)

    def _logged(self, txn: Transaction) -> None:
        self.metrics.count_logged(txn.db, len(txn.pages) * txn.page_size)
        if self.role == "primary" and self.events:  # no /events client: no event built (commit path)
            self.events.publish(tx_event(txn))

    def _applied(self, db: str, txns: list[Transaction], seconds: float) -> None:
        self.metrics.count_applied(db, len(txns), seconds)
        # The replica publishes the position right after the apply, before a waiter runs.
        self._position_changed.set()
        self._position_changed = trio.Event()
        if self.role != "primary" and self.events:
            for txn in txns:
                self.events.publish(tx_event(txn))

    def _announce(self, primary: str | None, term: int) -> None:
        """Publish a primary change (once per distinct primary and term)."""
        if (primary, term) != self._announced:
            self._announced = (primary, term)
            self.events.publish({"type": "primary", "primary": primary, "term": term})

    # ------------------------------------------------------------ status

    def position(self, db: str) -> tuple[int, int] | None:
        """What `<db>-pos` shows: the logged position on the primary, the applied one on a replica."""
        return self.store.position(db) if self.role == "primary" else self.replica.position(db)

    def primary_hostname(self) -> str | None:
        """`.primary`: the primary's hostname on a replica (None on the primary, or when unknown)."""
        if self.role == "primary":
            return None
        return self.known_primary or self.replica.primary

    async def wait_position(self, db: str, txid: int, timeout: float) -> bool:
        """True once this node has `db` at TXID `txid` or later (applied, on a replica); False after `timeout`."""
        with trio.move_on_after(timeout):
            while True:
                changed = self._position_changed
                position = self.position(db)
                if position is not None and position[0] >= txid:
                    return True
                with trio.move_on_after(1.0):  # a promotion publishes positions without an apply
                    await changed.wait()
        return False

    def lag_ms(self) -> int:
        return 0 if self.role == "primary" else self.replica.lag_ms()

    def stream_handler(self) -> StreamHandler | None:
        server = self.primary_server
        return server.serve if server is not None and self.role == "primary" else None

    def info(self) -> dict[str, Any]:
        lease = self.elector.info() if self.elector is not None else None
        return {
            "node": self.config.hostname,
            "version": __version__,
            "cluster_id": self.cluster.get(),
            "role": self.role,
            "lease": self.config.lease.type,
            "primary": self.config.hostname if self.role == "primary" else self.primary_hostname(),
            "primary_url": lease.url if lease is not None else None,
            "term": self.term if self.role == "primary" else (lease.term if lease is not None else 0),
            "started": self.started,
            "url": self.config.api_url,
            "proxy_url": self.proxy_url,
        }

    def status(self) -> dict[str, Any]:
        out = self.info()
        positions = self.store.positions() if self.role == "primary" else dict(self.replica.applied)
        out["databases"] = {db: {"txid": txid, "checksum": f"{checksum:016x}"}
                            for db, (txid, checksum) in sorted(positions.items())}
        if self.role != "primary":  # how far behind the primary's last heartbeat, in TXIDs
            for db, (txid, _) in self.replica.primary_positions.items():
                entry = out["databases"].setdefault(db, {"txid": 0, "checksum": f"{0:016x}"})
                entry["lag_txids"] = max(0, txid - entry["txid"])
        if self.scrubber is not None:
            out["scrub"] = self.scrubber.status()
        out["sync_fallbacks"] = self.sync_fallbacks
        server = self.primary_server
        if server is not None:
            out["replicas"] = {
                r.node_id: {"address": r.peer, "url": r.url or None, "connected_at": r.connected_at, "acked_at": r.acked_at,
                            "positions": {db: {"txid": t, "checksum": f"{c:016x}",
                                               "lag_txids": max(0, positions.get(db, (0, 0))[0] - t)}
                                          for db, (t, c) in r.positions.items()}}
                for r in server.replicas.values()
            }
        else:
            out["connected"] = self.replica.connected
            out["lag_ms"] = self.replica.lag_ms()
        return out

    async def handoff_action(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """`POST /handoff[?to=NODE]`."""
        if self.elector is None:
            return 409, {"error": "the node is starting"}
        try:
            target = await self.elector.handoff(params.get("to") or None)
        except HandoffError as exc:
            return 409, {"error": str(exc)}
        return 200, {"handoff": target}


async def run(config: Config, *, capture: bool = True) -> int:
    """Recover, mount, serve HTTP, take a role and keep it current; unmount cleanly on SIGINT/SIGTERM.

    With `capture` (always, but for benchmarks), the primary records every
    committed transaction in its logs. Returns when a stop signal arrives or
    the kernel ends the FUSE session: 0; with `exec`, when the application
    has ended (pylitefs.exec): its exit status. Raises MountError when the
    node cannot start.
    """
    options = MountOptions(
        mountpoint=config.fuse.dir,
        data_dir=config.data.dir,
        allow_other=config.fuse.allow_other,
        debug=config.fuse.debug,
    )
    etcd = config.lease.type == "etcd"
    host, port = parse_addr(config.http.addr)
    exit_code = 0
    with trio.open_signal_receiver(*STOP_SIGNALS, *(FORWARDED_SIGNALS if config.exec else ())) as signals, \
            data_dir_lock(options.data_dir):
        preflight(options)
        state_dir = os.path.join(options.data_dir, STATE_DIR)
        store = Store(state_dir, node_id=config.hostname,
                      retention_seconds=config.data.retention,
                      retention_max_bytes=config.data.retention_max_size or None)
        was_primary = _last_role(state_dir) == "primary" if etcd else config.lease.candidate
        recover = recover_databases if was_primary else recover_replica_databases
        try:
            await trio.to_thread.run_sync(recover, options.data_dir, store)
        except LogError as exc:  # e.g. a log of another record version: left as it is
            raise MountError(str(exc)) from None
        os.makedirs(state_dir, exist_ok=True)
        cluster = ClusterId(state_dir, config.cluster.id)
        access = Access(primary=False)
        node = Node(config, options, store, access, cluster, state_dir)
        policies = config.replication.policies()
        ops = node.ops = Operations(
            options.data_dir, _Sink(node) if capture else None, access=access, status=node,
            admission=node.admit if any(p.max_lag or p.max_lag_bytes for p in policies) else None,
            gate=node if any(p.sync for p in policies) else None)
        elector: Elector
        if etcd:
            elector = EtcdElector(
                node, _etcd_settings(config), hostname=config.hostname, advertise_url=config.own_url,
                candidate=config.lease.candidate, promote=config.lease.promote,
                cluster_id=cluster.get, adopt_cluster_id=cluster.adopt,
                request_handoff=lambda url, to: _request_handoff(url, to, config.secret))
        else:
            elector = StaticElector(node, hostname=config.hostname, candidate=config.lease.candidate,
                                    primary_url=config.primary_url)
        node.elector = elector
        http = api.http_server(node)
        try:
            async with trio.open_nursery() as nursery:
                node.nursery = nursery
                await nursery.start(_serve_then_cancel, ops, options, nursery.cancel_scope)
                try:
                    listeners = await nursery.start(http.serve, host, port)
                except OSError as exc:
                    raise MountError(f"cannot listen on http.addr {config.http.addr}: {exc.strerror}") from None
                bound = listeners[0].socket.getsockname()
                nursery.start_soon(monitor_retention, store, config.data.retention_monitor_interval)
                if config.scrub.interval > 0:
                    node.scrubber = Scrubber(store.databases, node.scrub_read, node.scrub_mismatch,
                                             interval=config.scrub.interval, rate=config.scrub.rate)
                    nursery.start_soon(node.scrubber.run)
                if config.proxy.addr:
                    await _start_proxy(nursery, config, node)
                if etcd:  # whatever role comes next, the files must hold committed content only
                    await trio.to_thread.run_sync(functools.partial(node.settle_all, verify=False))
                await nursery.start(_run_elector, elector)
                log.info("pylitefs ready: %s mounted (data dir %s), %s, http on %s:%d", options.mountpoint,
                         options.data_dir, _role_text(config), bound[0], bound[1])
                if config.exec:
                    exit_code = await Exec(config, node).run(signals)
                else:
                    async for signum in signals:
                        log.info("received %s: stopping", signal.Signals(signum).name)
                        break
                with trio.move_on_after(STOP_TIMEOUT):
                    await elector.stop()
                nursery.cancel_scope.cancel()
        finally:
            node.applier.close()
            ops.close()
            store.close()
    return exit_code


async def _start_proxy(nursery: trio.Nursery, config: Config, node: Node) -> None:
    """Serve the HTTP proxy (pylitefs.proxy) on proxy.addr in `nursery`; MountError if it cannot listen."""
    host, port = parse_addr(config.proxy.addr)
    try:
        listeners = await nursery.start(ProxyServer(config.proxy, node, name=config.hostname).serve, host, port)
    except OSError as exc:
        raise MountError(f"cannot listen on proxy.addr {config.proxy.addr}: {exc.strerror}") from None
    node.proxy_url = config.proxy_url(listeners[0].socket.getsockname()[1])
    log.info("proxy on %s (%s) in front of %s, tracking %s", config.proxy.addr, node.proxy_url,
             config.proxy.target, config.proxy.db)


async def _run_elector(elector: Elector, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    try:
        await elector.run(task_status=task_status)
    except (ClusterMismatch, EtcdAuthError) as exc:  # at join: the node cannot be part of the cluster
        raise MountError(str(exc)) from None


def _retry_locked(fn: Callable[[], T], what: str) -> T:
    """fn(), retried while SQLite's locks are held by a long reader (blocking)."""
    while True:
        try:
            return fn()
        except LockTimeout as exc:
            log.warning("cannot %s yet, retrying: %s", what, exc)


def _role_text(config: Config) -> str:
    if config.lease.type == "etcd":
        return f"etcd lease at {', '.join(config.lease.etcd.endpoints)} as {config.hostname}" + (
            " (candidate)" if config.lease.candidate else "")
    return "primary" if config.lease.candidate else f"replica of {config.primary_url}"


def _last_role(state_dir: str) -> str:
    try:
        with open(os.path.join(state_dir, ROLE_FILE), encoding="ascii") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def _etcd_settings(config: Config) -> EtcdSettings:
    etcd = config.lease.etcd
    return EtcdSettings(endpoints=tuple(etcd.endpoints), prefix=etcd.prefix, key=etcd.key, ttl=float(etcd.ttl),
                        timeout=float(etcd.timeout), ca_cert=etcd.tls_ca, cert=etcd.tls_cert,
                        cert_key=etcd.tls_key, username=etcd.username, password=etcd.password)


async def _request_handoff(url: str, to: str, secret: bytes) -> None:
    """Ask the primary at `url` to hand its lease over to `to` (lease.promote)."""
    status, payload = await trio.to_thread.run_sync(
        lambda: admin_call(url, "/handoff", {"to": to}, secret), abandon_on_cancel=True)
    if status != 200:
        raise HandoffError(payload.get("error", f"HTTP {status}"))


def _snapshot_source(options: MountOptions, access: Access, store: Store) -> SnapshotSource:
    """The primary's way of taking a consistent copy of a database, for replicas."""

    async def snapshot(db: str) -> tuple[bytes, tuple[int, int] | None]:
        return await trio.to_thread.run_sync(
            read_consistent, options.mountpoint, options.data_dir, db, access, lambda: store.position(db))

    return snapshot


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
