"""Shared fixtures: real pylitefs mounts in child processes, always cleaned up."""

from __future__ import annotations

import os
import shutil
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pylitefs.cluster import Cluster
from pylitefs.etcdserver import EtcdServer
from pylitefs.process import MountProcess

#: Set by `make test` (and so by CI): missing FUSE fails the run instead of skipping.
REQUIRE_FUSE = os.environ.get("PYLITEFS_REQUIRE_FUSE") == "1"


def skip_unless_required(reason: str) -> None:
    """Skip a test whose tool is missing; under `make test` (REQUIRE_FUSE) fail instead: make install provides it."""
    if REQUIRE_FUSE:
        pytest.fail(f"{reason} (make install installs it; PYLITEFS_REQUIRE_FUSE=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


def fuse_missing() -> str | None:
    """Why real-mount tests cannot run here, or None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"cannot open /dev/fuse: {exc.strerror}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = fuse_missing()
    if reason is None or REQUIRE_FUSE:
        return  # when required, pytest_runtest_setup fails each FUSE test instead
    for item in items:
        if "fuse" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = fuse_missing()
    if reason is not None and REQUIRE_FUSE and "fuse" in item.keywords:
        pytest.fail(f"FUSE is required (PYLITEFS_REQUIRE_FUSE=1) but {reason}", pytrace=False)


class MountFactory:
    """Creates MountProcess objects under one tmp dir and stops them all at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[MountProcess] = []

    def new(self, name: str = "node", *, mountpoint: Path | None = None, data_dir: Path | None = None,
            extra_args: list[str] | None = None) -> MountProcess:
        """A MountProcess, not yet started."""
        node = MountProcess(
            mountpoint=mountpoint or self.root / name / "mnt",
            data_dir=data_dir or self.root / name / "data",
            log_path=self.root / name / "pylitefs.log",
            extra_args=extra_args or [],
        )
        self.started.append(node)
        return node

    def start(self, name: str = "node", **kwargs: object) -> MountProcess:
        """A started MountProcess, its mount ready."""
        return self.new(name, **kwargs).start()  # type: ignore[arg-type]

    def cleanup(self) -> None:
        for node in self.started:
            node.stop()


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[MountFactory]:
    """Factory for real mounts; every one is unmounted and stopped at teardown."""
    factory = MountFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def mounted(mounts: MountFactory) -> MountProcess:
    """One running mount."""
    return mounts.start()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster factory; every node is stopped and unmounted at teardown, also on failure."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A started single-member etcd on free 127.0.0.1 ports; stopped at teardown even when the test fails."""
    server = EtcdServer(tmp_path / "etcd-data", tmp_path / "etcd.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def integrity(db: Path) -> str:
    """`PRAGMA integrity_check` of a database, read through whatever path is given."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def with_record_version(records: bytes | bytearray, version: int) -> bytes:
    """`records` whose first log record says record version `version`, its header CRC still valid."""
    out = bytearray(records)
    out[4] = version
    out[16:20] = zlib.crc32(bytes(out[:16])).to_bytes(4, "big")
    return bytes(out)
