"""Tools over a node's transaction logs: `pylitefs log` and `pylitefs export`.

Both open the logs read-only, so they are safe while the node runs (they see
the transactions logged when they start). `export_remote` asks a running
node instead (`GET /export`).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator

from pylitefs.admin import download
from pylitefs.node import STATE_DIR
from replication.checksum import database_checksum, image_checksum
from replication.log import TransactionLog, replay
from replication.store import LOG_SUFFIX


class ToolError(Exception):
    """A tool cannot do what was asked; the message says why."""


def log_path(data_dir: str, db: str) -> str:
    """Where the log of database `db` under `data_dir` is."""
    return os.path.join(data_dir, STATE_DIR, "logs", db + LOG_SUFFIX)


def open_log(data_dir: str, db: str) -> TransactionLog:
    """The read-only log of database `db` under `data_dir`."""
    path = log_path(data_dir, db)
    try:
        return TransactionLog.open(path, readonly=True)
    except FileNotFoundError:
        raise ToolError(f"no transaction log for database {db!r} in {data_dir}") from None


def log_lines(data_dir: str, db: str) -> Iterator[str]:
    """A table of `db`'s logged transactions: TXID, time, pages, size, checksum."""
    with open_log(data_dir, db) as txlog:
        yield f"{'TXID':>8}  {'TIME (UTC)':<26}  {'PAGES':>6}  {'SIZE':>8}  {'PAGE':>5}  CHECKSUM"
        for txn in txlog:
            when = datetime.datetime.fromtimestamp(txn.timestamp_ns / 1e9, datetime.UTC)
            size = "dropped" if txn.dropped else str(txn.commit_size)
            yield (f"{txn.txid:>8}  {when.isoformat(timespec='microseconds')[:26]:<26}  "
                   f"{len(txn.pages):>6}  {size:>8}  {txn.page_size:>5}  {txn.post_checksum:016x}")


def export(data_dir: str, db: str, out: str, txid: int | None = None) -> tuple[int, int]:
    """Write `db` as of TXID `txid` (default: the last logged) to `out`; (txid, checksum).

    The image is rebuilt from the log and checked against the logged
    checksum; `out` is written to a temporary file and renamed into place.
    """
    with open_log(data_dir, db) as txlog:
        last = txlog.last
        if last is None:
            raise ToolError(f"the log of {db!r} is empty")
        try:
            image = replay(txlog, txid)
        except Exception as exc:
            raise ToolError(str(exc)) from None
        wanted = txid if txid is not None else last.txid
        txn = next(txlog.read(wanted))
    if txn.dropped:
        raise ToolError(f"{db!r} was deleted at TXID {wanted}")
    if database_checksum(image, txn.page_size) != txn.post_checksum:
        raise ToolError(f"the rebuilt image of {db!r} does not match the checksum logged at TXID {wanted}")
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(image)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return wanted, txn.post_checksum


def export_remote(url: str, db: str, out: str, token: bytes) -> tuple[int, int]:
    """Fetch a consistent copy of `db` from the running node at `url` into `out`; (txid, checksum).

    The copy's checksum is checked against the position the node sent; `out`
    is replaced only when it matches.
    """
    tmp = f"{out}.download-{os.getpid()}"
    try:
        status, error, headers = download(url, "/export", {"name": db}, token, tmp)
        if status != 200:
            raise ToolError(f"{url} cannot export {db!r} (HTTP {status}): {error.get('error', '')}")
        txid, checksum = int(headers["X-Pylitefs-Txid"]), int(headers["X-Pylitefs-Checksum"], 16)
        with open(tmp, "rb") as f:
            actual = image_checksum(f.read())
        if actual != checksum:
            raise ToolError(f"the copy of {db!r} from {url} has checksum {actual:016x}, not {checksum:016x} "
                            f"as its TXID {txid}")
        os.replace(tmp, out)
        return txid, checksum
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
