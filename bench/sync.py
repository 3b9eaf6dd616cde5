"""The cost of synchronous replication on loopback: asynchronous vs `replication.sync: 1`, in one run.

`python -m bench.sync` (part of `make bench`) starts a primary and one
replica as real node processes on this machine, once with `sync: 0` and once
with `sync: 1`, and in each a writer process commits small WAL transactions
(one row, `synchronous=NORMAL`) on the primary as fast as it can for
`--seconds`. It reports the write throughput and the commit latency (from
`INSERT` to its return, which with `sync: 1` includes the replica logging,
applying, fsyncing and acknowledging the transaction) p50/p99/max.

Nothing is asserted; the exit code is 0 unless a node or a process failed.
Both nodes and the writer share this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.replication import percentile
from pylitefs.cluster import Cluster, wait_caught_up

DB = "sync.db"


def writer(db: str, seconds: float) -> None:
    """Commit one-row transactions for `seconds`; print each commit's latency in seconds."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    latencies: list[float] = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        began = time.perf_counter()
        conn.execute("INSERT INTO t(v) VALUES (randomblob(100))")
        latencies.append(time.perf_counter() - began)
    conn.close()
    print(json.dumps({"latencies": latencies, "seconds": time.monotonic() - start}))


def measure(work: Path, sync: int, seconds: float) -> dict[str, float]:
    """Throughput and latency of small commits on a primary with `replication.sync: sync` and one replica."""
    cluster = Cluster(work / f"sync{sync}")
    try:
        primary = cluster.primary(replication={"sync": sync})
        replica = cluster.replica("replica")
        conn = sqlite3.connect(primary.mountpoint / DB, isolation_level=None)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        conn.close()
        wait_caught_up(primary, [replica], DB)
        out = subprocess.run([sys.executable, "-m", "bench.sync", "writer", str(primary.mountpoint / DB),
                              str(seconds)], stdout=subprocess.PIPE, text=True, check=True,
                             timeout=seconds + 120).stdout
        result = json.loads(out)
        wait_caught_up(primary, [replica], DB, timeout=120)
    finally:
        cluster.stop()
    ms = [x * 1000 for x in result["latencies"]]
    return {"tx_per_s": len(ms) / result["seconds"], "p50_ms": percentile(ms, 0.5),
            "p99_ms": percentile(ms, 0.99), "max_ms": max(ms), "count": len(ms)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "writer":
        writer(argv[1], float(argv[2]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.sync")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--quick", action="store_true", help="3-second runs")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 3.0
    work = Path(tempfile.mkdtemp(prefix="pylitefs-bench-sync-"))
    results: dict[str, dict[str, float]] = {}
    try:
        for label, sync in (("async", 0), ("sync1", 1)):
            results[label] = measure(work, sync, args.seconds)
        print(f"{'small WAL commits, 1 replica':30} {'tx/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for label, name in (("async", "asynchronous (sync: 0)"), ("sync1", "synchronous (sync: 1)")):
            r = results[label]
            print(f"{name:30} {r['tx_per_s']:8,.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f}")
        a, s = results["async"], results["sync1"]
        print(f"sync: 1 costs {1 - s['tx_per_s'] / a['tx_per_s']:.0%} of the throughput and "
              f"{s['p50_ms'] - a['p50_ms']:.2f} ms at p50 on loopback")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
