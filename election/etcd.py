"""The etcd side of leader election: a small blocking client over python-etcd3 (DESIGN.md §7).

Every etcd request blocks for at most `EtcdSettings.timeout` (the gRPC deadline); calls are meant to run in a
worker thread (`trio.to_thread.run_sync`). Every failure comes out as EtcdError (LeaseLost when the
lease is gone); no python-etcd3 or gRPC exception escapes.

Keys, all under `settings.prefix`:
    primary              {"hostname", "advertise_url", "cluster_id"}, bound to the holder's lease
    cluster-id           the cluster id, created once, never bound to a lease
    nodes/<hostname>     what a node registered, bound to its lease
    election/<name>      election posts (e.g. handoff requests), bound to the poster's lease

Measured with python-etcd3 0.12.0 against etcd 3.4.23:
  * LeaseKeepAlive for a revoked or expired lease is answered (no gRPC error) with TTL 0; LeaseRevoke,
    Put and Txn with a missing lease fail with NOT_FOUND "etcdserver: requested lease not found".
  * etcd grants at least 1.5 election timeouts (2 s with the default 1 s election timeout), so a TTL of
    1 may be granted as 2: refresh() returns what etcd granted. An expired key disappears about
    TTL + 0.5 s after the last keepalive (etcd checks leases every 500 ms, then revokes through raft).
  * `transaction()` returns (succeeded, responses): a put's response carries only a header revision;
    a get in the same transaction returns (value, KVMetadata) whose mod_revision is that put's revision
    and which we use for the term.
  * python-etcd3's own watch (add_watch_callback) calls the callback once with the gRPC error when etcd
    stops, then forgets the callback and its thread re-opens streams in a busy loop (a full CPU while
    etcd is down); the watch never resumes after a restart, and closing the client kills that thread
    with "ValueError: Cannot invoke RPC: Channel closed!". So `watch()` below runs its own stream on
    python-etcd3's stubs and re-creates it after every failure.
  * A stream behind a silent partition never fails by itself: the watch channel sends HTTP/2 keepalive
    pings (etcd refuses pings more often than every 5 s), so a dead watch is noticed after about
    WATCH_KEEPALIVE + timeout. Callers must still poll primary() (about every second) and treat the
    watch only as a way to hear about changes sooner.
  * gRPC channels back off reconnects up to 2 minutes: after any connection failure the client drops
    its channel and opens a fresh one (on the next endpoint) for the next call.
  * With username/password, python-etcd3 authenticates once, when the client is made, and sends that
    token with every call. etcd forgets a "simple" token after --auth-token-ttl (300 s) without use and
    on restart (a "jwt" token expires after its ttl whatever happens); calls then fail with
    UNAUTHENTICATED "etcdserver: invalid auth token" before doing anything, so the call is made once
    more on a fresh client, which authenticates again. Leases need no token (LeaseGrant and
    LeaseKeepAlive work without one); reads, puts and transactions fail with INVALID_ARGUMENT
    "etcdserver: user name is empty" when auth is on and no credentials are set.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import etcd3
import etcd3.etcdrpc as etcdrpc
import grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between HTTP/2 keepalive pings on the watch channel (etcd's default --grpc-keepalive-min-time is 5 s).
WATCH_KEEPALIVE = 6.0
#: Seconds between attempts to re-create a broken watch.
WATCH_RETRY_DELAY = 0.5

#: gRPC codes that say "this endpoint is unreachable or unusable right now": drop the channel, try the next.
_CONNECTION_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNKNOWN,
}


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)  # several allowed; "http(s)://host:port"
    prefix: str = "/pylitefs/"  # every key lives under it
    key: str = "primary"  # the primary key is prefix + key
    ttl: float = 10.0  # lease TTL in seconds (etcd grants whole seconds: rounded up, min 1)
    timeout: float = 2.0  # per call deadline (gRPC timeout)
    ca_cert: str = ""  # TLS, for https endpoints
    cert: str = ""
    cert_key: str = ""
    username: str = ""
    password: str = field(default="", repr=False)  # kept out of reprs (logs, tracebacks)


@dataclass(frozen=True)
class PrimaryRecord:
    """The primary key: who holds it and its term."""

    hostname: str
    advertise_url: str  # where replicas connect (the node's HTTP port: stream + API)
    cluster_id: str
    lease_id: int
    term: int  # the key's mod_revision: grows with every put of the key (campaign, claim)


class EtcdError(Exception):
    """etcd could not be reached or answered with an error (message says which endpoint and why)."""


class LeaseLost(EtcdError):
    """the lease no longer exists (expired or revoked)."""


class EtcdAuthError(EtcdError):
    """etcd refused our credentials, or wants some we do not have: retrying will not help until the
    settings or etcd's users change."""


@dataclass(frozen=True)
class _Endpoint:
    url: str
    host: str
    port: int
    tls: bool


def new_client(host: str, port: int, *, plaintext: bool, **kwargs: Any) -> Any:
    """`etcd3.client(host, port, **kwargs)` (blocking: may log in), usable with a password over plaintext.

    gRPC refuses call credentials on a plaintext channel (UNAUTHENTICATED:
    "Established channel does not have a sufficient security level"), so
    there they are dropped; the token travels as metadata all the same.
    """
    client = etcd3.client(host, port, **kwargs)
    if plaintext:
        client.call_credentials = None
    return client


def _parse_endpoint(url: str, settings: EtcdSettings) -> _Endpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ValueError(f"etcd endpoint {url!r} is not http(s)://host:port")
    if parts.scheme == "https" and not settings.ca_cert:
        raise ValueError(f"etcd endpoint {url!r} is https but no ca_cert is set")
    return _Endpoint(url, parts.hostname, parts.port, parts.scheme == "https")


def _rpc_error(exc: BaseException) -> grpc.RpcError | None:
    """The gRPC error behind exc: python-etcd3 re-raises some as its own exceptions (chained)."""
    while exc is not None:
        if isinstance(exc, grpc.RpcError):
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def _describe(exc: BaseException) -> tuple[grpc.StatusCode | None, str]:
    rpc = _rpc_error(exc)
    if rpc is not None and hasattr(rpc, "code"):
        code = rpc.code()
        return code, f"{code.name}: {rpc.details()}"
    return None, f"{type(exc).__name__}: {exc}"


#: etcd's answers about credentials (its error text) -> what to tell the operator.
_AUTH_ERRORS = {
    "authentication failed, invalid user ID or password": "authentication failed for user {user!r}",
    "user name is empty": "etcd requires authentication, but no username is set",
    "authentication is not enabled": "a username is set but etcd has authentication disabled",
    "permission denied": "user {user!r} lacks permission (etcd role) for these keys",
}


#: gRPC's TLS failures (its error text, lower case) -> what to tell the operator. Measured with grpcio
#: 1.85 and etcd 3.4 (TLS 1.3): an etcd that refuses the client's cert (or its absence) closes the
#: connection after the handshake, which gRPC reports as "Unwrap failed (TSI_DATA_CORRUPTED)".
_TLS_ERRORS = {
    "certificate_verify_failed": "TLS failed: etcd's certificate does not verify against ca_cert {ca!r}",
    "is not in peer certificate": "TLS failed: etcd's certificate is not valid for this host name",
    "tsi_data_corrupted": "TLS failed: etcd refused the connection; it wants a client certificate "
                          "signed by a CA it trusts (cert {cert!r})",
    "handshake failed": "TLS handshake with etcd failed",
}


def _auth_problem(detail: str, settings: EtcdSettings) -> str | None:
    """What is wrong with the credentials, when etcd's error `detail` is about them."""
    for text, problem in _AUTH_ERRORS.items():
        if text in detail:
            return problem.format(user=settings.username)
    return None


def _tls_problem(detail: str, settings: EtcdSettings) -> str | None:
    """What went wrong in TLS, when gRPC's error `detail` says so."""
    for text, problem in _TLS_ERRORS.items():
        if text in detail.lower():
            return problem.format(ca=settings.ca_cert, cert=settings.cert or "none set")
    return None


def _token_expired(code: grpc.StatusCode | None, detail: str) -> bool:
    return code == grpc.StatusCode.UNAUTHENTICATED and "invalid auth token" in detail


def _lease_missing(code: grpc.StatusCode | None, detail: str) -> bool:
    return code == grpc.StatusCode.NOT_FOUND and "lease not found" in detail


def _json(info: dict) -> str:
    return json.dumps(info, sort_keys=True, separators=(",", ":"))


class EtcdClient:
    """Blocking, thread-safe access to the election keys; connects lazily, one endpoint at a time."""

    def __init__(self, settings: EtcdSettings) -> None:
        """Raises ValueError for an unusable endpoint list (a configuration error); connects on first use."""
        if not settings.endpoints:
            raise ValueError("no etcd endpoints")
        self.settings = settings
        self._endpoints = [_parse_endpoint(url, settings) for url in settings.endpoints]
        self._primary_key = settings.prefix + settings.key
        self._lock = threading.Lock()
        self._index = 0  # the endpoint in use
        self._client: Any = None  # etcd3.Etcd3Client on self._endpoints[self._index], or None
        self._closed = False

    # -- connection handling -------------------------------------------------------------

    def _open(self, endpoint: _Endpoint, grpc_options: list[tuple[str, Any]] | None = None) -> Any:
        """A new python-etcd3 client (own gRPC channel) on endpoint; may authenticate (network)."""
        s = self.settings
        tls: dict[str, Any] = {}
        if endpoint.tls:
            tls = {"ca_cert": s.ca_cert, "cert_cert": s.cert or None, "cert_key": s.cert_key or None}
        auth: dict[str, Any] = {}
        if s.username:
            auth = {"user": s.username, "password": s.password}
        return new_client(endpoint.host, endpoint.port, plaintext=not endpoint.tls, timeout=s.timeout,
                          grpc_options=grpc_options, **tls, **auth)

    def _connection(self) -> tuple[Any, _Endpoint]:
        with self._lock:
            if self._closed:
                raise EtcdError("etcd client is closed")
            endpoint = self._endpoints[self._index]
            if self._client is None:
                try:
                    self._client = self._open(endpoint)
                except Exception as exc:
                    self._index = (self._index + 1) % len(self._endpoints)
                    raise self._error("cannot connect to etcd", endpoint, _describe(exc)[1]) from exc
            return self._client, endpoint

    def _drop(self, client: Any, next_endpoint: bool = True) -> None:
        """Forget client (if it is still the current one); unless told not to, move on to the next endpoint."""
        with self._lock:
            if self._client is not client:
                return  # another thread already moved on
            self._client = None
            if next_endpoint:
                self._index = (self._index + 1) % len(self._endpoints)
        client.close()

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run fn(python-etcd3 client); translate every failure into EtcdError/LeaseLost/EtcdAuthError.

        A call refused for an expired auth token is made once more, after authenticating again."""
        reauthenticated = False
        while True:
            client, endpoint = self._connection()
            try:
                return fn(client)
            except (grpc.RpcError, etcd3.Etcd3Exception, ValueError, OSError) as exc:  # ValueError: channel closed
                code, detail = _describe(exc)
                if _token_expired(code, detail) and not reauthenticated:
                    log.info("etcd at %s no longer accepts our auth token (expired, or etcd restarted): "
                             "authenticating again", endpoint.url)
                    self._drop(client, next_endpoint=False)
                    reauthenticated = True
                    continue
                if _lease_missing(code, detail):
                    raise LeaseLost(f"cannot {what} at {endpoint.url}: {detail}") from exc
                if code is None or code in _CONNECTION_CODES:
                    self._drop(client)
                raise self._error(f"cannot {what}", endpoint, detail) from exc

    def _error(self, action: str, endpoint: _Endpoint, detail: str) -> EtcdError:
        """The error for a failed `action` ("cannot ..."), saying what is wrong with credentials or TLS
        when the failure's `detail` tells (EtcdAuthError for credentials)."""
        problem = _auth_problem(detail, self.settings)
        if problem:
            return EtcdAuthError(f"{action} at {endpoint.url}: {problem} ({detail})")
        problem = _tls_problem(detail, self.settings) if endpoint.tls else None
        if problem:
            return EtcdError(f"{action} at {endpoint.url}: {problem} ({detail})")
        return EtcdError(f"{action} at {endpoint.url}: {detail}")

    def close(self) -> None:
        """Close the connection; later calls raise EtcdError. Watches are cancelled separately."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- leases --------------------------------------------------------------------------

    def grant(self) -> int:
        """A new lease of settings.ttl seconds (rounded up to whole seconds, at least 1); returns its id."""
        ttl = max(1, math.ceil(self.settings.ttl))
        return int(self._call("grant a lease", lambda c: c.lease(ttl).id))

    def refresh(self, lease_id: int) -> float:
        """Keep the lease alive once; returns the TTL etcd granted. LeaseLost when the lease is gone."""
        responses = self._call(f"refresh lease {lease_id:x}", lambda c: list(c.refresh_lease(lease_id)))
        if not responses:
            raise EtcdError(f"refresh lease {lease_id:x}: etcd sent no keepalive answer")
        ttl = responses[0].TTL
        if ttl <= 0:
            raise LeaseLost(f"lease {lease_id:x} has expired or was revoked")
        return float(ttl)

    def revoke(self, lease_id: int) -> None:
        """Revoke the lease (its keys go with it); no error when it is already gone."""
        try:
            self._call(f"revoke lease {lease_id:x}", lambda c: c.revoke_lease(lease_id))
        except LeaseLost:
            pass

    # -- the primary key -----------------------------------------------------------------

    def _record(self, value: bytes, meta: Any) -> PrimaryRecord:
        try:
            info = json.loads(value)
            return PrimaryRecord(hostname=str(info["hostname"]), advertise_url=str(info["advertise_url"]),
                                 cluster_id=str(info["cluster_id"]), lease_id=int(meta.lease_id),
                                 term=int(meta.mod_revision))
        except (ValueError, KeyError, TypeError) as exc:
            raise EtcdError(f"malformed primary key {self._primary_key}: {value!r}") from exc

    def _value(self, hostname: str, advertise_url: str, cluster_id: str) -> str:
        return _json({"hostname": hostname, "advertise_url": advertise_url, "cluster_id": cluster_id})

    def primary(self) -> PrimaryRecord | None:
        """The primary key as etcd holds it now, or None when nobody holds it."""
        value, meta = self._call("read the primary key", lambda c: c.get(self._primary_key))
        return None if value is None else self._record(value, meta)

    def _put_if(self, what: str, compare: Callable[[Any], Any], value: str, lease_id: int) -> PrimaryRecord | None:
        """One transaction: if compare holds, put the primary key bound to lease_id and read it back."""
        key = self._primary_key

        def txn(c: Any) -> tuple[bool, list]:
            t = c.transactions
            return c.transaction(compare=[compare(t)], success=[t.put(key, value, lease=lease_id), t.get(key)],
                                 failure=[])

        succeeded, responses = self._call(what, txn)
        if not succeeded:
            return None
        (stored, meta), = responses[1]
        return self._record(stored, meta)

    def campaign(self, hostname: str, advertise_url: str, cluster_id: str, lease_id: int) -> PrimaryRecord | None:
        """Take the primary key if nobody holds it: the new record (term = this put's revision), else None.

        LeaseLost when lease_id no longer exists."""
        return self._put_if("campaign", lambda t: t.create(self._primary_key) == 0,
                            self._value(hostname, advertise_url, cluster_id), lease_id)

    def claim(self, seen: PrimaryRecord, hostname: str, advertise_url: str, cluster_id: str) -> PrimaryRecord | None:
        """Rewrite the primary key if it is still exactly `seen` (same mod_revision), keeping seen's lease.

        Returns the new record (a larger term), or None when the key changed or vanished meanwhile."""
        return self._put_if("claim the primary key", lambda t: t.mod(self._primary_key) == seen.term,
                            self._value(hostname, advertise_url, cluster_id), seen.lease_id)

    def resign(self, mine: PrimaryRecord) -> None:
        """Delete the primary key if it is still `mine`, then revoke mine.lease_id (even if the key moved on)."""
        key = self._primary_key

        def txn(c: Any) -> tuple[bool, list]:
            t = c.transactions
            return c.transaction(compare=[t.mod(key) == mine.term], success=[t.delete(key)], failure=[])

        self._call("resign", txn)
        self.revoke(mine.lease_id)

    def watch(self, on_change: Callable[[], None]) -> Callable[[], None]:
        """Call on_change() after every change of the primary key, on a thread of the watch's own.

        on_change() is also called when the watch breaks and when it is re-created after a break, since
        changes may have been missed: the caller then re-reads primary(). The watch retries forever
        (endpoints in turn) until cancelled; nothing is raised, now or later. Returns the cancel function,
        which is idempotent and waits briefly for the watch thread to end (unless called from on_change).

        Returns once etcd confirmed the watch, or its first attempt failed (at most about settings.timeout):
        so when etcd is reachable, every change made after watch() returns is reported."""
        watch = _PrimaryWatch(self, on_change)
        watch.start()
        return watch.cancel

    # -- cluster id, nodes, posts --------------------------------------------------------

    def cluster_id(self, local: str) -> str:
        """The cluster id etcd holds, created with `local` (a new random one when "") if there is none yet."""
        key = self.settings.prefix + "cluster-id"
        candidate = local or secrets.token_hex(8)

        def txn(c: Any) -> tuple[bool, list]:
            t = c.transactions
            return c.transaction(compare=[t.create(key) == 0], success=[t.put(key, candidate)], failure=[t.get(key)])

        succeeded, responses = self._call("read the cluster id", txn)
        if succeeded:
            return candidate
        (value, _meta), = responses[0]
        return bytes(value).decode()

    def _put(self, what: str, key: str, info: dict, lease_id: int) -> None:
        self._call(what, lambda c: c.put(key, _json(info), lease=lease_id))

    def _read_prefix(self, what: str, prefix: str) -> dict[str, dict]:
        """Every key under prefix (name relative to it) -> its JSON value; malformed values are skipped."""
        found: dict[str, dict] = {}
        for value, meta in self._call(what, lambda c: list(c.get_prefix(prefix))):
            name = bytes(meta.key).decode()[len(prefix):]
            try:
                info = json.loads(value)
            except ValueError:
                log.warning("ignoring malformed %s%s: %r", prefix, name, value)
                continue
            if isinstance(info, dict):
                found[name] = info
        return found

    def register(self, hostname: str, info: dict, lease_id: int) -> None:
        """Publish info under nodes/<hostname>, bound to lease_id (gone when the lease is). LeaseLost if it is gone."""
        self._put("register", f"{self.settings.prefix}nodes/{hostname}", info, lease_id)

    def nodes(self) -> dict[str, dict]:
        """Every registered node: hostname -> info."""
        return self._read_prefix("list nodes", self.settings.prefix + "nodes/")

    def post(self, name: str, value: dict, lease_id: int) -> None:
        """Put election/<name> = value, bound to lease_id. LeaseLost if the lease is gone."""
        self._put(f"post {name}", f"{self.settings.prefix}election/{name}", value, lease_id)

    def posts(self, name_prefix: str) -> dict[str, dict]:
        """Every election/<name_prefix>* post: name (relative to election/) -> value."""
        found = self._read_prefix("list posts", self.settings.prefix + "election/" + name_prefix)
        return {name_prefix + rest: value for rest, value in found.items()}

    def delete_post(self, name: str) -> None:
        """Delete election/<name> (no error when absent)."""
        key = f"{self.settings.prefix}election/{name}"
        self._call(f"delete post {name}", lambda c: c.delete(key))


class _PrimaryWatch:
    """A watch stream on the primary key, re-created after every failure until cancelled."""

    def __init__(self, owner: EtcdClient, on_change: Callable[[], None]) -> None:
        self._owner = owner
        self._on_change = on_change
        self._key = owner.settings.prefix + owner.settings.key
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._client: Any = None  # the python-etcd3 client of the current stream
        self._established = False  # whether the current or last stream got etcd's "created"
        self._first_attempt = threading.Event()  # set once the first stream is created or has failed
        self._thread = threading.Thread(target=self._run, name="etcd-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._first_attempt.wait(self._owner.settings.timeout + 1)

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()  # ends the stream: the watch thread wakes up and sees the cancel
        if threading.current_thread() is not self._thread:
            self._thread.join(self._owner.settings.timeout + 1)

    def _notify(self) -> None:
        if self._cancelled.is_set():
            return
        try:
            self._on_change()
        except Exception:
            log.exception("primary key watch callback failed")

    def _run(self) -> None:
        endpoints = self._owner._endpoints
        index = self._owner._index
        failures = 0  # consecutive attempts that failed: warn and notify on the first only
        while not self._cancelled.is_set():
            endpoint = endpoints[index]
            try:
                self._stream(endpoint, resumed=failures > 0)
                reason = "etcd ended the stream"
            except Exception as exc:
                reason = _describe(exc)[1]
            self._first_attempt.set()
            if self._cancelled.is_set():
                return
            failures = 1 if self._established else failures + 1
            if failures == 1:
                log.warning("cannot watch %s at %s, retrying: %s", self._key, endpoint.url, reason)
                self._notify()
            else:
                log.debug("cannot watch %s at %s, retrying: %s", self._key, endpoint.url, reason)
            index = (index + 1) % len(endpoints)
            self._cancelled.wait(WATCH_RETRY_DELAY)

    def _stream(self, endpoint: _Endpoint, resumed: bool) -> None:
        """Watch through one fresh channel until the stream fails (raises) or etcd ends it (returns).

        Sets self._established once etcd confirms the watch."""
        timeout = self._owner.settings.timeout
        self._established = False
        client = self._owner._open(endpoint, grpc_options=[
            ("grpc.keepalive_time_ms", int(WATCH_KEEPALIVE * 1000)),
            ("grpc.keepalive_timeout_ms", int(timeout * 1000)),
            ("grpc.http2.ping_timeout_ms", int(timeout * 1000)),  # else a ping may wait 60 s for its ack
            ("grpc.http2.max_pings_without_data", 0),
        ])
        done = threading.Event()
        with self._lock:
            if self._cancelled.is_set():
                client.close()
                return
            self._client = client

        def requests() -> Iterator[Any]:
            yield etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(key=self._key.encode()))
            done.wait()  # keep our half of the stream open until this attempt is over

        def give_up_unless_created() -> None:
            if not self._established:
                client.close()  # a partition can hang the handshake for 20 s: fail within the deadline

        timer = threading.Timer(timeout, give_up_unless_created)
        timer.daemon = True
        timer.start()
        try:
            stub = etcdrpc.WatchStub(client.channel)
            for response in stub.Watch(requests(), credentials=client.call_credentials, metadata=client.metadata):
                if response.created:
                    self._established = True
                    self._first_attempt.set()
                    if resumed:
                        self._notify()  # the key may have changed while we were not watching
                        log.info("watching %s at %s again", self._key, endpoint.url)
                if response.canceled:
                    raise EtcdError(f"etcd cancelled the watch: {response.cancel_reason or 'no reason given'}")
                if response.compact_revision:
                    raise EtcdError(f"watch revision compacted at {response.compact_revision}")
                if response.events:
                    self._notify()
        finally:
            timer.cancel()
            done.set()
            with self._lock:
                if self._client is client:
                    self._client = None
            client.close()
