"""The primary's side of replication: one session per connected replica.

A session authenticates the replica (`replication.wire` handshake), compares
the replica's position of every database with the log, and sends per
database either the logged transactions that follow, or a snapshot when the
log no longer reaches back or the checksums disagree (a diverged copy is
replaced, never merged). Then it streams every new transaction as it is
logged, a heartbeat with the primary's positions every `heartbeat_interval`,
and records the replica's acknowledgements.

Live transactions reach a session through a store listener that buffers them
in memory (bounded); a session that falls behind further reads them back from
the log instead, so a slow replica never costs the primary unbounded memory.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import trio

from fs.formats import lock_page
from fs.formats.dbheader import parse_db_header
from replication.log import TxidUnavailableError
from replication.store import Store
from replication.stream import MessageStream, StreamClosed, open_task_group
from replication.txn import Transaction, encode_record
from replication.wire import (
    NONCE_SIZE,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Challenge,
    Forget,
    Heartbeat,
    Hello,
    ProtocolError,
    Refused,
    Resync,
    SnapshotPages,
    Welcome,
    check_proof,
    proof,
    snapshot_messages,
    txn_chunks,
)

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_INTERVAL = 1.0
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Largest frame accepted before the replica has authenticated.
HANDSHAKE_MAX_FRAME = 64 * 1024
#: Live transactions a session buffers before it falls back to reading the log.
MAX_BUFFERED_TXNS = 1024
#: ... and bytes of pages.
MAX_BUFFERED_BYTES = 64 << 20
#: Transactions (at most) and bytes (about) read from the log per worker-thread call while catching up.
LOG_BATCH = 256
LOG_BATCH_BYTES = 16 << 20
#: Records larger than this are encoded in a worker thread, not on the trio thread that serves FUSE.
THREAD_ENCODE_BYTES = 1 << 20
#: A replica that sends nothing (it acknowledges every heartbeat) for this many intervals is dropped.
SILENCE_HEARTBEATS = 5
#: A snapshot that takes longer is logged at INFO this often with how much is sent.
SNAPSHOT_PROGRESS_INTERVAL = 5.0
#: Seconds before a failed snapshot of a database is tried again.
SNAPSHOT_RETRY_DELAY = 1.0

#: Takes a consistent copy of a database: (image, (txid, checksum)) or (b"", None) if it has none.
SnapshotSource = Callable[[str], Awaitable[tuple[bytes, tuple[int, int] | None]]]


@dataclass(slots=True)
class ReplicaState:
    """What the primary knows of one connected replica."""

    node_id: str
    peer: str
    connected_at: float
    url: str = ""  # its HTTP URL as it says itself
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)  # acknowledged
    acked_at: float = 0.0


class HandshakeRefused(Exception):
    """The replica may not join; the message is the reason sent to it and logged."""


class PrimaryServer:
    """Serves replica streams from the store of the primary."""

    def __init__(
        self,
        store: Store,
        *,
        node_id: str,
        cluster_id: str,
        secret: bytes,
        term: int,
        snapshot: SnapshotSource,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.secret = secret
        self.term = term
        self.snapshot = snapshot
        self.heartbeat_interval = heartbeat_interval
        self.handshake_timeout = handshake_timeout
        #: Connected replicas by node id.
        self.replicas: dict[str, ReplicaState] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._closed = False
        self._acked = trio.Event()
        #: db -> the highest TXID any replica acknowledged (or had when it connected) in this term.
        self.acked: dict[str, int] = {}

    def close(self) -> None:
        """End every session and refuse new ones (this node stopped being primary in this term).

        Whoever waits in `wait_ack` wakes up: no acknowledgement will come.
        """
        self._closed = True
        for scope in list(self._scopes.values()):
            scope.cancel()
        self._acked.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def holding(self, db: str, position: tuple[int, int]) -> int:
        """How many connected replicas acknowledged `db` at exactly `position` (durable there)."""
        return sum(1 for r in self.replicas.values() if r.positions.get(db) == position)

    def retracted(self, db: str, txid: int) -> None:
        """TXID `txid` of `db` was taken back from the log: end every session that may have sent it.

        Each replica reconnects; its position then is ahead of (or beside)
        the primary's history, so it gets a snapshot and logs what it discards.
        """
        for node_id, scope in list(self._scopes.items()):
            log.warning("ending the stream of replica %s: it may hold TXID %d of %s, which was taken back",
                        node_id, txid, db)
            scope.cancel()

    async def wait_acked(self, node_id: str, positions: dict[str, tuple[int, int]]) -> None:
        """Return once replica `node_id` has acknowledged (made durable) every one of `positions`."""
        while True:
            state = self.replicas.get(node_id)
            if state is not None and all(state.positions.get(db) == pos for db, pos in positions.items()):
                return
            await self.wait_ack()

    def _note_ack(self, positions: dict[str, tuple[int, int]]) -> None:
        for db, (txid, _) in positions.items():
            if txid > self.acked.get(db, 0):
                self.acked[db] = txid
        self._acked.set()
        self._acked = trio.Event()

    async def wait_ack(self) -> None:
        """Return at the next acknowledgement from any replica, or when closed (never after that)."""
        if self._closed:
            await trio.sleep_forever()
        await self._acked.wait()

    async def serve(self, stream: MessageStream, peer: str) -> None:
        """Run one replica's session until it disconnects.

        Never raises for anything the peer does: a refused handshake, bad
        frames or a broken connection end the session with a log line.
        """
        if self._closed:
            return
        full_size = stream.max_frame_size
        stream.max_frame_size = min(full_size, HANDSHAKE_MAX_FRAME)
        try:
            node_id, url, positions = await self._handshake(stream, peer)
        except HandshakeRefused as exc:
            log.warning("refusing replica connection from %s: %s", peer, exc)
            with trio.move_on_after(1):
                try:
                    await stream.send(Refused(str(exc)))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            return
        except (ProtocolError, StreamClosed, trio.TooSlowError, trio.BrokenResourceError,
                trio.ClosedResourceError, OSError) as exc:
            log.warning("replica connection from %s failed during the handshake: %s",
                        peer, _reason(exc))
            return
        stream.max_frame_size = full_size
        if self._closed:
            return
        previous = self._scopes.get(node_id)
        if previous is not None:
            log.warning("replica %s connected again from %s; ending its previous stream", node_id, peer)
            previous.cancel()
        state = ReplicaState(node_id, peer, time.time(), url, dict(positions))
        self.replicas[node_id] = state
        session = _Session(self, stream, state)
        log.info("replica %s connected from %s", node_id, peer)
        with trio.CancelScope() as scope:
            self._scopes[node_id] = scope
            try:
                await session.run(positions)
            except (ProtocolError, StreamClosed, trio.TooSlowError, trio.BrokenResourceError,
                    trio.ClosedResourceError, OSError) as exc:
                log.info("replica %s (%s) disconnected: %s", node_id, peer, _reason(exc))
            finally:
                if self.replicas.get(node_id) is state:
                    del self.replicas[node_id]
                if self._scopes.get(node_id) is scope:
                    del self._scopes[node_id]

    async def _handshake(self, stream: MessageStream, peer: str) -> tuple[str, str, dict[str, tuple[int, int]]]:
        """Authenticate a replica both ways; its node id, its URL and its positions."""
        with trio.fail_after(self.handshake_timeout):
            hello = await stream.receive()
            if not isinstance(hello, Hello):
                raise HandshakeRefused(f"expected hello, got {type(hello).__name__}")
            if hello.version != PROTOCOL_VERSION:
                raise HandshakeRefused(f"protocol version {hello.version} is not supported "
                                       f"(this primary speaks {PROTOCOL_VERSION})")
            if hello.cluster_id and hello.cluster_id != self.cluster_id:
                raise HandshakeRefused(f"node {hello.node_id} belongs to cluster {hello.cluster_id}, "
                                       f"this is cluster {self.cluster_id}")
            if not self.secret:
                raise HandshakeRefused("the primary has no cluster secret configured")
            if hello.node_id == self.node_id:
                raise HandshakeRefused(f"node id {hello.node_id} is the primary's own")
            nonce = secrets.token_bytes(NONCE_SIZE)
            mine = proof(self.secret, "primary", self.cluster_id, self.node_id, nonce, hello.nonce)
            await stream.send(Challenge(PROTOCOL_VERSION, self.cluster_id, self.node_id, nonce, mine, self.term))
            auth = await stream.receive()
            if isinstance(auth, Refused):
                raise HandshakeRefused(f"the replica refused this primary: {auth.reason}")
            if not isinstance(auth, Auth):
                raise HandshakeRefused(f"expected auth, got {type(auth).__name__}")
            expected = proof(self.secret, "replica", self.cluster_id, hello.node_id, hello.nonce, nonce)
            if not check_proof(expected, auth.proof):
                raise HandshakeRefused(f"node {hello.node_id}: authentication failed (wrong cluster secret?)")
            await stream.send(Welcome())
            return hello.node_id, hello.url, dict(auth.positions)


class _Session:
    """The stream to one replica after the handshake."""

    def __init__(self, server: PrimaryServer, stream: MessageStream, state: ReplicaState) -> None:
        self.server = server
        self.store = server.store
        self.stream = stream
        self.state = state
        # db -> (txid, checksum) the replica will have once it applied what was sent.
        self.sent: dict[str, tuple[int, int]] = {}
        self.buffer: dict[str, list[Transaction]] = {}
        self.buffered = 0
        self.buffered_bytes = 0
        self.from_log: set[str] = set()  # dbs whose live buffer overflowed
        self.seen: dict[str, int] = {}  # the last TXID the listener saw per db
        self.resync: set[str] = set()
        self.wake = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.get_ident()

    # Called by the store after every logged transaction, on the committing thread.
    def _listener(self, txn: Transaction) -> None:
        if threading.get_ident() == self._trio_thread:
            self._on_txn(txn)
        else:
            self._token.run_sync_soon(self._on_txn, txn)

    def _on_txn(self, txn: Transaction) -> None:
        seen = self.seen.get(txn.db)
        self.seen[txn.db] = txn.txid
        if seen is not None and txn.txid <= seen:
            # TXIDs of one database only grow: another history took the
            # name (a database renamed over it). The replica needs a snapshot.
            self._unbuffer(txn.db)
            self.resync.add(txn.db)
            self.wake.set()
            return
        size = len(txn.pages) * txn.page_size
        if (txn.db in self.from_log or self.buffered >= MAX_BUFFERED_TXNS
                or self.buffered_bytes + size > MAX_BUFFERED_BYTES):
            self.from_log.add(txn.db)
        else:
            self.buffer.setdefault(txn.db, []).append(txn)
            self.buffered += 1
            self.buffered_bytes += size
        self.wake.set()

    def _unbuffer(self, db: str) -> list[Transaction]:
        txns = self.buffer.pop(db, [])
        self.buffered -= len(txns)
        self.buffered_bytes -= sum(len(t.pages) * t.page_size for t in txns)
        return txns

    async def run(self, positions: dict[str, tuple[int, int]]) -> None:
        self.store.add_listener(self._listener)
        try:
            async with open_task_group() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._heartbeat_loop)
                for db in sorted(set(self.store.databases()) | set(positions)):
                    await self._start_db(db, positions.get(db, (0, 0)))
                await self._send_loop()
        finally:
            self.store.remove_listener(self._listener)

    async def _receive_loop(self) -> None:
        silence = self.server.heartbeat_interval * SILENCE_HEARTBEATS
        while True:
            with trio.fail_after(silence):  # a replica acknowledges every heartbeat
                msg = await self.stream.receive()
            if isinstance(msg, Ack):
                self.state.positions.update(msg.positions)
                self.state.acked_at = time.time()
                self.server._note_ack(msg.positions)
            elif isinstance(msg, Resync):
                log.warning("replica %s asks for a snapshot of %s", self.state.node_id, msg.db)
                self.resync.add(msg.db)
                self.wake.set()
            else:
                raise ProtocolError(f"unexpected {type(msg).__name__} from a replica")

    async def _start_db(self, db: str, replica: tuple[int, int]) -> None:
        """Decide how `db` reaches the replica: nothing to do, from the log, or a snapshot."""
        last = self.store.last(db)
        if last is None:
            if replica != (0, 0):
                await self._send_forget(db)
            return
        self.seen.setdefault(db, last.txid)
        if replica == (last.txid, last.post_checksum):
            self.sent[db] = replica
        elif replica[0] < last.txid and await self._log_reaches(db, replica):
            self.sent[db] = replica
            self.from_log.add(db)
        else:
            log.info("replica %s: %s at TXID %d is not on this primary's history (at TXID %d): "
                     "sending a snapshot", self.state.node_id, db, replica[0], last.txid)
            self.resync.add(db)

    async def _log_reaches(self, db: str, replica: tuple[int, int]) -> bool:
        """True when the log holds the replica's position of `db` and everything after it."""
        txid, checksum = replica

        def check() -> bool:
            try:
                if txid == 0:  # the replica has nothing: the log must start at TXID 1
                    first = next(iter(self.store.read(db)), None)
                    return checksum == 0 and first is not None and first.txid == 1
                txn = next(iter(self.store.read(db, txid)), None)
            except TxidUnavailableError:
                return False
            return txn is not None and txn.post_checksum == checksum

        return await trio.to_thread.run_sync(check)

    async def _heartbeat_loop(self) -> None:
        """The primary's positions every interval, also while a long snapshot is being sent."""
        while True:
            await self.stream.send(Heartbeat(self.store.positions(), time.time_ns()))
            await trio.sleep(self.server.heartbeat_interval)

    async def _send_loop(self) -> None:
        while True:
            await self._flush()
            await self.wake.wait()
            self.wake = trio.Event()

    async def _flush(self) -> None:
        """Send everything the replica is missing, database by database."""
        resync, self.resync = self.resync, set()
        for db in sorted(resync):
            self._unbuffer(db)
            self.from_log.discard(db)
            await self._send_snapshot(db)
        while self.buffer:
            db = next(iter(self.buffer))
            txns = self._unbuffer(db)
            if db in self.from_log:
                continue
            for txn in txns:
                sent = self.sent.get(db, (0, 0))
                if txn.txid <= sent[0] and sent != (0, 0):
                    continue
                if (sent == (0, 0) and txn.txid == 1) or (txn.txid == sent[0] + 1 and txn.pre_checksum == sent[1]):
                    await self._send_txn(txn)
                else:
                    self.from_log.add(db)  # a gap: read it back from the log
                    break
        while self.from_log:
            db = self.from_log.pop()
            await self._send_from_log(db)

    async def _send_txn(self, txn: Transaction) -> None:
        if len(txn.pages) * txn.page_size > THREAD_ENCODE_BYTES:
            record = await trio.to_thread.run_sync(encode_record, txn)
        else:
            record = encode_record(txn)
        await self.stream.send_many(list(txn_chunks(txn.db, txn.txid, record)))
        self.sent[txn.db] = (txn.txid, txn.post_checksum)

    async def _send_from_log(self, db: str) -> None:
        """Send `db`'s logged transactions after the replica's position, in batches."""
        while True:
            target = self.store.position(db)
            sent = self.sent.get(db, (0, 0))
            if target is None or sent == target:
                return
            if sent[0] >= target[0]:  # same TXID, other content (e.g. renamed over): a new history
                await self._send_snapshot(db)
                return
            start = sent[0] + 1

            def read() -> list[Transaction]:
                txns, size = [], 0
                for txn in itertools.islice(self.store.read(db, start), LOG_BATCH):
                    txns.append(txn)
                    size += len(txn.pages) * txn.page_size
                    if size >= LOG_BATCH_BYTES:
                        break
                return txns

            try:
                txns = await trio.to_thread.run_sync(read)
            except TxidUnavailableError:
                log.info("replica %s: the log of %s no longer reaches TXID %d: sending a snapshot",
                         self.state.node_id, db, start)
                await self._send_snapshot(db)
                return
            if not txns or (sent != (0, 0) and txns[0].pre_checksum != sent[1]):
                await self._send_snapshot(db)
                return
            for txn in txns:
                await self._send_txn(txn)

    async def _send_forget(self, db: str) -> None:
        """Tell the replica that this primary has no database `db`: it discards its copy."""
        await self.stream.send(Forget(db))
        self.sent[db] = (0, 0)

    async def _send_snapshot(self, db: str) -> None:
        """Send a consistent copy of `db` (or its drop), and continue from its TXID."""
        try:
            image, position = await self.server.snapshot(db)
        except FileNotFoundError:  # deleted (its drop is logged) or being renamed
            image, position = b"", None
        except OSError as exc:  # e.g. LockTimeout: a writer held the database too long
            log.warning("cannot take a snapshot of %s for %s, retrying: %s", db, self.state.node_id, exc)
            self._retry_snapshot(db)
            return
        last = self.store.last(db)
        if last is None:
            await self._send_forget(db)
            return
        if position is None or not image:
            if last.dropped:
                msgs = list(snapshot_messages(db, last.txid, last.page_size, 0, 0, []))
                await self.stream.send_many(msgs)
                self.sent[db] = (last.txid, 0)
            else:
                log.warning("cannot take a snapshot of %s yet; retrying", db)
                self._retry_snapshot(db)
            return
        # Image and position were taken under the same lock: the replica
        # verifies the checksum from the pages (and asks again if it differs).
        page_size = parse_db_header(image).page_size
        txid, checksum = position
        commit_size = len(image) // page_size
        started = noted = time.perf_counter()
        sent_pages = 0
        for msg in snapshot_messages(db, txid, page_size, commit_size, checksum,
                                     _pages(image, page_size)):
            await self.stream.send(msg)
            if isinstance(msg, SnapshotPages):
                sent_pages += len(msg.pgnos)
            if time.perf_counter() - noted >= SNAPSHOT_PROGRESS_INTERVAL:  # a long snapshot: say how far
                noted = time.perf_counter()
                log.info("sending a snapshot of %s at TXID %d to %s: %.1f of %.1f MB", db, txid,
                         self.state.node_id, sent_pages * page_size / 1e6, len(image) / 1e6)
        self.sent[db] = (txid, checksum)
        log.info("sent a snapshot of %s at TXID %d to %s (%.1f MB in %.2fs)", db, txid,
                 self.state.node_id, len(image) / 1e6, time.perf_counter() - started)

    def _retry_snapshot(self, db: str) -> None:
        """Ask for `db`'s snapshot again in a while (other databases go on meanwhile)."""

        async def later() -> None:
            await trio.sleep(SNAPSHOT_RETRY_DELAY)
            self.resync.add(db)
            self.wake.set()

        self._nursery.start_soon(later)


def _pages(image: bytes, page_size: int) -> Iterator[tuple[int, memoryview]]:
    """(pgno, page) of every page of `image` but the lock page: views of `image`, not copies."""
    lock = lock_page(page_size)
    view = memoryview(image)
    for index in range(len(image) // page_size):
        pgno = index + 1
        if pgno != lock:
            yield pgno, view[index * page_size : (index + 1) * page_size]


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


__all__ = ["DEFAULT_HEARTBEAT_INTERVAL", "PrimaryServer", "ReplicaState", "SnapshotSource"]
