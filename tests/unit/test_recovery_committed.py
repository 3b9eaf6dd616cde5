"""fs.recovery.committed_content: the committed image without touching the files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from fs.recovery import committed_content

# Spills pages into the database file with a hot journal, then dies mid-transaction.
CRASH = """
import os, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA cache_size=1")
con.execute("BEGIN")
con.execute("UPDATE t SET x = randomblob(3000)")
con.execute("INSERT INTO t SELECT randomblob(3000) FROM t")
os._exit(0)
"""


def test_hot_journal_is_undone_in_memory_only(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("CREATE TABLE t(x)")
    for _ in range(20):
        con.execute("INSERT INTO t VALUES (randomblob(3000))")
    con.close()
    committed = db.read_bytes()
    subprocess.run([sys.executable, "-c", CRASH, str(db)], check=True)
    crashed = db.read_bytes()
    journal = Path(f"{db}-journal").read_bytes()
    assert crashed != committed  # uncommitted pages reached the file

    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert committed_content(dir_fd, "c.db", undo_hot_journal=True).image == committed
        assert committed_content(dir_fd, "c.db").image == crashed
    finally:
        os.close(dir_fd)
    assert db.read_bytes() == crashed and Path(f"{db}-journal").read_bytes() == journal
