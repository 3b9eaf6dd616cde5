"""The README's main-job command (`make demo`) keeps working."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pylitefs.process import is_mounted

pytestmark = pytest.mark.fuse


def test_demo_runs_a_failover_and_leaves_nothing_running(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pylitefs.demo", "--dir", str(tmp_path), "--writes", "5"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert re.search(r"5 POSTs sent to node\d's proxy were written by node\d \(the primary\)", text), text
    # step 4 (before the failover) and step 7 (after it): every node holds the same rows at the same position
    before = re.findall(r"node\d: (?:primary|replica) rows 5, position (TXID \d+ checksum \w+)", text)
    after = re.findall(r"node\d: (?:primary|replica) rows 6, position (TXID \d+ checksum \w+)", text)
    assert len(before) == 3 and len(set(before)) == 1, text
    assert len(after) == 3 and len(set(after)) == 1, text
    assert re.search(r"node\d is primary \(term \d+\); the first write", text), text
    assert "8. stopped: apps, nodes (exit codes 0, 0, 0), etcd; unmounted: yes" in text
    for name in ("node1", "node2", "node3"):
        assert not is_mounted(str(tmp_path / name / "mnt"))
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert not leftovers, f"processes left running: {leftovers}"
