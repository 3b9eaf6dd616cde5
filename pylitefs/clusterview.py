"""The cluster as `pylitefs status` and `pylitefs verify` see it, from the nodes' `/status` and `/verify`.

`discover` asks the given nodes for their status and follows the nodes each
one knows (its "nodes": itself, the primary, every node registered in etcd;
on the primary also every connected replica, which tells its URL when it
connects) until no new one turns up. A replica known only by name (one that
is not connected) is shown from the primary's view.
The table and the verdicts are computed from plain dicts, without I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Fetches a node's JSON: (url, path) -> (HTTP status, payload). Raises OSError-like errors as exceptions.
Fetch = Callable[[str, str], tuple[int, dict[str, Any]]]


@dataclass
class NodeView:
    """One node: its URL (if known), its status (if it answered), or why not."""

    name: str
    url: str | None
    status: dict[str, Any] | None = None
    error: str | None = None
    #: For a node known only from the primary's list of replicas: what the primary says of it.
    seen_by_primary: dict[str, Any] = field(default_factory=dict)


def discover(urls: list[str], fetch: Fetch) -> list[NodeView]:
    """Every node reachable from `urls` through the nodes each one knows, sorted by name."""
    by_url: dict[str, NodeView] = {}
    pending: list[tuple[str | None, str]] = [(None, u.rstrip("/")) for u in urls]
    while pending:
        hint, url = pending.pop(0)
        if url in by_url:
            continue
        try:
            code, status = fetch(url, "/status")
        except Exception as exc:  # one unreachable node must not hide the others
            by_url[url] = NodeView(name=hint or url, url=url, error=str(exc))
            continue
        if code != 200:
            by_url[url] = NodeView(name=hint or url, url=url, error=f"HTTP {code}: {status.get('error', '')}")
            continue
        by_url[url] = NodeView(name=str(status.get("node", hint or url)), url=url, status=status)
        known = dict(status.get("nodes") or {})
        known.update({name: seen.get("url") for name, seen in (status.get("replicas") or {}).items()
                      if name not in known})
        for name, node_url in known.items():
            if node_url and node_url.rstrip("/") not in by_url:
                pending.append((name, node_url.rstrip("/")))
    views = {v.name: v for v in by_url.values()}
    for view in list(views.values()):
        for name, seen in ((view.status or {}).get("replicas") or {}).items():
            if name not in views:
                views[name] = NodeView(name=name, url=None, seen_by_primary=seen)
    return [views[name] for name in sorted(views)]


def status_rows(views: list[NodeView]) -> list[list[str]]:
    """The `pylitefs status` table: a header, then a row per node and database."""
    rows = [["NODE", "ROLE", "TERM", "DATABASE", "TXID", "CHECKSUM", "LAG", "CONNECTED", "URL"]]
    for view in views:
        url = view.url or "-"
        if view.error is not None:
            rows.append([view.name, "?", "-", "-", "-", "-", "-", f"no answer: {view.error}", url])
            continue
        if view.status is None:  # a replica as its primary sees it
            dbs = view.seen_by_primary.get("positions") or {}
            rows += [[view.name, "replica", "-", db, str(p["txid"]), p["checksum"],
                      f"{p.get('lag_txids', 0)} tx", "yes (per primary)", url] for db, p in sorted(dbs.items())]
            if not dbs:
                rows.append([view.name, "replica", "-", "-", "-", "-", "-", "yes (per primary)", url])
            continue
        st = view.status
        primary = st.get("role") == "primary"
        if primary:
            connected = f"{len(st.get('replicas') or {})} replica(s)"
        else:
            connected = ("yes" if st.get("connected") else "no") + (f" to {st['primary']}" if st.get("primary") else "")
        dbs = st.get("databases") or {}
        for db, p in sorted(dbs.items()) or [("-", {})]:
            lag = "-" if primary else f"{p.get('lag_txids', 0)} tx, {st.get('lag_ms', 0)} ms"
            rows.append([view.name, str(st.get("role")), str(st.get("term")), db, str(p.get("txid", "-")),
                         str(p.get("checksum", "-")), lag, connected, url])
    return rows


def table(rows: list[list[str]]) -> str:
    """`rows` as aligned text columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


@dataclass
class Verdict:
    """One node's verification: `ok`, and the lines that say why."""

    node: str
    ok: bool
    lines: list[str]


def verdicts(results: dict[str, dict[str, Any] | str]) -> list[Verdict]:
    """Per node (name -> its `/verify` answer, or why it has none): does it hold what its position says,
    and does it agree with the primary (the same checksum at the same TXID)?"""
    reference: dict[str, dict[int, str]] = {}  # db -> TXID -> the primary's checksum
    for answer in results.values():
        if isinstance(answer, dict) and answer.get("role") == "primary":
            for db, entry in answer.get("databases", {}).items():
                if "txid" in entry:
                    reference.setdefault(db, {})[entry["txid"]] = entry["checksum"]
    out: list[Verdict] = []
    for name, answer in sorted(results.items()):
        if isinstance(answer, str):
            out.append(Verdict(name, False, [f"{name}: not verified: {answer}"]))
            continue
        ok, lines = True, []
        for db, entry in sorted(answer.get("databases", {}).items()):
            if "txid" not in entry:
                ok = False
                lines.append(f"{name}: {db}: not verified: {entry.get('error')}")
                continue
            where = f"{name}: {db} at TXID {entry['txid']}"
            if not entry["ok"]:
                ok = False
                lines.append(f"{where}: DISAGREES: its content has checksum {entry['disk_checksum']}, "
                             f"its position says {entry['checksum']}")
                continue
            expected = reference.get(db, {}).get(entry["txid"])
            if expected is not None and expected != entry["checksum"]:
                ok = False
                lines.append(f"{where}: DISAGREES with the primary: checksum {entry['checksum']}, "
                             f"the primary's {expected}")
            else:
                lines.append(f"{where}: ok (checksum {entry['checksum']})")
        out.append(Verdict(name, ok, lines))
    return out


__all__ = ["NodeView", "Verdict", "discover", "status_rows", "table", "verdicts"]
