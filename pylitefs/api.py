"""What the node's HTTP API answers, from a running `Node`: the routes `pylitefs.http.HttpServer` serves.

- `/status`: `Node.status` plus the nodes this one knows (itself, the
  primary, and with an etcd lease every registered node), for `pylitefs status`;
- `/metrics`: the node's `Metrics` and state in Prometheus text format;
- `/events`: `Node.events`, starting with an `init` event;
- admin calls: handoff, import, export, verify.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import trio

from pylitefs.adminops import ImportRefused, backup_into, check_name, check_sqlite
from pylitefs.http import Blob, HttpServer, Reply, Upload
from pylitefs.metrics import Exposition
from replication.checksum import image_checksum

if TYPE_CHECKING:
    from pylitefs.node import Node

log = logging.getLogger(__name__)

#: Longest `/status` waits for etcd's list of nodes.
NODES_TIMEOUT = 1.0
#: A replica's consistent read can miss a moving position; it is tried this many times.
READ_TRIES = 20
#: Under the state directory (data.dir/.pylitefs, outside the mount): uploads being imported.
IMPORT_DIR = "import"


def http_server(node: Node) -> HttpServer:
    """The node's HTTP server: every route of the API."""
    return HttpServer(
        node.info, lambda: status(node), node.stream_handler,
        admin={("POST", "/handoff"): node.handoff_action,
               ("GET", "/export"): lambda params: export(node, params),
               ("GET", "/verify"): lambda params: verify(node)},
        uploads={"/import": Upload(check=lambda params: import_check(node, params),
                                   spool_dir=lambda: os.path.join(node.store.root, IMPORT_DIR),
                                   run=lambda params, path: import_file(node, params, path))},
        admin_token=node.config.admin_token,
        metrics=lambda: metrics_text(node),
        events=(node.events, lambda: init_event(node)))


# ---------------------------------------------------------------- status

async def status(node: Node) -> dict[str, Any]:
    """`GET /status`: `Node.status` and "nodes", every node this one knows: name -> URL."""
    out = node.status()
    nodes: dict[str, str] = {}
    if out.get("primary") and out.get("primary_url"):
        nodes[out["primary"]] = out["primary_url"]
    elector = node.elector
    client = getattr(elector, "client", None)
    if client is not None:
        with trio.move_on_after(NODES_TIMEOUT):
            try:
                registered = await trio.to_thread.run_sync(client.nodes, abandon_on_cancel=True)
            except Exception as exc:  # etcd unreachable: the status still answers
                log.debug("cannot list the nodes in etcd: %s", exc)
                registered = {}
            nodes.update({name: str(info.get("url", "")) for name, info in registered.items() if info.get("url")})
    nodes[node.config.hostname] = node.config.api_url
    out["nodes"] = dict(sorted(nodes.items()))
    return out


def init_event(node: Node) -> dict[str, Any]:
    """The first line of `/events`: who leads, in which term, and every database's position."""
    info = node.info()
    positions = node.store.positions() if node.role == "primary" else dict(node.replica.applied)
    return {"type": "init", "node": info["node"], "role": info["role"], "primary": info["primary"],
            "term": info["term"],
            "databases": {db: {"txid": t, "checksum": f"{c:016x}"} for db, (t, c) in sorted(positions.items())}}


# ---------------------------------------------------------------- metrics

def metrics_text(node: Node) -> str:
    """`GET /metrics`: the node's state and counters in Prometheus text format."""
    m = node.metrics
    primary = node.role == "primary"
    positions = node.store.positions() if primary else dict(node.replica.applied)
    out = Exposition()
    out.gauge("is_primary", "1 on the primary, 0 on a replica", [({}, int(primary))])
    out.gauge("term", "the lease term this node knows", [({}, int(node.info()["term"] or 0))])
    out.gauge("db_txid", "TXID of each database's position (what its -pos file shows)",
              [({"db": db}, t) for db, (t, _) in sorted(positions.items())])
    out.counter("transactions_logged_total", "transactions logged per database since the start",
                [({"db": db}, n) for db, n in sorted(m.logged.items())])
    out.counter("logged_bytes_total", "page bytes logged per database since the start",
                [({"db": db}, n) for db, n in sorted(m.logged_bytes.items())])
    out.counter("log_fsyncs_total", "fdatasyncs of each database's log since it was opened",
                [({"db": db}, n) for db, n in sorted(node.store.fsyncs().items())])
    out.counter("transactions_applied_total", "transactions applied to the mount per database (replica)",
                [({"db": db}, n) for db, n in sorted(m.applied.items())])
    out.gauge("replication_lag_seconds", "seconds since this node last had everything the primary had",
              [({}, node.lag_ms() / 1000)])
    server = node.primary_server
    if primary and server is not None:
        replicas = list(server.replicas.values())
        out.gauge("connected_replicas", "replica streams connected to this primary", [({}, len(replicas))])
        out.gauge("replica_txid", "TXID each connected replica acknowledged, per database",
                  [({"replica": r.node_id, "db": db}, t)
                   for r in replicas for db, (t, _) in sorted(r.positions.items())])
        out.gauge("replica_lag_txids", "transactions a connected replica has not acknowledged, per database",
                  [({"replica": r.node_id, "db": db}, max(0, positions.get(db, (0, 0))[0] - t))
                   for r in replicas for db, (t, _) in sorted(r.positions.items())])
    else:
        replica = node.replica
        out.gauge("stream_connected", "1 while this replica's stream to the primary is up",
                  [({}, int(replica.connected))])
        out.gauge("db_lag_txids", "transactions of the primary's last heartbeat not applied here, per database",
                  [({"db": db}, max(0, t - positions.get(db, (0, 0))[0]))
                   for db, (t, _) in sorted(replica.primary_positions.items())])
    out.counter("max_lag_waits_total", "application writes held by replication.max-lag",
                [({}, m.max_lag_waits)])
    out.counter("max_lag_failures_total", "application writes failed after max-lag-timeout",
                [({}, m.max_lag_failures)])
    out.gauge("event_clients", "clients listening on /events", [({}, len(node.events))])
    out.histogram("commit_seconds", "time to capture and log one application commit (primary)",
                  m.commit_seconds)
    out.histogram("apply_seconds", "time to apply one batch of received transactions (replica)",
                  m.apply_seconds)
    if node.scrubber is not None:
        out.counter("scrub_passes_total", "integrity scrub passes over every database", [({}, node.scrubber.passes)])
        out.counter("scrub_mismatches_total", "databases found not matching their position",
                    [({}, node.scrubber.mismatches)])
    return out.text()


# ---------------------------------------------------------------- import

def import_check(node: Node, params: dict[str, str]) -> Reply | None:
    """Before the upload is read: 400 for a bad name, 409 (naming the primary) on a replica."""
    problem = check_name(params.get("name"))
    if problem is not None:
        return 400, {"error": problem}
    if node.role != "primary":
        info = node.info()
        return 409, {"error": f"this node is not the primary: import on {info['primary'] or 'the primary'}",
                     "primary": info["primary"], "primary_url": info["primary_url"]}
    return None


async def import_file(node: Node, params: dict[str, str], path: str) -> Reply:
    """`POST /import?name=DB`: check the spooled upload, then replace DB through the mount in one transaction."""
    db = params["name"]
    try:
        await trio.to_thread.run_sync(check_sqlite, path)
    except ImportRefused as exc:
        return 400, {"error": str(exc)}
    refused = import_check(node, params)  # the role may have changed during the upload
    if refused is not None:
        return refused
    before = node.store.position(db)
    try:
        await trio.to_thread.run_sync(backup_into, path, os.path.join(node.options.mountpoint, db))
    except ImportRefused as exc:
        return 409, {"error": str(exc)}
    after = node.store.position(db)
    if after is None or after == before:
        return 500, {"error": f"{db}: the import was written but no transaction was logged"}
    log.info("imported %s (%d bytes) as TXID %d", db, os.path.getsize(path), after[0])
    return 200, {"imported": db, "txid": after[0], "checksum": f"{after[1]:016x}",
                 "previous_txid": before[0] if before else 0}


# ---------------------------------------------------------------- export and verify

async def consistent_read(node: Node, db: str) -> tuple[bytes, tuple[int, int] | None] | None:
    """`db`'s committed content and its position at one instant; None if `db` does not exist."""
    for _ in range(READ_TRIES):
        try:
            got = await node.scrub_read(db)
        except FileNotFoundError:
            return None
        if got is not None:
            return got
        if node.role == "primary":
            return None  # the primary's read only fails when the file is missing
        await trio.sleep(0.05)  # a replica applied in between: read again
    raise trio.TooSlowError(f"{db} keeps changing: no consistent read")


async def export(node: Node, params: dict[str, str]) -> Reply:
    """`GET /export?name=DB`: a consistent copy of DB, its position in `X-Pylitefs-Txid`/`-Checksum`."""
    db = params.get("name")
    problem = check_name(db)
    if problem is not None:
        return 400, {"error": problem}
    assert db is not None
    try:
        got = await consistent_read(node, db)
    except trio.TooSlowError as exc:
        return 503, {"error": str(exc)}
    if got is None or got[1] is None:
        return 404, {"error": f"no database {db!r} on this node"}
    image, (txid, checksum) = got[0], got[1]
    actual = await trio.to_thread.run_sync(image_checksum, image)
    if actual != checksum:
        return 500, {"error": f"{db}: its content (checksum {actual:016x}) does not match TXID {txid} "
                              f"({checksum:016x}); run pylitefs verify"}
    return 200, Blob(image, headers=[("X-Pylitefs-Txid", str(txid)), ("X-Pylitefs-Checksum", f"{checksum:016x}")])


async def verify(node: Node) -> Reply:
    """`GET /verify`: every database's position and the checksum recomputed from its content now."""
    out: dict[str, Any] = {}
    for db in node.store.databases():
        try:
            got = await consistent_read(node, db)
        except trio.TooSlowError as exc:
            out[db] = {"ok": False, "error": str(exc)}
            continue
        if got is None or got[1] is None:
            continue
        image, (txid, checksum) = got[0], got[1]
        actual = await trio.to_thread.run_sync(image_checksum, image)
        out[db] = {"txid": txid, "checksum": f"{checksum:016x}", "disk_checksum": f"{actual:016x}",
                   "ok": actual == checksum}
    return 200, {"node": node.config.hostname, "role": node.role, "databases": out,
                 "ok": all(entry["ok"] for entry in out.values())}


__all__ = ["http_server", "metrics_text", "status"]
