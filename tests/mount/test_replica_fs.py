"""The replica side of the mount, for real: fs.apply through a replica-mode mount, the replica policy,
`.primary`/`.lag`/`-pos`, and fs.snapshot on a primary.

Transactions are real: a primary-mode harness mount (tests/replica_harness.py:
capture into a replication.store.Store, as the node does) runs the SQLite
workload and its log is then applied to replica-mode mounts. Readers are
separate processes running the workload's invariant check in every read
transaction, plus a check that they never see an older state than one they
already saw.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fs.formats.dbheader import parse_db_header
from fs.formats.shm import parse_checkpoint_info, parse_shm_header
from replication.checksum import database_checksum
from replication.log import TransactionLog, replay
from tests.conftest import integrity
from tests.replica_harness import ReplicaHarness

pytestmark = pytest.mark.fuse

WORKLOAD = str(Path(__file__).resolve().parent.parent / "sqlite_workload.py")
DB = "app.db"
#: Transactions of the primary's workload; the first SETUP_TXIDS create the schema.
TXNS = 800
SETUP_TXIDS = 10
#: Paced part of the apply: transactions per second (the lag target's rate).
PACED_RATE = 1000


@dataclass(frozen=True)
class PrimaryLog:
    """A primary's transaction log for `DB` and its final committed image."""

    mode: str
    path: Path
    last: int
    image: bytes


def workload(*args: str, timeout: float = 120) -> None:
    subprocess.run([sys.executable, WORKLOAD, *args], check=True, timeout=timeout,
                   stdout=subprocess.DEVNULL)


def read_log(path: Path) -> tuple[int, bytes]:
    txlog = TransactionLog.open(path, readonly=True)
    try:
        last = txlog.last
        assert last is not None
        return last.txid, replay(txlog)
    finally:
        txlog.close()


@pytest.fixture(scope="module")
def primary_logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PrimaryLog]:
    """One primary log per journal family (rollback: delete; wal), made once for the module."""
    root = tmp_path_factory.mktemp("primaries")
    logs = {}
    for mode in ("delete", "wal"):
        primary = ReplicaHarness(root / mode / "mnt", root / mode / "data", root / mode / "harness.log",
                                 primary=True, primary_host=None)
        primary.start()
        try:
            db = str(primary.mountpoint / DB)
            workload("setup", db, mode, "--seq")
            workload("writer", db, mode, "--txns", str(TXNS), "--seed", "1")
        finally:
            assert primary.stop() == 0
        path = primary.data_dir / ".pylitefs" / "logs" / f"{DB}.log"
        last, image = read_log(path)
        logs[mode] = PrimaryLog(mode, path, last, image)
    return logs


class Replicas:
    """Replica harnesses under one tmp dir, all stopped at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[ReplicaHarness] = []

    def start(self, name: str = "replica", **kwargs: object) -> ReplicaHarness:
        harness = ReplicaHarness(self.root / name / "mnt", self.root / name / "data",
                                 self.root / name / "harness.log", **kwargs)  # type: ignore[arg-type]
        self.started.append(harness)
        return harness.start()

    def cleanup(self) -> None:
        for harness in self.started:
            harness.stop()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    factory = Replicas(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


def start_readers(db: Path, mode: str, stop_file: Path, count: int) -> list[subprocess.Popen[str]]:
    """`count` reader processes, every other one with mmap_size, each announcing its first check."""
    procs = []
    for r in range(count):
        args = [sys.executable, WORKLOAD, "reader", str(db), mode, "--stop-file", str(stop_file), "--announce"]
        procs.append(subprocess.Popen(args + (["--mmap"] if r % 2 else []), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def wait_reading(procs: list[subprocess.Popen[str]], timeout: float = 30) -> None:
    """Wait until every reader printed its first successful check."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        assert proc.stdout is not None
        line = ""
        while not line:
            assert time.monotonic() < deadline, "reader did not start reading in time"
            assert proc.poll() is None, f"reader exited early: {proc.communicate()}"
            line = proc.stdout.readline()  # the reader flushes this line itself
        assert json.loads(line) == {"reading": True}


def finish_readers(procs: list[subprocess.Popen[str]], stop_file: Path, timeout: float = 60) -> list[dict]:
    stop_file.touch()
    reports = []
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, f"reader failed ({proc.returncode}):\n{err}\n{out[-2000:]}"
            reports.append(json.loads(out.splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return reports


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return f"p50 {pick(0.5):.0f} p90 {pick(0.9):.0f} p99 {pick(0.99):.0f} max {ordered[-1]:.0f} µs"


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_readers_never_see_torn_or_older_states_while_applying(
    primary_logs: dict[str, PrimaryLog], replicas: Replicas, mode: str, tmp_path: Path,
    record_property: object,
) -> None:
    """DESIGN §5/§8: readers (with and without mmap) check the invariant in every read transaction."""
    primary = primary_logs[mode]
    replica = replicas.start()
    db = replica.mountpoint / DB
    replica.apply(primary.path, 1, SETUP_TXIDS)
    stop_file = tmp_path / "stop"
    readers = start_readers(db, mode, stop_file, 2)
    try:
        wait_reading(readers)
        middle = (SETUP_TXIDS + primary.last) // 2
        fast = replica.apply(primary.path, SETUP_TXIDS + 1, middle, batches=[1, 1, 3, 1, 2, 1, 5])
        paced = replica.apply(primary.path, middle + 1, primary.last, rate=PACED_RATE)
        if mode == "wal":  # while readers keep the wal-index alive: the applier's last header
            shm = (replica.mountpoint / f"{DB}-shm").read_bytes()
            header = parse_shm_header(shm)
            assert header.mx_frame == 0
            assert header.n_page == len(primary.image) // parse_db_header(primary.image).page_size
            assert parse_checkpoint_info(shm).n_backfill == 0
    finally:
        reports = finish_readers(readers, stop_file)
    counts = replica.request({"cmd": "counts"})
    record_property("apply_us", percentiles(fast["apply_us"] + paced["apply_us"]))  # type: ignore[operator]
    record_property("lag_us_at_1000tps", percentiles(paced["lag_us"]))  # type: ignore[operator]
    print(f"\n{mode}: apply {percentiles(fast['apply_us'] + paced['apply_us'])}; "
          f"lag at {PACED_RATE}/s {percentiles(paced['lag_us'])}; requests {counts}; readers {reports}")

    final_seq = TXNS  # every writer transaction increments seq once
    assert all(r["checks"] > 0 for r in reports)
    assert all(r["seq"] == final_seq for r in reports), reports
    assert db.read_bytes() == primary.image
    assert integrity(db) == "ok"
    if mode == "wal":
        assert (replica.mountpoint / f"{DB}-wal").stat().st_size == 0
    else:
        assert not (replica.mountpoint / f"{DB}-wal").exists()
    assert replica.stop() == 0
    assert (replica.data_dir / DB).read_bytes() == primary.image


def readonly_connection(db: Path, mode: str) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=5, isolation_level=None)
    if mode in ("delete", "truncate", "persist"):
        assert conn.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
    else:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    if mode == "wal-mmap":
        conn.execute("PRAGMA mmap_size=268435456")
    return conn


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal", "wal-mmap"])
def test_application_writes_on_a_replica_fail_with_readonly(
    primary_logs: dict[str, PrimaryLog], replicas: Replicas, mode: str,
) -> None:
    primary = primary_logs["wal" if mode.startswith("wal") else "delete"]
    replica = replicas.start()
    replica.apply(primary.path, 1, primary.last, batches=[50])
    db = replica.mountpoint / DB
    before = db.read_bytes()
    conn = readonly_connection(db, mode)
    try:
        count = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        for statements in (["INSERT INTO items(writer, v, payload) VALUES(0, 1, x'00')"],
                           ["BEGIN IMMEDIATE", "UPDATE counter SET n=n+1"],
                           ["CREATE TABLE t(x)"]):
            with pytest.raises(sqlite3.OperationalError, match="readonly") as exc:
                for sql in statements:
                    conn.execute(sql)
            assert exc.value.sqlite_errorname.startswith("SQLITE_READONLY"), exc.value.sqlite_errorname
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == count
        # A second connection, while the first is still open, reads and fails the same way.
        other = readonly_connection(db, mode)
        try:
            assert other.execute("SELECT count(*) FROM items").fetchone()[0] == count
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                other.execute("DELETE FROM items")
        finally:
            other.close()
    finally:
        conn.close()
    assert db.read_bytes() == before == primary.image
    assert integrity(db) == "ok"
    assert not (replica.mountpoint / f"{DB}-journal").exists()
    if mode.startswith("wal"):
        assert (replica.mountpoint / f"{DB}-wal").stat().st_size == 0


def test_replica_file_policy_and_status_files(primary_logs: dict[str, PrimaryLog], replicas: Replicas) -> None:
    primary = primary_logs["wal"]
    replica = replicas.start(lag_ms=42)
    replica.apply(primary.path, 1, primary.last, batches=[100])
    mnt = replica.mountpoint
    db = mnt / DB

    def refused(code: int, fn: object, *args: object) -> None:
        with pytest.raises(OSError) as exc:
            fn(*args)  # type: ignore[operator]
        assert exc.value.errno == code, (fn, args, exc.value)

    refused(errno.EACCES, os.open, str(mnt / "new.db"), os.O_RDWR | os.O_CREAT, 0o644)
    refused(errno.EACCES, os.unlink, str(db))
    refused(errno.EACCES, os.rename, str(db), str(mnt / "other.db"))
    refused(errno.EACCES, os.open, str(mnt / f"{DB}-journal"), os.O_RDWR | os.O_CREAT, 0o644)
    refused(errno.EACCES, os.open, str(mnt / f"{DB}-wal"), os.O_RDWR)
    refused(errno.EACCES, os.unlink, str(mnt / f"{DB}-wal"))
    refused(errno.EACCES, os.truncate, str(mnt / f"{DB}-wal"), 0)
    os.close(os.open(mnt / f"{DB}-wal", os.O_RDONLY))
    fd = os.open(db, os.O_RDWR)  # SQLite always opens read-write: allowed
    try:
        refused(errno.EROFS, os.pwrite, fd, bytes(4096), 4096)
        refused(errno.EROFS, os.ftruncate, fd, 4096)
    finally:
        os.close(fd)
    refused(errno.EROFS, os.open, str(db), os.O_RDWR | os.O_TRUNC)
    refused(errno.EROFS, os.truncate, str(db), 0)
    assert db.read_bytes() == primary.image
    # -shm: readers create, write, truncate and delete it.
    shm = mnt / "scratch.db-shm"
    shm.write_bytes(b"x" * 100)
    os.truncate(shm, 10)
    shm.unlink()

    names = os.listdir(mnt)
    assert {".primary", ".lag", DB, f"{DB}-pos"} <= set(names)
    assert (mnt / ".primary").read_text() == "primary-host\n"
    assert (mnt / ".lag").read_text() == "42\n"
    txlog = TransactionLog.open(primary.path, readonly=True)
    try:
        last = txlog.last
    finally:
        txlog.close()
    assert last is not None
    assert (mnt / f"{DB}-pos").read_text() == f"{last.txid:016x}/{last.post_checksum:016x}\n"
    refused(errno.EACCES, os.open, str(mnt / ".lag"), os.O_WRONLY)
    refused(errno.EPERM, os.unlink, str(mnt / ".primary"))
    refused(errno.EPERM, os.open, str(mnt / ".other"), os.O_RDWR | os.O_CREAT, 0o644)

    replica.request({"cmd": "drop", "db": DB})
    assert not {DB, f"{DB}-wal", f"{DB}-shm", f"{DB}-pos"} & set(os.listdir(mnt))


def test_no_primary_file_without_a_primary_hostname(replicas: Replicas) -> None:
    replica = replicas.start(primary_host=None)
    assert not (replica.mountpoint / ".primary").exists()
    assert ".primary" not in os.listdir(replica.mountpoint)
    assert (replica.mountpoint / ".lag").read_text() == "7\n"


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_snapshots_under_load_match_the_log(replicas: Replicas, mode: str, tmp_path: Path) -> None:
    """fs.snapshot on a primary: every snapshot equals the log replayed up to the position it returns."""
    primary = replicas.start("primary", primary=True, primary_host=None)
    db = primary.mountpoint / DB
    workload("setup", str(db), mode, "--seq")
    writers = [subprocess.Popen([sys.executable, WORKLOAD, "writer", str(db), mode, "--txns", "150",
                                 "--seed", str(w + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True) for w in range(2)]
    snapshots: list[tuple[Path, tuple[int, int]]] = []
    try:
        while any(w.poll() is None for w in writers) or len(snapshots) < 3:
            out = tmp_path / f"snap-{len(snapshots)}"
            reply = primary.request({"cmd": "snapshot", "db": DB, "out": str(out)})
            snapshots.append((out, tuple(reply["position"])))  # type: ignore[arg-type]
        for w in writers:
            _, err = w.communicate(timeout=60)
            assert w.returncode == 0, err
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert primary.stop() == 0
    txlog = TransactionLog.open(primary.data_dir / ".pylitefs" / "logs" / f"{DB}.log", readonly=True)
    try:
        seen = set()
        for path, (txid, checksum) in snapshots:
            image = path.read_bytes()
            assert image == replay(txlog, txid), f"snapshot at TXID {txid} differs from the log"
            assert database_checksum(image, parse_db_header(image).page_size) == checksum
            seen.add(txid)
    finally:
        txlog.close()
    assert len(seen) > 1, "the snapshots never overlapped the writers"
