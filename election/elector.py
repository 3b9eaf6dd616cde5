"""Who is primary: a static lease, or an etcd lease with automatic failover and handoff (DESIGN §7).

An elector drives the node through its `Roles`: `promote(term)` when this
node becomes primary, `demote()` when it stops being primary, `follow(...)`
for the primary a replica should stream from. The node's mount enforces the
lease's deadline on its own (`Roles.fence`), so a primary whose elector is
slow to notice a lost lease still refuses writes in time.

`EtcdElector` (one trio task, `run()`):

- at start, checks the cluster id kept in etcd (creates it on first use),
  registers the node under `<prefix>nodes/<hostname>` with a session lease,
  and watches the primary key;
- no primary: every candidate posts its position under
  `<prefix>election/<term>/<hostname>` and waits (at most ELECTION_WINDOW)
  for the other registered candidates' posts; the most advanced one
  (largest sum of TXIDs; ties: the larger hostname) campaigns first, the
  others only if no primary appears within BEST_WAIT;
- campaigning is one etcd transaction: create the key bound to a fresh
  lease if it does not exist. The term is the key's revision, which only
  grows;
- the primary refreshes its lease every TTL/3. The fence deadline is the
  time *before* the refresh was sent plus the TTL etcd granted, less a
  margin: etcd cannot expire the lease (and nobody can be elected) before it;
- the key naming this node while it is not primary (a handoff to it, or a
  primary that stepped down and whose lease survived) is claimed: the key is
  put again under the same lease (new term), then the node leads;
- handoff: the primary fences writes, waits until the target replica has
  acknowledged every position, and rewrites the key to name the target
  under the same lease; the target claims it. A clean stop hands off to a
  caught-up candidate if one is connected, else deletes the key and revokes
  the lease, so the others elect at once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import trio

from election.etcd import EtcdAuthError, EtcdClient, EtcdError, EtcdSettings, LeaseLost, PrimaryRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long candidates wait for each other's positions before the best one campaigns.
ELECTION_WINDOW = 0.5
#: How long the others then wait for the best one before campaigning themselves.
BEST_WAIT = 1.0
#: How long a handoff may keep writes fenced while the target catches up.
HANDOFF_TIMEOUT = 5.0
#: Delay between attempts when etcd cannot be reached.
RETRY_DELAY = 0.25
#: The static lease's term: there is only ever one primary.
STATIC_TERM = 1


class Roles(Protocol):
    """What the node does when its role changes (implemented by `pylitefs.node`)."""

    async def promote(self, term: int) -> None:
        """Become primary in `term`: make local databases consistent, then accept writes."""

    async def demote(self) -> None:
        """Stop accepting writes at once, then make local databases safe to follow another primary."""

    async def follow(self, hostname: str | None, url: str | None, term: int) -> None:
        """Stream from the primary `hostname` at `url` (None: no primary known), refusing older terms."""

    def fence(self, until: float) -> None:
        """Accept application writes until time.monotonic() reaches `until` (0: refuse now)."""

    def positions(self) -> dict[str, tuple[int, int]]:
        """This node's logged position of every database."""

    def replica_positions(self) -> dict[str, dict[str, tuple[int, int]]]:
        """On the primary: each connected replica's acknowledged positions."""

    async def wait_acked(self, node_id: str, positions: dict[str, tuple[int, int]]) -> None:
        """On the primary: return once replica `node_id` has durably acknowledged `positions`."""


class HandoffError(Exception):
    """A handoff that cannot be done; the message says why. Nothing changed."""


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """What the status shows of the lease."""

    primary: str | None
    url: str | None
    term: int


class StaticElector:
    """A fixed primary: this node leads (candidate) or follows `primary_url` forever."""

    def __init__(self, roles: Roles, *, hostname: str, candidate: bool, primary_url: str) -> None:
        self.roles = roles
        self.hostname = hostname
        self.candidate = candidate
        self.primary_url = primary_url

    def info(self) -> LeaderInfo:
        return LeaderInfo(self.hostname if self.candidate else None, self.primary_url, STATIC_TERM)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.candidate:
            self.roles.fence(math.inf)
            await self.roles.promote(STATIC_TERM)
        else:
            await self.roles.follow(None, self.primary_url, STATIC_TERM)
        task_status.started()

    async def handoff(self, to: str | None) -> str:
        raise HandoffError("a static lease cannot be handed off")

    async def stop(self) -> None:
        return None


def fence_margin(ttl: float) -> float:
    """How long before the lease's earliest possible expiry the primary stops accepting writes."""
    return max(0.2, ttl * 0.05)


def score(positions: dict[str, tuple[int, int]]) -> int:
    """How advanced a copy is, for choosing whom to elect: the sum of its TXIDs."""
    return sum(txid for txid, _ in positions.values())


class EtcdElector:
    """Elects the primary with an etcd lease; see the module docstring."""

    def __init__(
        self,
        roles: Roles,
        settings: EtcdSettings,
        *,
        hostname: str,
        advertise_url: str,
        candidate: bool,
        promote: bool = False,
        cluster_id: Callable[[], str],
        adopt_cluster_id: Callable[[str], None],
        request_handoff: Callable[[str, str], Awaitable[None]] | None = None,
        client: EtcdClient | None = None,
    ) -> None:
        self.roles = roles
        self.settings = settings
        self.hostname = hostname
        self.advertise_url = advertise_url
        self.candidate = candidate
        self.promote_wanted = promote
        self._cluster_id = cluster_id
        self._adopt_cluster_id = adopt_cluster_id
        self._request_handoff = request_handoff
        self.client = client if client is not None else EtcdClient(settings)
        self.ttl = float(settings.ttl)
        self.poll_interval = min(1.0, self.ttl / 3)
        #: The primary as last read from etcd.
        self.current: PrimaryRecord | None = None
        #: This node's record while it is primary.
        self.mine: PrimaryRecord | None = None
        self._deadline = 0.0
        self._fenced = False  # a handoff holds writes
        self._wake = trio.Event()
        self._session_lease = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._stopping = False
        self._promote_asked = 0.0
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------ status

    def info(self) -> LeaderInfo:
        rec = self.current
        return LeaderInfo(rec.hostname if rec else None, rec.advertise_url if rec else None,
                          rec.term if rec else 0)

    # -------------------------------------------------------------- etcd

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking etcd call in a worker thread (abandoned if this task is cancelled)."""
        return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)

    def _on_change(self) -> None:
        """Watch callback, on etcd's thread: wake the loop."""
        token = self._token
        if token is None:
            return
        try:
            trio.from_thread.run_sync(self._wake_up, trio_token=token)
        except (trio.RunFinishedError, RuntimeError):
            pass

    def _wake_up(self) -> None:
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, or until the watch reports a change."""
        with trio.move_on_after(seconds):
            await self._wake.wait()
        self._wake = trio.Event()

    # -------------------------------------------------------------- main

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the cluster in etcd, then elect / lead / follow until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        task_status.started()  # the node serves reads (as a replica of nobody) until etcd answers
        await self._join()
        cancel_watch = await self._call(self.client.watch, self._on_change)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._keep_session)
                await self._loop()
        finally:
            cancel_watch()

    async def _join(self) -> None:
        """Check the cluster id and register this node (retrying while etcd is unreachable).

        EtcdAuthError (wrong or missing credentials, no permission) is raised:
        retrying cannot help until the settings change.
        """
        while True:
            try:
                cluster_id = await self._call(self.client.cluster_id, self._cluster_id())
                break
            except EtcdAuthError:
                raise
            except EtcdError as exc:
                log.warning("cannot reach etcd to join the cluster, retrying: %s", exc)
                await trio.sleep(1.0)
        local = self._cluster_id()
        if local and cluster_id != local:
            raise ClusterMismatch(f"this node belongs to cluster {local}, but etcd (prefix "
                                  f"{self.settings.prefix}) holds cluster {cluster_id}")
        if not local:
            self._adopt_cluster_id(cluster_id)
        await self._register()

    async def _register(self) -> None:
        self._session_lease = await self._call(self.client.grant)
        await self._call(self.client.register, self.hostname,
                         {"url": self.advertise_url, "candidate": self.candidate}, self._session_lease)

    async def _keep_session(self) -> None:
        """Keep the node's registration alive (re-register after etcd lost it)."""
        while True:
            await trio.sleep(self.ttl / 3)
            try:
                if self._session_lease:
                    await self._call(self.client.refresh, self._session_lease)
                else:
                    await self._register()
            except LeaseLost:
                self._session_lease = 0
            except EtcdError as exc:
                log.debug("cannot refresh the session lease, retrying: %s", exc)

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                rec = await self._call(self.client.primary)
            except EtcdError as exc:
                log.warning("cannot read the primary from etcd, retrying: %s", exc)
                await self._sleep(RETRY_DELAY * 4)
                continue
            previous, self.current = self.current, rec
            if rec is not None and rec.hostname == self.hostname:
                await self._claim_and_lead(rec)
                continue
            if rec is None:
                if previous is not None:
                    log.info("no primary (term %d of %s ended)", previous.term, previous.hostname)
                await self.roles.follow(None, None, previous.term if previous else 0)
                if self.candidate:
                    await self._elect(previous)
                    continue
            else:
                if previous is None or previous.term != rec.term:
                    log.info("primary is %s (%s), term %d", rec.hostname, rec.advertise_url, rec.term)
                await self.roles.follow(rec.hostname, rec.advertise_url, rec.term)
                if self.promote_wanted and self.candidate and self._nursery is not None:
                    self._nursery.start_soon(self._ask_promotion, rec)  # never holds up the loop
            await self._sleep(self.poll_interval)

    # ---------------------------------------------------------- electing

    async def _elect(self, lost: PrimaryRecord | None) -> None:
        """Campaign if this node is the most advanced candidate (or the best one did not)."""
        round_ = f"{lost.term if lost else 0}/"
        mine = score(self.roles.positions())
        try:
            await self._call(self.client.post, round_ + self.hostname, {"score": mine}, self._session_lease)
            deadline = trio.current_time() + ELECTION_WINDOW
            while True:
                posts = await self._call(self.client.posts, round_)
                nodes = await self._call(self.client.nodes)
                expected = {h for h, i in nodes.items() if i.get("candidate")} - {lost.hostname if lost else ""}
                posted = {name.split("/", 1)[1]: int(v.get("score", 0)) for name, v in posts.items()}
                if expected <= set(posted) or trio.current_time() >= deadline:
                    break
                await trio.sleep(0.05)
            best = max(posted.items(), key=lambda kv: (kv[1], kv[0]), default=(self.hostname, mine))
            if best[0] != self.hostname and best[1] >= mine:
                log.info("%s is the most advanced candidate (%d vs %d): waiting for it", best[0], best[1], mine)
                with trio.move_on_after(BEST_WAIT):
                    while (await self._call(self.client.primary)) is None:
                        await self._sleep(0.05)
                    return
            await self._campaign()
        except EtcdError as exc:
            log.warning("cannot run the election, retrying: %s", exc)
            await trio.sleep(RETRY_DELAY)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await self._call(self.client.delete_post, round_ + self.hostname)
                except EtcdError:
                    pass

    async def _campaign(self) -> None:
        sent = time.monotonic()
        lease = await self._call(self.client.grant)
        rec = await self._call(self.client.campaign, self.hostname, self.advertise_url,
                               self._cluster_id(), lease)
        if rec is None:
            await self._call(self.client.revoke, lease)
            return
        await self._lead(rec, sent)

    async def _claim_and_lead(self, seen: PrimaryRecord) -> None:
        """The key names this node (handoff, or a lease that outlived our stepping down): lead again."""
        sent = time.monotonic()
        try:
            rec = await self._call(self.client.claim, seen, self.hostname, self.advertise_url,
                                   self._cluster_id())
            if rec is None:
                return
            await self._lead(rec, sent)
        except EtcdError as exc:
            log.warning("cannot claim the primary key, retrying: %s", exc)
            await trio.sleep(RETRY_DELAY)

    # ----------------------------------------------------------- leading

    async def _lead(self, rec: PrimaryRecord, sent: float) -> None:
        """Be primary for `rec`'s term until the lease is lost, handed off or the node stops."""
        try:
            granted = await self._call(self.client.refresh, rec.lease_id)
        except EtcdError as exc:
            log.warning("won term %d but cannot refresh its lease: %s", rec.term, exc)
            return
        self.mine = self.current = rec
        self._fenced = False  # a handoff's fence belongs to the term that handed off
        self._set_deadline(sent + granted - fence_margin(granted))
        log.info("this node is primary, term %d (lease %x, ttl %.0fs)", rec.term, rec.lease_id, granted)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keepalive, rec, nursery.cancel_scope)
                nursery.start_soon(self._watch_key, rec, nursery.cancel_scope)
                await self.roles.promote(rec.term)
        finally:  # the term ended (the tasks above cancelled the nursery), or the node is stopping
            self.mine = None
            self.roles.fence(0)
        if not self._stopping:
            await self.roles.demote()

    def _set_deadline(self, deadline: float) -> None:
        self._deadline = deadline
        if not self._fenced:
            self.roles.fence(deadline)

    async def _keepalive(self, rec: PrimaryRecord, scope: trio.CancelScope) -> None:
        """Refresh the lease every TTL/3; at the fence deadline without a refresh, step down."""
        while True:
            await trio.sleep(self.ttl / 3)
            while True:
                sent = time.monotonic()
                try:
                    with trio.fail_after(max(0.01, self._deadline - sent)):
                        granted = await self._call(self.client.refresh, rec.lease_id)
                except LeaseLost:
                    log.error("term %d: the lease is gone (expired or revoked); stepping down", rec.term)
                    scope.cancel()
                    return
                except (EtcdError, trio.TooSlowError) as exc:
                    if time.monotonic() >= self._deadline:
                        log.error("term %d: cannot renew the lease before its deadline; stepping down: %s",
                                  rec.term, exc or "timeout")
                        scope.cancel()
                        return
                    log.warning("cannot renew the lease, retrying: %s", exc or "timeout")
                    await trio.sleep(RETRY_DELAY)
                    continue
                self._set_deadline(sent + granted - fence_margin(granted))
                break

    async def _watch_key(self, rec: PrimaryRecord, scope: trio.CancelScope) -> None:
        """Step down as soon as the key stops naming this term (handoff done, or deleted)."""
        while True:
            await self._sleep(self.poll_interval)
            try:
                now = await self._call(self.client.primary)
            except EtcdError:
                continue  # the keepalive decides when to give up
            if now is None or now.term != rec.term:
                self.current = now
                if now is not None and now.hostname != self.hostname:
                    log.info("term %d ended: %s is primary now (term %d)", rec.term, now.hostname, now.term)
                elif now is None:
                    log.warning("term %d ended: the primary key was deleted", rec.term)
                scope.cancel()
                return

    # ----------------------------------------------------------- handoff

    async def handoff(self, to: str | None) -> str:
        """Pass the lease to candidate `to` (None: the most caught-up one); returns its hostname."""
        rec = self.mine
        if rec is None:
            raise HandoffError("this node is not the primary")
        try:
            nodes = await self._call(self.client.nodes)
        except EtcdError as exc:
            raise HandoffError(f"cannot reach etcd: {exc}") from None
        acked = self.roles.replica_positions()
        candidates = [h for h, i in nodes.items() if i.get("candidate") and h != self.hostname and h in acked]
        if to is not None:
            if to not in candidates:
                raise HandoffError(f"{to} is not a connected candidate (connected candidates: "
                                   f"{', '.join(sorted(candidates)) or 'none'})")
            target = to
        elif candidates:
            target = max(candidates, key=lambda h: (score(acked[h]), h))
        else:
            raise HandoffError("no candidate is connected")
        started = time.monotonic()
        self._fenced = True
        self.roles.fence(0)
        try:
            with trio.fail_after(HANDOFF_TIMEOUT):
                await self.roles.wait_acked(target, self.roles.positions())
            new = await self._call(self.client.claim, rec, target, str(nodes[target].get("url", "")),
                                   self._cluster_id())
            if new is None:
                raise HandoffError("the primary key changed during the handoff")
        except trio.TooSlowError:
            self._unfence()
            raise HandoffError(f"{target} did not catch up within {HANDOFF_TIMEOUT:.0f}s") from None
        except EtcdError as exc:
            self._unfence()
            raise HandoffError(f"cannot reach etcd: {exc}") from None
        except BaseException:
            self._unfence()
            raise
        log.info("handed the lease to %s (term %d) after %.0f ms of fenced writes", target, new.term,
                 (time.monotonic() - started) * 1000)
        self._wake.set()
        return target

    def _unfence(self) -> None:
        self._fenced = False
        if self.mine is not None:
            self.roles.fence(self._deadline)

    async def _ask_promotion(self, rec: PrimaryRecord) -> None:
        """lease.promote: ask the primary to hand over to this node (at most every few seconds)."""
        now = time.monotonic()
        if self._request_handoff is None or now - self._promote_asked < 5.0:
            return
        self._promote_asked = now
        try:
            with trio.fail_after(HANDOFF_TIMEOUT + 2):
                await self._request_handoff(rec.advertise_url, self.hostname)
        except Exception as exc:  # the primary may be busy or this node not caught up yet: ask later
            log.info("asked %s to hand over (lease.promote): %s", rec.hostname, exc)

    # -------------------------------------------------------------- stop

    async def stop(self) -> None:
        """Clean stop: hand off to a caught-up candidate if possible, else resign; leave the cluster."""
        self._stopping = True
        rec = self.mine
        if rec is not None:
            try:
                target = await self.handoff(None)
                log.info("stopping: handed off to %s", target)
            except HandoffError as exc:
                log.info("stopping: no handoff (%s); resigning", exc)
                try:
                    await self._call(self.client.resign, rec)
                except EtcdError as exc2:
                    log.warning("cannot resign the lease (it expires in its TTL): %s", exc2)
        if self._session_lease:
            try:
                await self._call(self.client.revoke, self._session_lease)
            except EtcdError:
                pass


class ClusterMismatch(Exception):
    """etcd holds another cluster id than this node's data dir."""


Elector = StaticElector | EtcdElector

__all__ = ["ClusterMismatch", "Elector", "EtcdElector", "HandoffError", "LeaderInfo", "Roles", "StaticElector",
           "fence_margin", "score"]
