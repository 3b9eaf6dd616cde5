"""The node's side of the admin calls that move whole databases: import, export, verify.

- import: the uploaded file is checked (SQLite header, `PRAGMA
  integrity_check`) where it was spooled, in the data dir's state directory
  (outside the mount), then copied over the database THROUGH THE MOUNT with
  SQLite's backup API in one step: the primary captures it as one ordinary
  transaction, which replicas receive like any other.
- export and verify read a database's committed content at one instant
  (`Node.scrub_read`), with the position it must match.

Blocking functions here run in worker threads.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import urllib.parse

from fs.names import Kind, classify

log = logging.getLogger(__name__)

SQLITE_MAGIC = b"SQLite format 3\x00"
#: How long the import waits for SQLite's write lock on the target (an application may hold it).
IMPORT_BUSY_TIMEOUT = 30.0


class ImportRefused(Exception):
    """The uploaded file cannot be imported; the message says why. Nothing was changed."""


def check_name(name: str | None) -> str | None:
    """Why `name` is not a database name one can import or export (None when it is)."""
    if not name:
        return "the database name is missing: ?name=DB"
    if "/" in name or name.startswith(".") or classify(name).kind is not Kind.DATABASE:
        return f"{name!r} is not a database name"
    return None


def check_sqlite(path: str) -> None:
    """Raise ImportRefused unless the file at `path` is a SQLite database that passes integrity_check."""
    with open(path, "rb") as f:
        header = f.read(len(SQLITE_MAGIC))
    if header != SQLITE_MAGIC:
        raise ImportRefused("the uploaded file is not a SQLite database (no 'SQLite format 3' header)")
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?immutable=1", uri=True)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ImportRefused(f"the uploaded file is not a usable SQLite database: {exc}") from None
    problems = [row[0] for row in rows if row[0] != "ok"]
    if problems:
        raise ImportRefused("the uploaded database fails integrity_check: " + "; ".join(problems[:5]))


def backup_into(source: str, target: str) -> None:
    """Replace the database at `target` (a path in the mount) with `source`'s content, in one transaction."""
    src = sqlite3.connect(f"file:{urllib.parse.quote(source)}?immutable=1", uri=True)
    try:
        dst = sqlite3.connect(target, timeout=IMPORT_BUSY_TIMEOUT)
        try:
            src.backup(dst, pages=-1)  # one step: one write transaction on the target
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise ImportRefused(f"cannot write {os.path.basename(target)}: {exc}") from None
    finally:
        src.close()


__all__ = ["ImportRefused", "backup_into", "check_name", "check_sqlite"]
