"""Replication benchmarks on loopback: commit-to-visible lag, and catch-up throughput.

`python -m bench.replication` (part of `make bench`) starts a primary and one
replica as real node processes on this machine and measures:

- lag: a writer process commits small WAL transactions (`synchronous=NORMAL`)
  on the primary at a steady rate (default 1,000/s) and then as fast as it
  can; a poller process on the replica runs a read transaction in a tight
  loop and notes when each row first becomes visible. Lag = visible time
  minus the time the writer's COMMIT returned (one clock: same host);
  p50/p99/max over every row;
- catch-up: a database of `--snapshot-mb` MB created on the primary while no
  replica runs; then a new replica starts, and the time from its start until
  its position equals the primary's gives MB/s: once from the log (it still
  reaches back to TXID 1), once by a snapshot (the primary kept its log for
  one second only).

Nothing is asserted; the exit code is 0 unless a node or a process failed.
All four processes share this machine's 2 cores, which inflates the lag.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pylitefs.cluster import Cluster, wait_caught_up

DB = "lag.db"
#: The poller's pause between read transactions (its resolution; it also leaves the CPU to the nodes).
POLL_INTERVAL = 0.0002


def writer(db: str, rate: float, seconds: float) -> None:
    """Insert (seq, commit time) rows at `rate`/s (0: as fast as possible); print commit times."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    times: list[int] = []
    start = time.monotonic()
    seq = 0
    while time.monotonic() - start < seconds:
        seq += 1
        if rate:
            wait = start + seq / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        conn.execute("INSERT INTO lag(seq) VALUES(?)", (seq,))
        times.append(time.monotonic_ns())
    conn.close()
    print(json.dumps({"commit_ns": times}))


def poller(db: str, stop_file: str) -> None:
    """Note when each seq first becomes visible on the replica, until `stop_file` exists."""
    conn = sqlite3.connect(db, isolation_level=None)
    seen = 0
    visible: list[int] = []
    checks = 0
    while True:
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM lag").fetchone()
        now = time.monotonic_ns()
        if row[0] > seen:
            visible.extend([now] * (row[0] - seen))
            seen = row[0]
        checks += 1
        if checks % 256 == 0 and Path(stop_file).exists():
            break
        time.sleep(POLL_INTERVAL)
    print(json.dumps({"visible_ns": visible}))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_lag(cluster: Cluster, rate: float, seconds: float, work: Path) -> dict[str, float]:
    primary, replica = cluster.nodes[0], cluster.nodes[1]
    conn = sqlite3.connect(primary.mountpoint / DB, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("DROP TABLE IF EXISTS lag")
    conn.execute("CREATE TABLE lag(seq INTEGER PRIMARY KEY)")
    conn.close()
    wait_caught_up(primary, [replica], DB)
    stop = work / f"stop-{rate}"
    stop.unlink(missing_ok=True)
    poll = subprocess.Popen([sys.executable, "-m", "bench.replication", "poller", str(replica.mountpoint / DB),
                             str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        out = subprocess.run([sys.executable, "-m", "bench.replication", "writer", str(primary.mountpoint / DB),
                              str(rate), str(seconds)], stdout=subprocess.PIPE, text=True, check=True,
                             timeout=seconds + 120).stdout
        commits = json.loads(out)["commit_ns"]
        wait_caught_up(primary, [replica], DB, timeout=120)
        time.sleep(0.5)  # a benchmark, not a test: let the poller see the last rows
    finally:
        stop.touch()
        visible = json.loads(poll.communicate(timeout=60)[0])["visible_ns"]
    lags = [(v - c) / 1e6 for c, v in zip(commits, visible, strict=False)]
    achieved = len(commits) / seconds
    return {"rate": achieved, "p50_ms": percentile(lags, 0.5), "p99_ms": percentile(lags, 0.99),
            "max_ms": max(lags), "count": len(lags), "mean_ms": statistics.fmean(lags)}


def measure_catch_up(work: Path, megabytes: int, *, snapshot: bool) -> dict[str, float]:
    """Seconds for a new replica to reach a `megabytes` database: from the log, or by a snapshot.

    For the snapshot the primary keeps its log for a second only, so that the
    log no longer reaches back to TXID 1 when the replica connects.
    """
    cluster = Cluster(work / ("snapshot" if snapshot else "log"))
    try:
        retention = {"retention": "1s", "retention-monitor-interval": "200ms"} if snapshot else {}
        primary = cluster.primary(data=retention)
        conn = sqlite3.connect(primary.mountpoint / "big.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, v BLOB)")
        rows = megabytes * 1024 // 64
        for i in range(0, rows, 256):  # 16 MB transactions
            conn.execute("BEGIN")
            for _ in range(min(256, rows - i)):
                conn.execute("INSERT INTO big(v) VALUES(randomblob(64000))")
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        if snapshot:
            deadline = time.monotonic() + 60
            while "retention: dropped" not in primary.log_text() and time.monotonic() < deadline:
                time.sleep(0.1)
        size = (primary.data_dir / "big.db").stat().st_size
        # Write back the ~3 GB that building the database left dirty (WAL, checkpoint, log)
        # first: otherwise the writeback competes with the catch-up and the figure measures both.
        os.sync()
        start = time.monotonic()
        replica = cluster.replica("late")
        wait_caught_up(primary, [replica], "big.db", timeout=1800)
        elapsed = time.monotonic() - start
        used_snapshot = "snapshot" in replica.log_text()
        return {"mb": size / 1e6, "seconds": elapsed, "mb_per_s": size / 1e6 / elapsed,
                "snapshot": used_snapshot}
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "writer":
        writer(argv[1], float(argv[2]), float(argv[3]))
        return 0
    if argv and argv[0] == "poller":
        poller(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.replication")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each lag run")
    parser.add_argument("--rate", type=float, default=1000.0, help="steady commit rate of the first run")
    parser.add_argument("--snapshot-mb", type=int, default=1024, help="database size for catch-up (0: skip)")
    parser.add_argument("--quick", action="store_true", help="2-second runs and a 64 MB snapshot")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.snapshot_mb = 2.0, 64
    work = Path(tempfile.mkdtemp(prefix="pylitefs-bench-repl-"))
    results: dict[str, object] = {}
    try:
        cluster = Cluster(work / "lag")
        try:
            cluster.primary()
            cluster.replica("replica")
            for label, rate in (("steady", args.rate), ("max", 0.0)):
                results[label] = r = measure_lag(cluster, rate, args.seconds, work)
                print(f"lag at {r['rate']:,.0f} tx/s ({label}): p50 {r['p50_ms']:.2f} ms, "
                      f"p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms over {r['count']:,} commits",
                      flush=True)
        finally:
            cluster.stop()
        if args.snapshot_mb:
            for key, snapshot in (("log", False), ("snapshot", True)):
                results[key] = s = measure_catch_up(work, args.snapshot_mb, snapshot=snapshot)
                how = "a snapshot" if s["snapshot"] else "the log"
                print(f"a new replica catches up with a {s['mb']:,.0f} MB database from {how}: "
                      f"{s['seconds']:.1f} s, {s['mb_per_s']:.0f} MB/s (from its start)", flush=True)
        steady = results["steady"]
        print(f"target: p99 lag <= 10 ms at 1,000 tx/s   {steady['p99_ms']:.2f} ms "
              f"{'met' if steady['p99_ms'] <= 10 else 'MISSED'}")
        if args.snapshot_mb:
            for key in ("log", "snapshot"):
                rate = results[key]["mb_per_s"]  # type: ignore[index]
                print(f"target: catch-up >= 100 MB/s ({key:8}) {rate:.0f} MB/s {'met' if rate >= 100 else 'MISSED'}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
