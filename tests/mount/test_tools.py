"""`pylitefs log` and `pylitefs export` against a running node's logs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pylitefs.process import MountProcess
from tests.conftest import integrity

pytestmark = pytest.mark.fuse


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pylitefs", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_log_and_export_while_running(mounted: MountProcess, tmp_path: Path, mode: str) -> None:
    db = mounted.mountpoint / "t.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={mode}")
    conn.execute("CREATE TABLE t(x)")
    counts = {}
    for i in range(5):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
        txid = int((mounted.mountpoint / "t.db-pos").read_text()[:16], 16)
        counts[txid] = i + 1
    conn.close()

    out = cli("log", "--data.dir", str(mounted.data_dir), "--name", "t.db")
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()[1:]
    assert [int(r.split()[0]) for r in rows] == list(range(1, max(counts) + 1))

    for txid, expected in counts.items():
        target = tmp_path / f"t-{txid}.db"
        out = cli("export", "--data.dir", str(mounted.data_dir), "--name", "t.db", "--txid", str(txid), str(target))
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"exported t.db at TXID {txid} ")
        assert integrity(target) == "ok"
        assert sqlite3.connect(target).execute("SELECT count(*) FROM t").fetchone()[0] == expected

    out = cli("export", "--data.dir", str(mounted.data_dir), "--name", "t.db", "--txid", "999", str(tmp_path / "x"))
    assert out.returncode == 1 and "no TXID 999" in out.stderr
    out = cli("log", "--data.dir", str(mounted.data_dir), "--name", "missing.db")
    assert out.returncode == 1
    assert out.stderr.strip() == f"pylitefs: no transaction log for database 'missing.db' in {mounted.data_dir}"
