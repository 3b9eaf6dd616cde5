"""A writer that follows the primary of an etcd-leased cluster through failovers (run as a script).

    python failover_workload.py writer --node NAME=URL=MOUNT [--node ...] --db DB --stop-file F
                                       [--only NAME] [--marks]

The database must have been created with `sqlite_workload.py setup DB MODE --seq`.
The writer asks each node's `/info` which one is primary and runs the
workload's write transactions (`sqlite_workload.write_one`, which increments
`seq.k`) on that node's mount. After every commit SQLite reported it prints
`{"k": K, "node": NAME, "t": UNIX_TIME}`: K is the sequence number inside the
committed transaction. Any SQLite error (read-only, I/O, the node went away)
is printed as `{"error": MESSAGE, "node": NAME, "t": UNIX_TIME}`, closes the
connection and finds the primary again. With `--only NAME` it
writes to that node alone, whatever its role (to show what a deposed primary
accepts). With `--marks` each transaction instead increments `seq.k` and
inserts that K and a random tag into the table `marks(k, tag, payload)`
(which must exist), and the printed line carries the tag too, so that a test
can check that every acknowledged commit is in the final database (the tag
tells it from a later commit that reused the K of a lost one). It stops when
the stop file exists.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import time
import urllib.request
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.sqlite_workload import write_one  # noqa: E402

RETRY_DELAY = 0.01


def role(url: str) -> str | None:
    """The node's role from /info, None if it does not answer."""
    try:
        with urllib.request.urlopen(url + "/info", timeout=1) as resp:
            return str(json.loads(resp.read())["role"])
    except (OSError, ValueError, KeyError):
        return None


def write_mark(conn: sqlite3.Connection, tag: str) -> None:
    """One transaction: `seq.k` + 1, and a `marks` row holding the new K and `tag`."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("UPDATE seq SET k=k+1")
        conn.execute("INSERT INTO marks(k, tag, payload) SELECT k, ?, randomblob(200) FROM seq", (tag,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def writer(nodes: dict[str, tuple[str, str]], db: str, stop_file: str, only: str | None,
           marks: bool = False) -> None:
    rng = random.Random(os.getpid())
    conn: sqlite3.Connection | None = None
    current: str | None = None
    errors = 0
    while not os.path.exists(stop_file):
        try:
            if conn is None:
                if only is not None:
                    current = only
                else:
                    current = next((n for n, (url, _) in nodes.items() if role(url) == "primary"), None)
                    if current is None:
                        time.sleep(RETRY_DELAY)
                        continue
                conn = sqlite3.connect(os.path.join(nodes[current][1], db), timeout=2, isolation_level=None)
                conn.execute("PRAGMA synchronous=FULL")
            record: dict[str, object] = {}
            if marks:
                record["tag"] = os.urandom(8).hex()
                write_mark(conn, str(record["tag"]))
            else:
                write_one(conn, rng, 1, seq=True)
            k = conn.execute("SELECT k FROM seq").fetchone()[0]
            print(json.dumps({"k": k, "node": current, "t": time.time(), **record}), flush=True)
        except sqlite3.Error as exc:
            errors += 1
            print(json.dumps({"error": str(exc), "node": current, "t": time.time()}), flush=True)
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            conn = None
            time.sleep(RETRY_DELAY)
    print(json.dumps({"role": "writer", "errors": errors}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("writer")
    w.add_argument("--node", action="append", required=True, help="NAME=URL=MOUNT")
    w.add_argument("--db", required=True)
    w.add_argument("--stop-file", required=True)
    w.add_argument("--only")
    w.add_argument("--marks", action="store_true")
    args = parser.parse_args(argv)
    nodes = {}
    for spec in args.node:
        name, url, mount = spec.split("=", 2)
        nodes[name] = (url, mount)
    writer(nodes, args.db, args.stop_file, args.only, args.marks)


if __name__ == "__main__":
    main()
