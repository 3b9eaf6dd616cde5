"""The mount as a directory of SQLite databases: what works, what is refused."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MountFactory, integrity
from pylitefs.process import MountProcess

pytestmark = pytest.mark.fuse


def make_db(path: Path, rows: int = 100, mode: str = "delete") -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={mode}")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t(v) VALUES(?)", [(f"row {i}" * 10,) for i in range(rows)])
    conn.execute("COMMIT")
    conn.close()


def count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        conn.close()


def test_create_read_write_delete_rename(mounted: MountProcess) -> None:
    mnt = mounted.mountpoint
    make_db(mnt / "a.db", rows=50)
    assert count(mnt / "a.db") == 50
    assert sorted(os.listdir(mnt)) == [".lag", "a.db", "a.db-pos"]
    os.rename(mnt / "a.db", mnt / "b.db")
    assert sorted(os.listdir(mnt)) == [".lag", "b.db", "b.db-pos"]
    assert count(mnt / "b.db") == 50
    assert integrity(mnt / "b.db") == "ok"
    assert (mounted.data_dir / "b.db").exists() and not (mounted.data_dir / "a.db").exists()
    os.unlink(mnt / "b.db")
    assert os.listdir(mnt) == [".lag"]
    assert not (mounted.data_dir / "b.db").exists()


def test_sqlite3_cli_through_the_mount(mounted: MountProcess) -> None:
    db = mounted.mountpoint / "cli.db"
    script = "PRAGMA journal_mode=wal; CREATE TABLE t(x); INSERT INTO t VALUES (1),(2),(3); SELECT sum(x) FROM t;"
    out = subprocess.run(["sqlite3", str(db), script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["wal", "6"]
    out = subprocess.run(["sqlite3", str(db), "PRAGMA integrity_check; SELECT count(*) FROM t;"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ok", "3"]


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal"])
def test_database_is_byte_identical_to_data_dir(mounted: MountProcess, mode: str) -> None:
    make_db(mounted.mountpoint / "same.db", rows=500, mode=mode)
    conn = sqlite3.connect(mounted.mountpoint / "same.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    through_mount = (mounted.mountpoint / "same.db").read_bytes()
    conn.close()
    assert through_mount == (mounted.data_dir / "same.db").read_bytes()
    assert through_mount.startswith(b"SQLite format 3\x00")


def test_durable_across_unmount_and_remount(mounts: MountFactory) -> None:
    node = mounts.start()
    make_db(node.mountpoint / "keep.db", rows=1234, mode="wal")
    assert node.stop() == 0
    assert not os.path.ismount(node.mountpoint)
    node.start()
    assert count(node.mountpoint / "keep.db") == 1234
    assert integrity(node.mountpoint / "keep.db") == "ok"


def expect_errno(code: int, fn, *args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, info.value


def test_refused_objects_get_clear_errnos(mounted: MountProcess) -> None:
    mnt = mounted.mountpoint
    make_db(mnt / "x.db", rows=1)
    expect_errno(errno.EPERM, os.mkdir, mnt / "dir")
    expect_errno(errno.EPERM, os.symlink, "x.db", mnt / "link")
    expect_errno(errno.EPERM, os.link, mnt / "x.db", mnt / "hard")
    expect_errno(errno.EPERM, os.open, mnt / ".hidden", os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.EACCES, os.open, mnt / "x.db-pos", os.O_CREAT | os.O_WRONLY)  # read-only
    expect_errno(errno.EPERM, os.open, mnt / "none.db-pos", os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.EPERM, os.unlink, mnt / "x.db-pos")
    expect_errno(errno.EPERM, os.open, mnt / "x.db-mj0A1B2C3D", os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.EPERM, os.rename, mnt / "x.db", mnt / "x.db-wal")
    fd = os.open(mnt / "notes.txt", os.O_CREAT | os.O_WRONLY)
    try:
        expect_errno(errno.EINVAL, os.write, fd, b"hello, not a database\n")
    finally:
        os.close(fd)
    expect_errno(errno.ENOENT, os.stat, mnt / "missing.db")
    expect_errno(errno.EOPNOTSUPP, os.getxattr, mnt / "x.db", "user.a")
    expect_errno(errno.EOPNOTSUPP, os.setxattr, mnt / "x.db", "user.a", b"1")
    assert integrity(mnt / "x.db") == "ok"


def test_negative_lookup_then_create(mounted: MountProcess) -> None:
    """A cached negative entry must not hide a file created afterwards."""
    db = mounted.mountpoint / "late.db"
    for _ in range(3):
        assert not db.exists()
    make_db(db, rows=3)
    assert db.exists() and count(db) == 3


def test_unlinked_file_stays_readable_while_open(mounted: MountProcess) -> None:
    db = mounted.mountpoint / "gone.db"
    make_db(db, rows=10)
    with open(db, "rb") as f:
        os.unlink(db)
        assert f.read(16) == b"SQLite format 3\x00"
        assert os.fstat(f.fileno()).st_size > 0
    make_db(db, rows=2)
    assert count(db) == 2


def test_open_creating_a_file_unlinked_since_its_lookup_creates_it(mounted: MountProcess) -> None:
    """The race of an O_CREAT open with another process's unlink (SQLite's last connection removing
    `-shm` while the node opens it), made deterministic: the kernel still has the name cached when
    the file goes. As on a local file system, the open creates the file; a plain open says ENOENT."""
    make_db(mounted.mountpoint / "race.db", rows=1, mode="wal")
    shm = mounted.mountpoint / "race.db-shm"
    for flags, expect_created in ((os.O_RDWR | os.O_CREAT, True), (os.O_RDWR, False)):
        os.close(os.open(shm, os.O_RDWR | os.O_CREAT, 0o644))
        assert shm.exists()  # the kernel now caches the name
        os.unlink(mounted.data_dir / "race.db-shm")  # gone behind the kernel's back
        if expect_created:
            os.close(os.open(shm, flags, 0o644))
            assert (mounted.data_dir / "race.db-shm").exists()
        else:
            with pytest.raises(FileNotFoundError):
                os.open(shm, flags)


def test_shm_mmap_and_mmap_size(mounted: MountProcess) -> None:
    db = mounted.mountpoint / "mm.db"
    make_db(db, rows=200, mode="wal")
    conns = [sqlite3.connect(db, isolation_level=None) for _ in range(3)]
    for conn in conns:
        conn.execute("PRAGMA mmap_size=67108864")
    conns[0].execute("INSERT INTO t(v) VALUES('via conn 0')")
    assert all(c.execute("SELECT count(*) FROM t").fetchone()[0] == 201 for c in conns)
    assert (mounted.mountpoint / "mm.db-shm").exists()
    for conn in conns:
        conn.close()
