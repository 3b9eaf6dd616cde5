"""Election benchmarks on loopback: failover time after kill -9, and the write pause of a handoff.

`python -m bench.failover` (part of `make bench`) starts its own etcd and a
3-node cluster of candidates (real node processes; lease TTL `--ttl`), and
a writer process (tests/failover_workload.py) that follows the primary and
notes the time of every commit SQLite acknowledged:

- failover: kill -9 of the primary -> the first commit acknowledged by the
  new primary (then the killed node is restarted and rejoins);
- handoff: `POST /handoff` on the primary -> the pause between the last
  commit on the old primary and the first on the new one.

Medians (and min/max) over `--runs` runs each. Nothing is asserted; the exit
code is 0 unless a node or a process failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pylitefs.admin import admin_call
from pylitefs.cluster import SECRET, Cluster, wait_for, wait_primary
from pylitefs.etcdserver import EtcdServer
from tests.cluster.test_failover import DB, Writer, start_cluster


def _summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values) * 1000, 1), "min_ms": round(min(values) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1), "runs": len(values)}


def measure(work: Path, runs: int, ttl: float) -> dict[str, dict[str, float]]:
    etcd = EtcdServer(work / "etcd", work / "etcd.log")
    etcd.start()
    cluster = Cluster(work)
    writer: Writer | None = None
    try:
        nodes, _ = start_cluster(cluster, etcd, ttl=ttl)
        writer = Writer(nodes, work / "stop")
        failovers: list[float] = []
        for _ in range(runs):
            primary = wait_primary(nodes, timeout=ttl + 15)
            writer.wait_commits(primary.name, 20)
            killed = time.time()
            primary.crash()
            new = wait_primary([n for n in nodes if n is not primary], timeout=ttl + 15)
            first = writer.wait_commits(new.name, 1)
            failovers.append(first["t"] - killed)
            primary.start()
            target = new.position(DB) or (0, 0)  # the writer goes on: wait until every node got this far
            for node in nodes:
                wait_for(lambda n=node: (n.position(DB) or (0, 0))[0] >= target[0], 60, f"{node.name} to catch up")
        pauses: list[float] = []
        for _ in range(runs):
            primary = wait_primary(nodes)
            writer.wait_commits(primary.name, 20)
            status, payload = admin_call(primary.url, "/handoff", {}, SECRET.encode())
            if status != 200:
                raise RuntimeError(f"handoff failed: {payload}")
            target = next(n for n in nodes if n.name == payload["handoff"])
            writer.wait_commits(target.name, 1)
            commits = writer.commits()
            last_old = max(c["t"] for c in commits if c["node"] == primary.name)
            first_new = min(c["t"] for c in commits if c["node"] == target.name and c["t"] > last_old)
            pauses.append(first_new - last_old)
        return {"failover": _summary(failovers), "handoff_pause": _summary(pauses)}
    finally:
        if writer is not None:
            writer.finish()
        cluster.stop()
        etcd.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover")
    parser.add_argument("--runs", type=int, default=10, help="runs of each measurement")
    parser.add_argument("--ttl", type=float, default=2.0, help="lease TTL in seconds")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pylitefs-bench-failover-") as tmp:
        result = measure(Path(tmp), args.runs, args.ttl)
    print(f"election on loopback, lease TTL {args.ttl:g}s, 3 candidates, {args.runs} runs each")
    f, h = result["failover"], result["handoff_pause"]
    print(f"  failover (kill -9 -> first write on the new primary): median {f['median_ms']} ms "
          f"(min {f['min_ms']}, max {f['max_ms']}); target <= TTL + 1 s = {(args.ttl + 1) * 1000:.0f} ms")
    print(f"  handoff write pause: median {h['median_ms']} ms (min {h['min_ms']}, max {h['max_ms']}); "
          f"target <= 100 ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
