"""kill -9 of the daemon under a concurrent write load, many rounds.

After every restart: the database passes `integrity_check`, its checksum is the
log's last position (the node logged no mismatch), and every transaction SQLite
acknowledged (`synchronous=FULL`) is both in the database and in the log.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replication.checksum import database_checksum
from replication.log import TransactionLog
from fs.formats.image import apply_pages
from tests.conftest import MountFactory, integrity
from tests.sqlite_workload import last_acknowledged

pytestmark = pytest.mark.fuse

WORKLOAD = str(Path(__file__).resolve().parent.parent / "sqlite_workload.py")
ROUNDS = 50
MODES = ("delete", "truncate", "persist", "wal")
APPENDERS = 2


def wait_for_acks(procs: list[subprocess.Popen[str]], minimum: int, timeout: float) -> None:
    """Wait until the first appender printed `minimum` acknowledgements (or any exited)."""
    deadline = time.monotonic() + timeout
    seen = 0
    assert procs[0].stdout is not None
    while seen < minimum:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {seen} commits within {timeout}s")
        line = procs[0].stdout.readline()
        if not line:
            raise AssertionError(f"appender exited early: {procs[0].stderr.read() if procs[0].stderr else ''}")
        seen += 1


def test_kill9_under_write_load(mounts: MountFactory, tmp_path: Path) -> None:
    rng = random.Random(20261120)
    node = mounts.new()
    acked: dict[int, int] = {}
    for rnd in range(ROUNDS):
        mode = MODES[rnd % len(MODES)]
        node.start()
        db = node.mountpoint / "crash.db"
        log_offset = len(node.log_text())
        if rnd == 0 or mode == "wal" or MODES[(rnd - 1) % len(MODES)] == "wal":
            conn = sqlite3.connect(db, isolation_level=None, timeout=30)
            conn.execute(f"PRAGMA journal_mode={mode}")
            conn.close()
        procs = [subprocess.Popen([sys.executable, WORKLOAD, "appender", str(db), mode, "--seed", str(w)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for w in range(APPENDERS)]
        try:
            wait_for_acks(procs, rng.randint(1, 40), 60)
            node.signal(signal.SIGKILL)
            assert node.wait(10) == -signal.SIGKILL
        finally:
            for proc in procs:
                proc.kill()
        for w, proc in enumerate(procs):
            out = proc.communicate()[0]
            acked[w] = max(acked.get(w, 0), last_acknowledged(out))
        node.stop()  # clear the dead mount's processes; the next start clears the stale mount

        node.start()
        errors = [line for line in node.log_text(log_offset).splitlines() if " ERROR " in line]
        assert not errors, f"round {rnd} ({mode}): {errors}"
        assert integrity(db) == "ok", f"round {rnd} ({mode})"
        conn = sqlite3.connect(db)
        for w, seq in acked.items():
            have = conn.execute("SELECT count(*) FROM acked WHERE writer=? AND seq<=?", (w, seq)).fetchone()[0]
            assert have == seq, f"round {rnd} ({mode}): writer {w} acknowledged {seq}, database has {have}"
        conn.close()
        position = (node.mountpoint / "crash.db-pos").read_text()
        assert node.stop() == 0

        txlog = TransactionLog.open(str(node.data_dir / ".pylitefs" / "logs" / "crash.db.log"))
        try:
            image = bytearray()
            for txn in txlog:
                apply_pages(image, txn.page_size, txn.commit_size, txn.pages)
            last = txlog.last
        finally:
            txlog.close()
        assert last is not None and position == f"{last.txid:016x}/{last.post_checksum:016x}\n"
        assert database_checksum(bytes(image), last.page_size) == last.post_checksum
        replayed = tmp_path / "replayed.db"
        replayed.write_bytes(image)
        conn = sqlite3.connect(replayed)
        for w, seq in acked.items():
            have = conn.execute("SELECT count(*) FROM acked WHERE writer=? AND seq<=?", (w, seq)).fetchone()[0]
            assert have == seq, f"round {rnd} ({mode}): acknowledged row missing from the log"
        conn.close()
