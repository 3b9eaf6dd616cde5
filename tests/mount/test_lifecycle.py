"""Starting and stopping the mount: one clear line for each refusal, clean exits."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pylitefs.process import MountProcess, is_mounted
from tests.conftest import MountFactory, integrity, with_record_version
from tests.sqlite_workload import last_acknowledged

pytestmark = pytest.mark.fuse

WORKLOAD = str(Path(__file__).resolve().parent.parent / "sqlite_workload.py")


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pylitefs", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_second_daemon_on_same_mountpoint_is_refused(mounts: MountFactory, tmp_path: Path) -> None:
    first = mounts.start("a")
    out = run_cli("mount", "--fuse.dir", str(first.mountpoint), "--data.dir", str(tmp_path / "other-data"))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"pylitefs: mount point {first.mountpoint} is busy: something is already mounted there")
    assert first.alive() and is_mounted(str(first.mountpoint))


def test_second_daemon_on_same_data_dir_is_refused(mounts: MountFactory, tmp_path: Path) -> None:
    first = mounts.start("a")
    (tmp_path / "mnt2").mkdir()
    out = run_cli("mount", "--fuse.dir", str(tmp_path / "mnt2"), "--data.dir", str(first.data_dir))
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pylitefs: data dir {first.data_dir} is in use by another pylitefs (pid ")
    assert not is_mounted(str(tmp_path / "mnt2"))


def test_missing_mountpoint(tmp_path: Path) -> None:
    out = run_cli("mount", "--fuse.dir", str(tmp_path / "nope"), "--data.dir", str(tmp_path / "data"))
    assert out.returncode == 1
    assert out.stderr.strip() == f"pylitefs: mount point {tmp_path / 'nope'} does not exist (create it first)"


def test_unwritable_data_dir(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "file").write_text("not a directory")
    out = run_cli("mount", "--fuse.dir", str(tmp_path / "mnt"), "--data.dir", str(tmp_path / "file" / "data"))
    assert out.returncode == 1
    assert out.stderr.strip() == f"pylitefs: data dir {tmp_path / 'file' / 'data'} is not writable: Not a directory"


def test_missing_fuse_device(tmp_path: Path) -> None:
    """In a private mount namespace with an empty /dev, the daemon says what is missing."""
    (tmp_path / "mnt").mkdir()
    script = (f"mount -t tmpfs none /dev && exec {sys.executable} -m pylitefs mount "
              f"--fuse.dir {tmp_path / 'mnt'} --data.dir {tmp_path / 'data'}")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=30, cwd=Path(__file__).parents[2])
    assert out.returncode == 1, out
    assert out.stderr.strip().splitlines()[-1].startswith("pylitefs: /dev/fuse is missing")


def test_a_log_of_an_earlier_record_version_is_refused_untouched(mounts: MountFactory) -> None:
    node = mounts.start("old")
    with sqlite3.connect(node.mountpoint / "a.db") as con:
        con.execute("CREATE TABLE t(x)")
    node.stop()
    log_path = node.data_dir / ".pylitefs" / "logs" / "a.db.log"
    old = with_record_version(log_path.read_bytes(), 1)  # record version 1: BLAKE2b checksums
    log_path.write_bytes(old)
    database = (node.data_dir / "a.db").read_bytes()
    out = run_cli("mount", "--fuse.dir", str(node.mountpoint), "--data.dir", str(node.data_dir),
                  "--http.addr", "127.0.0.1:0")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"pylitefs: {log_path}: record version 1 (this pylitefs reads version 2 only) (record at "
        "offset 0): written by another version of pylitefs; not opened and nothing changed (use "
        "that version to export its databases, or move the data dir away to start afresh)")
    assert log_path.read_bytes() == old and (node.data_dir / "a.db").read_bytes() == database
    assert not is_mounted(str(node.mountpoint))


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "litefs.yml"
    cfg.write_text("fuse:\n  dir: /x\n  colour: blue\n")
    out = run_cli("mount", "--config", str(cfg))
    assert out.returncode == 2
    assert out.stderr.strip() == f"pylitefs: config error: {cfg}: unknown key 'fuse.colour'"
    cfg.write_text("fuse:\n  dir: ${PYLITEFS_TEST_DIR}\ndata:\n  dir: $PYLITEFS_TEST_DIR\n")
    out = subprocess.run([sys.executable, "-m", "pylitefs", "mount", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYLITEFS_TEST_DIR": str(tmp_path / "same")})
    assert out.returncode == 2
    assert "fuse.dir and data.dir are the same directory" in out.stderr


def test_config_file_and_flag_override(mounts: MountFactory, tmp_path: Path) -> None:
    cfg = tmp_path / "litefs.yml"
    cfg.write_text("fuse:\n  dir: /nonexistent-from-file\ndata:\n  dir: ${DATA}\n")
    class ConfiguredMount(MountProcess):
        def command(self) -> list[str]:  # data.dir comes from the file only
            return [sys.executable, "-m", "pylitefs", "mount", "--config", str(cfg),
                    "--fuse.dir", str(self.mountpoint)]

    node = ConfiguredMount(mountpoint=tmp_path / "mnt", data_dir=tmp_path / "data-from-env",
                           log_path=tmp_path / "cfg.log",
                           env={**os.environ, "DATA": str(tmp_path / "data-from-env")})
    mounts.started.append(node)
    node.start()
    sqlite3.connect(node.mountpoint / "c.db").execute("CREATE TABLE t(x)").connection.close()
    assert (tmp_path / "data-from-env" / "c.db").exists()


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_sigterm_while_writers_are_busy(mounts: MountFactory, mode: str) -> None:
    """SIGTERM under load: clean exit, and no acknowledged transaction lost."""
    node = mounts.start()
    db = node.mountpoint / "busy.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={mode}")
    conn.close()
    writers = [subprocess.Popen([sys.executable, WORKLOAD, "appender", str(db), mode, "--seed", str(w)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(3)]
    seen = []
    try:
        assert writers[0].stdout is not None
        for _ in range(100):  # wait for 100 acknowledged commits of the first writer
            seen.append(writers[0].stdout.readline())
            assert seen[-1], "writer died before 100 commits"
        node.signal(signal.SIGTERM)
        assert node.wait(30) == 0, node.log_text()
        assert not is_mounted(str(node.mountpoint))
        assert "received SIGTERM: stopping" in node.log_text()
    finally:
        for w in writers:
            w.kill()
    outputs = [proc.communicate()[0] for proc in writers]
    outputs[0] = "".join(seen) + outputs[0]
    acked = {w: last_acknowledged(out) for w, out in enumerate(outputs)}
    assert acked[0] >= 100
    node.start()
    assert integrity(db) == "ok"
    conn = sqlite3.connect(db)
    for w, seq in acked.items():
        have = conn.execute("SELECT count(*) FROM acked WHERE writer=? AND seq<=?", (w, seq)).fetchone()[0]
        assert have == seq, f"writer {w}: {seq} acknowledged, {have} in the database"
    conn.close()


def test_restart_after_kill9_clears_stale_mount(mounts: MountFactory) -> None:
    node = mounts.start()
    conn = sqlite3.connect(node.mountpoint / "k.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (42)")
    conn.close()
    node.signal(signal.SIGKILL)
    assert node.wait(10) == -signal.SIGKILL
    with pytest.raises(OSError) as info:
        os.listdir(node.mountpoint)
    assert info.value.errno == errno.ENOTCONN  # the stale mount is still there
    assert is_mounted(str(node.mountpoint))
    node.start()
    assert "clearing stale mount" in node.log_text()
    conn = sqlite3.connect(node.mountpoint / "k.db")
    assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
