"""`make demo`: mount one node under ./demo, run SQLite through it, show what happened.

Everything lives under `./demo` (mount point, data dir, daemon log), so no
root-only paths are needed beyond FUSE itself; the mount is always taken down
at the end, also on Ctrl-C or failure.
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

from pylitefs.process import MountProcess, is_mounted

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


def run(root: Path, transactions: int) -> None:
    """The demo proper; raises on any failure."""
    node = MountProcess(mountpoint=root / "mnt", data_dir=root / "data", log_path=root / "pylitefs.log")
    if is_mounted(str(node.mountpoint)):
        node.stop()  # left over from an interrupted demo
    shutil.rmtree(node.data_dir, ignore_errors=True)
    print(f"1. mounting pylitefs at {node.mountpoint} (data dir {node.data_dir})")
    node.start()
    try:
        print(f"   ready; daemon pid {node.proc.pid if node.proc else '?'}, log {node.log_path}")
        for mode, db in (("wal", "app.db"), ("delete", "jobs.db")):
            path = node.mountpoint / db
            print(f"2. two writer processes, {transactions} transactions each, {db} in journal_mode={mode}")
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
            out = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True,
                                 check=True, timeout=60).stdout.split()
            print(f"3. a reader process sees rows per writer {out[0]}; integrity_check: {out[1]}")
        listing = ", ".join(f"{p.name} ({p.stat().st_size} B)" for p in sorted(node.mountpoint.iterdir()))
        print(f"4. the mount holds: {listing}")
        stored = ", ".join(p.name for p in sorted(node.data_dir.iterdir()) if not p.name.startswith("."))
        print(f"   stored in the data dir: {stored}")
    finally:
        code = node.stop()
        gone = not is_mounted(str(node.mountpoint))
        print(f"5. unmounted: {'yes' if gone else 'NO'} (daemon exit code {code})")
    if code != 0 or not gone:
        raise RuntimeError("the daemon did not stop cleanly; see " + str(node.log_path))


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
