"""The replica's side of replication: follow the primary's stream and apply what it sends.

`ReplicaClient.run()` connects to the primary's URL, authenticates (the
`replication.wire` handshake), sends its position of every database, and then
applies what arrives, in order per database:

1. the transaction is checked against this copy's history and logged
   (`Store.append`: TXID follows, pre-checksum is ours, the post-checksum
   computed from its pages is the primary's);
2. the pages are written into the database (the `apply` callback: through
   the mount, under SQLite's locks) and the applied position is published
   (`-pos`, `.lag`);
3. the log is fsynced off that path, and then the position is acknowledged:
   an Ack means the transaction is durable on the replica.

Transactions that arrive together are logged and applied as one batch. A
transaction that does not continue this copy's history stops that database
and asks the primary for a snapshot (`Resync`), loudly; a snapshot replaces
the copy and its log. Connection failures are retried with backoff.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from replication.log import TxidUnavailableError
from replication.store import DivergedError, Store
from replication.stream import MessageStream, StreamClosed, UpgradeError, open_task_group, open_upgraded
from replication.txn import Transaction
from replication.wire import (
    NONCE_SIZE,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Challenge,
    Forget,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    Refused,
    Resync,
    SnapshotAssembler,
    SnapshotBegin,
    SnapshotEnd,
    SnapshotPages,
    TxnAssembler,
    TxnChunk,
    Welcome,
    check_proof,
    proof,
)

log = logging.getLogger(__name__)

DEFAULT_RECONNECT_DELAY = 0.1
MAX_RECONNECT_DELAY = 5.0
DEFAULT_CONNECT_TIMEOUT = 10.0
#: The primary is presumed gone after this many heartbeat intervals of silence.
SILENCE_HEARTBEATS = 5
#: Received transactions waiting to be applied (then the TCP window pushes back).
RECEIVE_QUEUE = 64
#: A group of transactions with more page bytes than this is logged from a worker thread.
THREAD_APPEND_BYTES = 1 << 20

#: Writes transactions of one database into the mount: apply(db, txns).
ApplyFn = Callable[[str, list[Transaction]], Awaitable[None]]


class ReplicationRefused(Exception):
    """The primary refused this replica, or proved to be of another cluster; the message says why."""


@dataclass(slots=True)
class _Pending:
    """A transaction, a snapshot or a forget received and not yet applied."""

    txn: Transaction | None
    snapshot: bool
    forget: str = ""


class ReplicaClient:
    """Follows the primary at `primary_url` into `store` and the mount (through `apply`)."""

    def __init__(
        self,
        store: Store,
        *,
        node_id: str,
        secret: bytes,
        primary_url: str,
        own_url: str = "",
        apply: ApplyFn,
        cluster_id: Callable[[], str],
        adopt_cluster_id: Callable[[str], None],
        heartbeat_interval: float = 1.0,
        min_term: int = 0,
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.secret = secret
        self.primary_url = primary_url
        #: This node's HTTP URL, told to the primary so that tools find this replica.
        self.own_url = own_url
        #: A primary whose term is older than this is refused (a deposed one).
        self.min_term = min_term
        self.apply = apply
        self._cluster_id = cluster_id
        self._adopt_cluster_id = adopt_cluster_id
        self.heartbeat_interval = heartbeat_interval
        #: The primary's node id while connected (shown in `.primary`).
        self.primary: str | None = None
        self.term = 0
        self.connected = False
        #: The primary's positions from its last heartbeat.
        self.primary_positions: dict[str, tuple[int, int]] = {}
        #: Heartbeats received so far (from any stream): a new one means fresh `primary_positions`.
        self.heartbeats = 0
        # Positions applied to the mount (what -pos shows).
        self.applied: dict[str, tuple[int, int]] = store.positions()
        self._caught_up_at = time.monotonic()
        self._diverged: set[str] = set()
        self._unsynced: set[str] = set()
        self._sync_wanted = trio.Event()
        # Positions whose log is fsynced (what an Ack promises).
        self._synced: dict[str, tuple[int, int]] = dict(self.applied)
        self._stream: MessageStream | None = None  # while connected

    # ---------------------------------------------------------------- status

    def position(self, db: str) -> tuple[int, int] | None:
        """The position of `db` as applied to the mount."""
        return self.applied.get(db)

    def caught_up(self) -> bool:
        """True when every position of the primary's last heartbeat is applied here."""
        def has(db: str, txid: int, checksum: int) -> bool:
            mine = self.applied.get(db, (0, 0))
            return mine[0] > txid or mine == (txid, checksum)

        return self.connected and all(has(db, *pos) for db, pos in self.primary_positions.items())

    def lag_ms(self) -> int:
        """Milliseconds since this replica last had everything the primary had (0 when it does)."""
        if self._note_progress():
            return 0
        return int((time.monotonic() - self._caught_up_at) * 1000)

    def _note_progress(self) -> bool:
        caught_up = self.caught_up()
        if caught_up:
            self._caught_up_at = time.monotonic()
        return caught_up

    # ------------------------------------------------------------- the loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the primary forever, reconnecting with backoff."""
        task_status.started()
        delay = DEFAULT_RECONNECT_DELAY
        while True:
            try:
                stream = await open_upgraded(self.primary_url, DEFAULT_CONNECT_TIMEOUT)
            except (OSError, UpgradeError, trio.TooSlowError) as exc:
                log.warning("cannot reach the primary at %s, retrying in %.1fs: %s",
                            self.primary_url, delay, _reason(exc))
            else:
                try:
                    await self._session(stream)
                    delay = DEFAULT_RECONNECT_DELAY
                except ReplicationRefused as exc:
                    log.error("the primary at %s refused replication, retrying in %.1fs: %s",
                              self.primary_url, delay, exc)
                except (ProtocolError, StreamClosed, trio.TooSlowError, trio.BrokenResourceError,
                        trio.ClosedResourceError, OSError) as exc:
                    log.warning("stream from the primary at %s ended, reconnecting in %.1fs: %s",
                                self.primary_url, delay, _reason(exc))
                    if self.connected:
                        delay = DEFAULT_RECONNECT_DELAY
                except Exception:  # e.g. an apply that failed: logged, retried after reconnecting
                    log.exception("replication from %s failed; retrying in %.1fs", self.primary_url, delay)
                finally:
                    self.connected = False
                    self.primary = None
                    await stream.aclose()
            await trio.sleep(delay)
            delay = min(delay * 2, MAX_RECONNECT_DELAY)

    async def reconcile(self) -> None:
        """Apply what is logged but not applied (an apply that failed or was cancelled earlier).

        Afterwards every database's applied position is its logged one (the
        node calls it before it becomes primary).
        """
        for db, logged in self.store.positions().items():
            applied = self.applied.get(db)
            if applied == logged:
                continue
            start = applied[0] + 1 if applied is not None else None

            def read(db: str = db, start: int | None = start) -> list[Transaction]:
                try:
                    return list(self.store.read(db, start))
                except TxidUnavailableError:
                    return list(self.store.read(db))  # a snapshot replaced what came before

            txns = await trio.to_thread.run_sync(read)
            if any(_is_base(txn) for txn in txns):
                # A snapshot was logged but its pages never reached the file:
                # the copy cannot be trusted; the primary sends it again.
                log.error("%s: a snapshot was interrupted before its pages were written; "
                          "discarding the copy", db)
                await self._discard(db)
                continue
            if txns:
                await self.apply(db, txns)
                log.warning("%s: applied TXID %d..%d, logged before an apply failed",
                            db, txns[0].txid, txns[-1].txid)
            self.applied[db] = logged

    async def _session(self, stream: MessageStream) -> None:
        await self.reconcile()
        self._diverged.clear()  # a Resync sent on an earlier stream is asked again if needed
        await self._handshake(stream)
        self.connected = True
        log.info("replicating from %s (%s, term %d)", self.primary, self.primary_url, self.term)
        send, receive = trio.open_memory_channel[_Pending](RECEIVE_QUEUE)
        self._stream = stream
        try:
            async with open_task_group() as nursery:
                nursery.start_soon(self._apply_loop, receive, stream)
                nursery.start_soon(self._sync_loop, stream)
                await self._receive_loop(stream, send)
        finally:
            self._stream = None

    async def request_resync(self, db: str) -> bool:
        """Ask the primary for a snapshot of `db` (its copy here cannot be trusted); False if not connected.

        Transactions of `db` that arrive meanwhile are ignored; the snapshot
        replaces the copy and its log.
        """
        stream = self._stream
        if stream is None or db in self._diverged:
            return False
        self._diverged.add(db)
        await stream.send(Resync(db))
        return True

    async def _handshake(self, stream: MessageStream) -> None:
        cluster_id = self._cluster_id()
        nonce = secrets.token_bytes(NONCE_SIZE)
        with trio.fail_after(DEFAULT_CONNECT_TIMEOUT):
            await stream.send(Hello(PROTOCOL_VERSION, cluster_id, self.node_id, nonce, self.own_url))
            challenge = await stream.receive()
            if isinstance(challenge, Refused):
                raise ReplicationRefused(challenge.reason)
            if not isinstance(challenge, Challenge):
                raise ProtocolError(f"expected challenge, got {type(challenge).__name__}")
            reason = None
            if challenge.version != PROTOCOL_VERSION:
                reason = (f"the primary speaks protocol version {challenge.version}, "
                          f"this replica {PROTOCOL_VERSION}")
            elif cluster_id and challenge.cluster_id != cluster_id:
                reason = f"the primary belongs to cluster {challenge.cluster_id}, this node to {cluster_id}"
            elif not check_proof(proof(self.secret, "primary", challenge.cluster_id, challenge.node_id,
                                       challenge.nonce, nonce), challenge.proof):
                reason = "the primary could not prove it knows the cluster secret"
            elif challenge.term < self.min_term:
                reason = (f"{challenge.node_id} serves term {challenge.term}, older than the current "
                          f"term {self.min_term} (a deposed primary)")
            if reason is not None:
                await stream.send(Refused(f"replica {self.node_id}: {reason}"))
                raise ReplicationRefused(reason)
            mine = proof(self.secret, "replica", challenge.cluster_id, self.node_id, nonce, challenge.nonce)
            await stream.send(Auth(mine, dict(self.applied)))
            answer = await stream.receive()
            if isinstance(answer, Refused):
                raise ReplicationRefused(answer.reason)
            if not isinstance(answer, Welcome):
                raise ProtocolError(f"expected welcome, got {type(answer).__name__}")
        if not cluster_id:
            self._adopt_cluster_id(challenge.cluster_id)
        self.primary = challenge.node_id
        self.term = challenge.term

    async def _receive_loop(self, stream: MessageStream, send: trio.MemorySendChannel[_Pending]) -> None:
        txns = TxnAssembler()
        snapshots = SnapshotAssembler(node_id=self.primary or "", timestamp_ns=0)
        silence = self.heartbeat_interval * SILENCE_HEARTBEATS
        while True:
            with trio.fail_after(silence):
                msg: Message = await stream.receive()
            if isinstance(msg, TxnChunk):
                txn = txns.feed(msg)
                if txn is not None:
                    await send.send(_Pending(txn, False))
            elif isinstance(msg, (SnapshotBegin, SnapshotPages, SnapshotEnd)):
                txn = snapshots.feed(msg)
                if txn is not None:
                    await send.send(_Pending(txn, True))
            elif isinstance(msg, Forget):
                await send.send(_Pending(None, False, forget=msg.db))
            elif isinstance(msg, Heartbeat):
                self.primary_positions = dict(msg.positions)
                self.heartbeats += 1
                self._note_progress()
                await stream.send(Ack(dict(self._synced)))  # also tells the primary we are alive
            else:
                raise ProtocolError(f"unexpected {type(msg).__name__} from the primary")

    async def _apply_loop(self, receive: trio.MemoryReceiveChannel[_Pending], stream: MessageStream) -> None:
        while True:
            batch = [await receive.receive()]
            while True:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            changed = await self._apply_batch(batch, stream)
            if changed:
                self._unsynced |= changed
                self._sync_wanted.set()

    async def _sync_loop(self, stream: MessageStream) -> None:
        """fsync the logs of what was applied, then acknowledge it: an Ack means durable here.

        Off the apply path, so that the disk flush does not delay visibility;
        while one flush runs, the next applies gather into the next one.
        """
        while True:
            await self._sync_wanted.wait()
            self._sync_wanted = trio.Event()
            dbs, self._unsynced = self._unsynced, set()
            positions = {db: self.applied[db] for db in dbs if db in self.applied}

            def sync() -> None:
                for db in positions:
                    self.store.sync(db)

            await trio.to_thread.run_sync(sync)
            self._synced.update(positions)
            if positions:
                await stream.send(Ack(positions))

    async def _apply_batch(self, batch: list[_Pending], stream: MessageStream) -> set[str]:
        """Log and apply `batch` in order, grouping consecutive transactions of one database."""
        changed: set[str] = set()
        group: list[Transaction] = []
        for item in batch:
            if item.forget:
                await self._apply_group(group, stream, changed)
                group = []
                await self._forget(item.forget)
                continue
            assert item.txn is not None
            if item.snapshot:
                await self._apply_group(group, stream, changed)
                group = []
                if await self._apply_snapshot(item.txn, stream):
                    changed.add(item.txn.db)
            else:
                if group and group[0].db != item.txn.db:
                    await self._apply_group(group, stream, changed)
                    group = []
                group.append(item.txn)
        await self._apply_group(group, stream, changed)
        return changed

    async def _apply_group(self, group: list[Transaction], stream: MessageStream, changed: set[str]) -> None:
        if not group:
            return
        db = group[0].db
        if db in self._diverged:
            return  # waiting for the snapshot asked for
        def append_all() -> tuple[list[Transaction], DivergedError | None]:
            logged: list[Transaction] = []
            for txn in group:
                try:
                    self.store.append(txn)
                except DivergedError as exc:
                    return logged, exc
                logged.append(txn)
            return logged, None

        # Hashing the pages and writing the log: big groups off the trio thread that serves FUSE.
        if sum(len(t.pages) * t.page_size for t in group) > THREAD_APPEND_BYTES:
            logged, diverged = await trio.to_thread.run_sync(append_all)
        else:
            logged, diverged = append_all()
        if diverged is not None:
            log.error("%s: %s; stopping this database and asking the primary for a snapshot", db, diverged)
            self._diverged.add(db)
            await stream.send(Resync(db))
        if not logged:
            return
        # Logged (not yet fsynced: _sync_loop does that) before the pages are
        # written, so that after a crash the last transaction can be redone.
        await self.apply(db, logged)
        last = logged[-1]
        self.applied[db] = (last.txid, last.post_checksum)
        changed.add(db)
        self._note_progress()

    async def _forget(self, db: str) -> None:
        """The primary has no database `db`: remove the copy and its log."""
        self._diverged.discard(db)
        await self._discard(db)
        log.info("%s: the primary has no such database; removed the local copy", db)

    async def _discard(self, db: str) -> None:
        """Remove the copy of `db` and its log (the primary then sends what it has)."""
        last = self.store.last(db)
        await self.apply(db, [_drop(db, (last.txid + 1) if last else 1, node_id=self.primary or "")])
        await trio.to_thread.run_sync(self.store.forget, db)
        self.applied.pop(db, None)
        self._synced.pop(db, None)

    async def _apply_snapshot(self, txn: Transaction, stream: MessageStream) -> bool:
        """Replace the copy of `txn.db` with the snapshot `txn`; False if its checksum is wrong."""
        db = txn.db
        self._diverged.discard(db)
        if txn.commit_size == 0:
            txn = _drop(db, txn.txid, page_size=txn.page_size, node_id=txn.node_id)
        last = self.store.last(db)
        if last is not None and not last.dropped and (
                last.txid > txn.txid or (last.txid == txn.txid and last.post_checksum != txn.post_checksum)):
            log.warning("%s: discarding this copy's history up to TXID %d (checksum %016x, kept in %s) for the "
                        "primary's snapshot at TXID %d (checksum %016x)", db, last.txid, last.post_checksum,
                        self.store.replaced_path(db), txn.txid, txn.post_checksum)
        # Shielded: once the log says "snapshot", its pages must reach the file
        # (a failure here is caught at the next session by reconcile).
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(self.store.reset, txn)
            except DivergedError as exc:
                log.error("%s: the primary's snapshot does not match its checksum (%s); asking again", db, exc)
                self._diverged.add(db)
                await stream.send(Resync(db))
                return False
            await self.apply(db, [txn])
        self.applied[db] = (txn.txid, txn.post_checksum)
        log.info("%s: replaced the local copy with the primary's snapshot at TXID %d (%d pages)",
                 db, txn.txid, len(txn.pages))
        return True


def _is_base(txn: Transaction) -> bool:
    """True for a snapshot's base record in a replica's log (size and checksum, no pages)."""
    return not txn.dropped and txn.commit_size > 0 and not txn.pages and txn.pre_checksum == 0 \
        and txn.post_checksum != 0


def _drop(db: str, txid: int, *, page_size: int = 4096, node_id: str = "") -> Transaction:
    """A transaction that deletes `db`, as TXID `txid`."""
    return Transaction(db=db, txid=txid, page_size=page_size, commit_size=0, pages={},
                       timestamp_ns=0, node_id=node_id, pre_checksum=0, post_checksum=0, dropped=True)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


__all__ = ["ApplyFn", "ReplicaClient", "ReplicationRefused"]
