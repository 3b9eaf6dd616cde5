"""`make demo`: a primary and two replicas under ./demo, SQLite on the primary, reads everywhere.

Three node processes on loopback ports (pylitefs.cluster), each with its own
mount, data dir and log under `./demo`: writers on the primary, the same rows
read on every node with its position, and a write refused on a replica.
Every mount is always taken down at the end, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pylitefs.cluster import Cluster, Node, wait_caught_up
from pylitefs.process import force_unmount, is_mounted

WRITER = textwrap.dedent(
    """
    import sqlite3, sys, time
    db, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    start = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events(who, at, body) VALUES(?, ?, ?)", (who, time.time(), f"event {i} " * 8))
        conn.execute("COMMIT")
    print(f"{n / (time.perf_counter() - start):.0f}")
    """
)

READER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1])
    rows = conn.execute("SELECT who, count(*) FROM events GROUP BY who ORDER BY who").fetchall()
    print(";".join(f"{w}={c}" for w, c in rows), conn.execute("PRAGMA integrity_check").fetchone()[0])
    """
)


def create(path: Path, mode: str) -> None:
    """Create the demo table in `path`, in journal mode `mode`, before the writers start.

    Two writers switching a new database's journal mode at once would race:
    SQLite answers one of them "database is locked" without waiting.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA journal_mode={mode}")
        conn.execute("CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, who TEXT, at REAL, body TEXT)")
    finally:
        conn.close()


NODES = ("primary", "replica1", "replica2")


def run(root: Path, transactions: int) -> None:
    """The demo proper; raises on any failure."""
    for name in NODES:  # left over from an interrupted demo
        if is_mounted(str(root / name / "mnt")):
            force_unmount(str(root / name / "mnt"))
        shutil.rmtree(root / name, ignore_errors=True)
    cluster = Cluster(root)
    codes: list[int | None] = []
    try:
        print(f"1. starting a primary and two replicas under {root}")
        primary = cluster.primary(NODES[0])
        replicas = [cluster.replica(name) for name in NODES[1:]]
        for node in cluster.nodes:
            role = "primary" if node is primary else f"replica of {primary.url}"
            print(f"   {node.name}: mounted at {node.mountpoint}, {role}, pid {node.proc.pid if node.proc else '?'}")
        for mode, db in (("wal", "app.db"), ("delete", "jobs.db")):
            path = primary.mountpoint / db
            print(f"2. two writer processes on the primary, {transactions} transactions each, "
                  f"{db} in journal_mode={mode}")
            create(path, mode)
            writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), who, str(transactions)],
                                        stdout=subprocess.PIPE, text=True) for who in ("alice", "bob")]
            rates = []
            for writer in writers:
                out, _ = writer.communicate(timeout=300)
                if writer.returncode != 0:
                    raise RuntimeError(f"writer failed with exit code {writer.returncode}")
                rates.append(out.strip())
            print(f"   committed; each writer ran at {' and '.join(rates)} transactions/s")
            txid, checksum = wait_caught_up(primary, replicas, db)
            print(f"3. every node is at TXID {txid}, checksum {checksum:016x}; a reader process on each sees:")
            for node in cluster.nodes:
                out = subprocess.run([sys.executable, "-c", READER, str(node.mountpoint / db)], capture_output=True,
                                     text=True, check=True, timeout=60).stdout.split()
                print(f"   {node.name:9} rows per writer {out[0]}; integrity_check: {out[1]}")
        show_replica(replicas[0])
        listing = ", ".join(p.name for p in sorted(replicas[0].mountpoint.iterdir()))
        print(f"5. {replicas[0].name}'s mount holds: {listing}")
    finally:
        codes = [node.stop() for node in cluster.nodes]
        gone = not any(is_mounted(str(node.mountpoint)) for node in cluster.nodes)
        print(f"6. unmounted: {'yes' if gone else 'NO'} (daemon exit codes {', '.join(map(str, codes))})")
    if any(code != 0 for code in codes) or not gone:
        raise RuntimeError(f"a daemon did not stop cleanly; see the logs under {root}")


def show_replica(replica: Node) -> None:
    """What an application on a replica sees: the primary's name, the lag, a refused write."""
    primary = (replica.mountpoint / ".primary").read_text().strip()
    lag = (replica.mountpoint / ".lag").read_text().strip()
    conn = sqlite3.connect(replica.mountpoint / "app.db", timeout=1)
    try:
        conn.execute("INSERT INTO events(who, at, body) VALUES('mallory', 0, 'on a replica')")
        refused = "NOT REFUSED"
    except sqlite3.OperationalError as exc:
        refused = f"refused: {exc}"
    finally:
        conn.close()
    print(f"4. on {replica.name}: .primary says {primary}, .lag says {lag} ms; an INSERT there is {refused}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pylitefs-demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("demo"), help="where to put everything (default ./demo)")
    parser.add_argument("--transactions", type=int, default=300, help="per writer (default 300)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        run(args.dir.resolve(), args.transactions)
    except KeyboardInterrupt:
        print("interrupted; the mount was taken down", file=sys.stderr)
        return 130
    except Exception as exc:  # the demo's one error boundary: say what failed
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print(f"done in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
