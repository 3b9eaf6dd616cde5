"""One SQLite workload, run in a fresh process against one database path.

`python -m bench.workloads WORKLOAD DB [options]` runs the workload and prints
one JSON object on stdout: ``{"value": ..., "unit": ..., "ops": ..., "seconds": ...}``.
The parent (`bench.run`) starts a new process for every measurement, so no
connection, SQLite page cache or Python state leaks from one to the next, and
"cold" simply means the first queries of a new process.

Only the standard library is used here: the workload measures SQLite and the
file system under it, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import time
from collections.abc import Callable

#: Bytes of random payload per row, in every workload.
ROW_BYTES = 100

#: Check the clock once per this many operations in timed loops.
CLOCK_EVERY = 50

SCHEMA = "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)"


def connect(db: str, journal_mode: str, synchronous: str) -> sqlite3.Connection:
    """Open `db` in autocommit mode with the given journal mode and sync level."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    mode = conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0]
    if mode.lower() != journal_mode.lower():
        raise RuntimeError(f"journal_mode={journal_mode} refused (got {mode})")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def timed_loop(step: Callable[[], None], count: int, duration: float) -> tuple[int, float]:
    """Call `step` up to `count` times or until `duration` s have passed; (calls, seconds)."""
    done = 0
    start = time.perf_counter()
    deadline = start + duration
    while done < count:
        step()
        done += 1
        if done % CLOCK_EVERY == 0 and time.perf_counter() >= deadline:
            break
    return done, time.perf_counter() - start


def small_writes(args: argparse.Namespace) -> dict[str, float | int | str]:
    """One-row write transactions: txns/s."""
    conn = connect(args.db, args.journal_mode, args.synchronous)
    conn.execute(SCHEMA)
    sql = f"INSERT INTO t(v) VALUES(randomblob({ROW_BYTES}))"
    done, seconds = timed_loop(lambda: conn.execute(sql), args.count, args.duration)
    conn.close()
    return {"value": done / seconds, "unit": "txn/s", "ops": done, "seconds": seconds}


def bulk_insert(args: argparse.Namespace) -> dict[str, float | int | str]:
    """`args.rows` rows in one transaction (executemany): seconds, commit included."""
    rows = [(os.urandom(ROW_BYTES),) for _ in range(args.rows)]
    conn = connect(args.db, args.journal_mode, args.synchronous)
    conn.execute(SCHEMA)
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t(v) VALUES(?)", rows)
    conn.execute("COMMIT")
    seconds = time.perf_counter() - start
    conn.close()
    return {"value": seconds, "unit": "s", "ops": args.rows, "seconds": seconds}


def seed(args: argparse.Namespace) -> dict[str, float | int | str]:
    """Fill a new database with `args.rows` rows for the read workloads (untimed setup)."""
    result = bulk_insert(args)
    conn = connect(args.db, args.journal_mode, args.synchronous)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)" if args.journal_mode == "wal" else "SELECT 1")
    conn.close()
    return result


def point_selects(args: argparse.Namespace) -> dict[str, float | int | str]:
    """`SELECT v FROM t WHERE id=?` with random ids: queries/s.

    Warm: after a full scan and `args.count` untimed queries, in the same
    process and connection. Cold: the clock starts before the connection is
    opened, so the open and the first reads of a new process are included.
    """
    rng = random.Random(args.seed)
    start = time.perf_counter()
    conn = connect(args.db, args.journal_mode, args.synchronous)
    rows = conn.execute("SELECT max(id) FROM t").fetchone()[0]
    if not rows:
        raise RuntimeError(f"{args.db} has no rows: seed it first")
    sql = "SELECT v FROM t WHERE id=?"

    def query() -> None:
        if conn.execute(sql, (rng.randint(1, rows),)).fetchone() is None:
            raise RuntimeError("missing row")

    if args.warm:
        conn.execute("SELECT sum(length(v)) FROM t").fetchone()
        for _ in range(args.count):
            query()
        done, seconds = timed_loop(query, sys.maxsize, args.duration)
    else:
        for _ in range(args.count):
            query()
        done, seconds = args.count, time.perf_counter() - start
    conn.close()
    return {"value": done / seconds, "unit": "q/s", "ops": done, "seconds": seconds}


WORKLOADS: dict[str, Callable[[argparse.Namespace], dict[str, float | int | str]]] = {
    "small-writes": small_writes,
    "bulk-insert": bulk_insert,
    "seed": seed,
    "point-selects": point_selects,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of one workload run."""
    p = argparse.ArgumentParser(prog="python -m bench.workloads", description=__doc__.splitlines()[0])
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("db", help="database path")
    p.add_argument("--journal-mode", default="wal", choices=["wal", "delete"])
    p.add_argument("--synchronous", default="normal", choices=["off", "normal", "full"])
    p.add_argument("--count", type=int, default=2000, help="operations (upper bound when timed)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds, upper bound of timed loops")
    p.add_argument("--rows", type=int, default=100_000, help="rows for bulk-insert and seed")
    p.add_argument("--warm", action="store_true", help="point-selects: warm up first")
    p.add_argument("--seed", type=int, default=1, help="random seed of the query ids")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run one workload and print its result as JSON."""
    args = parse_args(argv)
    result = WORKLOADS[args.workload](args)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
