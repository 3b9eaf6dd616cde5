"""SQLite worker processes for the multi-process tests (run as a script).

    python sqlite_workload.py setup  DB MODE [--seq]
    python sqlite_workload.py writer DB MODE --txns N --seed S [--mmap] [--synchronous FULL] [--no-checkpoint]
    python sqlite_workload.py reader DB MODE --stop-file F [--mmap] [--announce]
    python sqlite_workload.py appender DB MODE --seed W

An appender inserts rows (writer W, seq 1, 2, ...) with `synchronous=FULL`
until it is killed, printing `{"committed": seq}` after each commit: every
printed seq is a transaction SQLite reported durable.

Schema: `items(id, writer, v, payload)` and one `counter(n, total)` row. Every
write transaction inserts (or sometimes deletes) one item and updates the
counter in the same transaction, so inside any read transaction
`count(items) == counter.n` and `sum(v) == counter.total`. A reader that sees
otherwise prints the violation and exits 3. With `setup --seq` the database
also holds a `seq(k)` row that every write transaction increments: a reader
then also checks that k never decreases (it never sees an older state than
one it saw) and reports the last k it saw; with `--announce` it prints
`{"reading": true}` after its first check. Each worker prints one JSON line
with what it did; a writer prints `{"committed": k}` after every commit so a
test that kills it knows what SQLite acknowledged.

MODE is delete | truncate | persist | wal | wal-exclusive. In wal-exclusive
every connection uses `locking_mode=EXCLUSIVE`, so workers open, do a small
batch and close, retrying while another process holds the database.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

BUSY_TIMEOUT_S = 30.0
EXCLUSIVE_BATCH = 5
# In wal-exclusive a process holds the database from open to close; SQLite's
# busy handler sleeps up to 100 ms a try and loses every race against a
# process that reopens at once, so there workers retry with their own
# short random back-off instead.
EXCLUSIVE_BUSY_TIMEOUT_S = 0.002
EXCLUSIVE_BACKOFF_S = 0.004
MODES = ("delete", "truncate", "persist", "wal", "wal-exclusive")


def connect(db: str, mode: str, mmap: bool, synchronous: str | None = None,
            checkpoints: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode with this mode's per-connection pragmas.

    `synchronous` overrides the mode's default (FULL for delete/persist, else
    NORMAL); without `checkpoints` the connection never checkpoints a WAL.
    """
    timeout = EXCLUSIVE_BUSY_TIMEOUT_S if mode == "wal-exclusive" else BUSY_TIMEOUT_S
    conn = sqlite3.connect(db, timeout=timeout, isolation_level=None)
    try:
        if mode == "wal-exclusive":
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        if synchronous is None:
            synchronous = "FULL" if mode in ("delete", "persist") else "NORMAL"
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if not checkpoints:
            conn.execute("PRAGMA wal_autocheckpoint=0")
        if mmap:
            conn.execute("PRAGMA mmap_size=268435456")
    except BaseException:
        conn.close()  # a half-open connection would keep its locks
        raise
    return conn


def setup(db: str, mode: str, seq: bool = False) -> None:
    """Create the schema in `mode` (with the `seq` table if asked)."""
    conn = sqlite3.connect(db, isolation_level=None)
    journal = "wal" if mode.startswith("wal") else mode
    got = conn.execute(f"PRAGMA journal_mode={journal}").fetchone()[0]
    if got != journal:
        raise SystemExit(f"journal_mode={journal} answered {got}")
    conn.executescript(
        """
        CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, writer INT, v INT, payload BLOB);
        CREATE TABLE IF NOT EXISTS counter(n INT, total INT);
        INSERT INTO counter SELECT 0, 0 WHERE NOT EXISTS (SELECT 1 FROM counter);
        """
    )
    if seq:
        conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS seq(k INT);
            INSERT INTO seq SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM seq);
            """
        )
    conn.close()


def has_seq(conn: sqlite3.Connection) -> bool:
    """True when the database has the `seq` table (created by `setup --seq`)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='seq'").fetchone() is not None


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """True for the errors a SQLite application retries."""
    text = str(exc)
    return "locked" in text or "busy" in text


def write_one(conn: sqlite3.Connection, rng: random.Random, writer: int, seq: bool = False) -> tuple[int, int]:
    """One write transaction (also incrementing `seq` if asked); returns (inserted, deleted)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if seq:
            conn.execute("UPDATE seq SET k=k+1")
        if rng.random() < 0.15:
            row = conn.execute("SELECT id, v FROM items ORDER BY random() LIMIT 1").fetchone()
            if row is not None:
                conn.execute("DELETE FROM items WHERE id=?", (row[0],))
                conn.execute("UPDATE counter SET n=n-1, total=total-?", (row[1],))
                conn.execute("COMMIT")
                return 0, 1
        v = rng.randrange(1, 1000)
        size = rng.choice((10, 100, 500, 3000)) if rng.random() < 0.95 else 20000
        conn.execute("INSERT INTO items(writer, v, payload) VALUES(?, ?, randomblob(?))", (writer, v, size))
        conn.execute("UPDATE counter SET n=n+1, total=total+?", (v,))
        conn.execute("COMMIT")
        return 1, 0
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def writer(db: str, mode: str, txns: int, seed: int, mmap: bool, synchronous: str | None = None,
           checkpoints: bool = True) -> None:
    """Run `txns` write transactions, retrying busy ones (`synchronous`, `checkpoints`: see connect)."""
    rng = random.Random(seed)
    inserted = deleted = retries = done = 0
    seq = False
    conn: sqlite3.Connection | None = None
    while done < txns:
        try:
            if conn is None:
                conn = connect(db, mode, mmap, synchronous, checkpoints)
                seq = has_seq(conn)
            ins, dele = write_one(conn, rng, seed, seq)
            inserted += ins
            deleted += dele
            done += 1
            print(json.dumps({"committed": done}), flush=True)
            if mode == "wal-exclusive" and done % EXCLUSIVE_BATCH == 0:
                conn.close()
                conn = None
                time.sleep(rng.random() * EXCLUSIVE_BACKOFF_S)
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            retries += 1
            if conn is not None and mode == "wal-exclusive":
                conn.close()
                conn = None
            time.sleep(rng.random() * EXCLUSIVE_BACKOFF_S)
    if conn is not None:
        conn.close()
    print(json.dumps({"role": "writer", "inserted": inserted, "deleted": deleted, "retries": retries}))


def reader(db: str, mode: str, stop_file: str, mmap: bool, announce: bool = False) -> None:
    """Check the invariant in read transactions until `stop_file` exists."""
    checks = retries = 0
    last_seq: int | None = None
    seq = False
    conn: sqlite3.Connection | None = None
    while True:
        stopping = os.path.exists(stop_file)
        try:
            if conn is None:
                conn = connect(db, mode, mmap)
                seq = has_seq(conn)
            conn.execute("BEGIN")
            count, vsum = conn.execute("SELECT count(*), coalesce(sum(v), 0) FROM items").fetchone()
            n, total = conn.execute("SELECT n, total FROM counter").fetchone()
            k = conn.execute("SELECT k FROM seq").fetchone()[0] if seq else None
            conn.execute("COMMIT")
            if (count, vsum) != (n, total):
                print(json.dumps({"violation": {"count": count, "sum": vsum, "n": n, "total": total}}),
                      flush=True)
                sys.exit(3)
            if k is not None:
                if last_seq is not None and k < last_seq:
                    print(json.dumps({"violation": {"seq": k, "seen_before": last_seq}}), flush=True)
                    sys.exit(3)
                last_seq = k
            if announce and checks == 0:
                print(json.dumps({"reading": True}), flush=True)
            checks += 1
            if mode == "wal-exclusive" and checks % EXCLUSIVE_BATCH == 0:
                conn.close()
                conn = None
                time.sleep(random.random() * EXCLUSIVE_BACKOFF_S)
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            retries += 1
            if conn is not None:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if mode == "wal-exclusive":
                    conn.close()
                    conn = None
            time.sleep(random.random() * EXCLUSIVE_BACKOFF_S)
        if stopping:
            break
    report: dict[str, object] = {"role": "reader", "checks": checks, "retries": retries}
    if last_seq is not None:
        report["seq"] = last_seq
    print(json.dumps(report))


def run_workload(db: Path, mode: str, stop_file: Path, *, txns: int, writers: int = 4, readers: int = 2,
                 deadline_s: float = 400) -> dict[str, list[dict]]:
    """Run writer and reader processes against `db` to completion; their final JSON reports.

    Asserts that every process exited 0 (no invariant violation, no SQLite error).
    """
    subprocess.run([sys.executable, __file__, "setup", str(db), mode], check=True, timeout=60)
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        for r in range(readers):
            args = [sys.executable, __file__, "reader", str(db), mode, "--stop-file", str(stop_file)]
            procs.append(("reader", subprocess.Popen(args + (["--mmap"] if r % 2 else []),
                                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        for w in range(writers):
            args = [sys.executable, __file__, "writer", str(db), mode, "--txns", str(txns), "--seed", str(w + 1)]
            procs.append(("writer", subprocess.Popen(args + (["--mmap"] if w % 2 else []),
                                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        deadline = time.monotonic() + deadline_s
        reports: dict[str, list[dict]] = {"writer": [], "reader": []}
        for role, proc in procs:
            if role == "reader":
                continue
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, f"writer failed ({proc.returncode}):\n{err}\n{out[-2000:]}"
            reports["writer"].append(json.loads(out.splitlines()[-1]))
        stop_file.touch()
        for role, proc in procs:
            if role != "reader":
                continue
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, f"reader failed ({proc.returncode}):\n{err}\n{out[-2000:]}"
            reports["reader"].append(json.loads(out.splitlines()[-1]))
        return reports
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def last_acknowledged(output: str) -> int:
    """The last `{"committed": n}` a writer or appender printed: what SQLite acknowledged."""
    seqs = [json.loads(line)["committed"] for line in output.splitlines() if line.startswith('{"committed"')]
    return seqs[-1] if seqs else 0


def appender(db: str, mode: str, writer_id: int) -> None:
    """Insert (writer_id, seq) rows until killed; print each acknowledged seq."""
    conn = connect(db, mode, False)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS acked(writer INT, seq INT, PRIMARY KEY(writer, seq))")
    seq = conn.execute("SELECT coalesce(max(seq), 0) FROM acked WHERE writer=?", (writer_id,)).fetchone()[0]
    while True:
        seq += 1
        while True:
            try:
                conn.execute("INSERT INTO acked VALUES(?, ?)", (writer_id, seq))
                break
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
        print(json.dumps({"committed": seq}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["setup", "writer", "reader", "appender"])
    parser.add_argument("db")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--txns", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-file")
    parser.add_argument("--mmap", action="store_true")
    parser.add_argument("--seq", action="store_true")
    parser.add_argument("--announce", action="store_true")
    parser.add_argument("--synchronous", choices=["NORMAL", "FULL"], help="writer: instead of the mode's default")
    parser.add_argument("--no-checkpoint", action="store_true", help="writer: wal_autocheckpoint=0")
    args = parser.parse_args(argv)
    if args.role == "setup":
        setup(args.db, args.mode, args.seq)
    elif args.role == "appender":
        appender(args.db, args.mode, args.seed)
    elif args.role == "writer":
        writer(args.db, args.mode, args.txns, args.seed, args.mmap, args.synchronous, not args.no_checkpoint)
    else:
        reader(args.db, args.mode, args.stop_file, args.mmap, args.announce)


if __name__ == "__main__":
    main()
