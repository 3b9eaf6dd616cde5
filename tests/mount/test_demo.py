"""The README's main-job command (`make demo`) keeps working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pylitefs.process import is_mounted

pytestmark = pytest.mark.fuse


def test_demo_runs_and_leaves_nothing_mounted(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pylitefs.demo", "--dir", str(tmp_path), "--transactions", "50"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("rows per writer alice=50;bob=50; integrity_check: ok") == 6, out.stdout
    assert "an INSERT there is refused: attempt to write a readonly database" in out.stdout
    assert "6. unmounted: yes (daemon exit codes 0, 0, 0)" in out.stdout
    for name in ("primary", "replica1", "replica2"):
        assert not is_mounted(str(tmp_path / name / "mnt"))
