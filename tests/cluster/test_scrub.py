"""Integrity scrubbing on real nodes: a replica repairs a copy changed behind its back; a primary reports one.

A primary and a replica scrub every 0.2 s. The test damages a page of a
database *in the data dir* (as a disk error or another program would), where
the scrubber reads, and checks what each node does.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pylitefs.cluster import Cluster, committed_image, wait_caught_up, wait_for
from tests.conftest import integrity

pytestmark = pytest.mark.fuse

WORKLOAD = str(Path(__file__).parent.parent / "sqlite_workload.py")
DB = "app.db"
SCRUB = {"interval": "200ms", "rate": "1GB"}


def damage(path: Path, page: int, page_size: int = 4096) -> None:
    """Overwrite most of page `page` of the file at `path` with garbage."""
    with open(path, "r+b") as f:
        f.seek((page - 1) * page_size + 100)
        f.write(b"\xde\xad" * 1000)


def scrub_of(node, db: str) -> dict | None:  # type: ignore[no-untyped-def]
    return node.http("/status").get("scrub", {}).get("databases", {}).get(db)


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_a_replica_repairs_a_damaged_copy_and_a_primary_reports_one(cluster: Cluster, mode: str) -> None:
    primary = cluster.primary(scrub=SCRUB)
    replica = cluster.replica("r1", scrub=SCRUB)
    subprocess.run([sys.executable, WORKLOAD, "setup", str(primary.mountpoint / DB), mode, "--seq"],
                   check=True, timeout=60)
    subprocess.run([sys.executable, WORKLOAD, "writer", str(primary.mountpoint / DB), mode, "--txns", "200",
                    "--seed", "1"], check=True, timeout=120, capture_output=True)
    position = wait_caught_up(primary, [replica], DB)
    wait_for(lambda: (scrub_of(replica, DB) or {}).get("txid") == position[0]
             and scrub_of(replica, DB)["ok"], 30, "a clean scrub on the replica")
    assert replica.http("/status")["scrub"]["mismatches"] == 0

    damage(replica.data_dir / DB, 2)
    wait_for(lambda: "asked the primary for a snapshot of app.db" in replica.log_text(), 30,
             "the replica to notice and ask for a snapshot")
    expected = committed_image(primary, DB)
    wait_for(lambda: (replica.data_dir / DB).read_bytes() == expected, 30, "the replica's file to be repaired")
    assert "scrub: app.db does not match its position" in replica.log_text()
    assert replica.position(DB) == primary.position(DB)
    assert integrity(replica.mountpoint / DB) == "ok"
    wait_for(lambda: (scrub_of(replica, DB) or {}).get("ok"), 30, "a clean scrub after the repair")

    damage(primary.data_dir / DB, 2)
    wait_for(lambda: (scrub_of(primary, DB) or {}).get("ok") is False, 30, "the primary to report the damage")
    status = primary.http("/status")["scrub"]
    assert status["mismatches"] >= 1 and status["databases"][DB]["txid"] == position[0]
    assert "scrub: app.db does not match its position" in primary.log_text()
    conn = sqlite3.connect(replica.mountpoint / DB)  # the replica's repaired copy still reads
    try:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] >= 0
    finally:
        conn.close()
