"""Replication between real nodes on loopback: 1 primary, 2 replicas, each its own process and mount.

Random multi-process workloads run on the primary in every journal mode while
reader processes on each replica check the workload's invariant inside every
read transaction; at the end every replica is at the primary's exact
position and checksum, and byte-identical.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pylitefs.cluster import Cluster, committed_image, wait_caught_up
from tests.conftest import integrity
from tests.sqlite_workload import run_workload

pytestmark = pytest.mark.fuse

WORKLOAD = str(Path(__file__).parent.parent / "sqlite_workload.py")
WRITERS = 3
TXNS = 150


def start_readers(node_mnt: Path, db: str, mode: str, stop: Path) -> list[subprocess.Popen[str]]:
    """Two invariant-checking readers on a replica (one with mmap_size)."""
    read_mode = "wal" if mode.startswith("wal") else mode
    return [subprocess.Popen([sys.executable, WORKLOAD, "reader", str(node_mnt / db), read_mode,
                              "--stop-file", str(stop)] + (["--mmap"] if i else []),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def finish(readers: list[subprocess.Popen[str]], stop: Path) -> list[dict]:
    """Stop the readers; their reports (each asserted to have exited 0: no violation)."""
    stop.touch()
    reports = []
    for proc in readers:
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, f"replica reader failed ({proc.returncode}):\n{err}\n{out[-2000:]}"
        reports.append(json.loads(out.splitlines()[-1]))
    return reports


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal", "wal-exclusive"])
def test_replicas_follow_the_primary(cluster: Cluster, mode: str, tmp_path: Path) -> None:
    primary = cluster.primary()
    replicas = [cluster.replica("r1"), cluster.replica("r2")]
    db = "app.db"
    subprocess.run([sys.executable, WORKLOAD, "setup", str(primary.mountpoint / db), mode, "--seq"],
                   check=True, timeout=60)
    wait_caught_up(primary, replicas, db)
    stop = tmp_path / "stop-replica-readers"
    readers = [p for r in replicas for p in start_readers(r.mountpoint, db, mode, stop)]
    try:
        reports = run_workload(primary.mountpoint / db, mode, tmp_path / "stop", txns=TXNS, writers=WRITERS)
        assert all(r["checks"] > 0 for r in reports["reader"])
        target = wait_caught_up(primary, replicas, db)
    finally:
        replica_reports = finish(readers, stop)
    # Every replica reader checked the invariant (and that `seq` never went
    # back) in every read transaction, and its last one saw the final state.
    assert all(r["checks"] > 0 for r in replica_reports), replica_reports
    assert all(r["seq"] == WRITERS * TXNS for r in replica_reports), replica_reports
    image = committed_image(primary, db)
    assert primary.position(db) == target  # the checkpoint changed no content
    for replica in replicas:
        assert (replica.data_dir / db).read_bytes() == image
        assert integrity(replica.mountpoint / db) == "ok"
        assert replica.alive()
