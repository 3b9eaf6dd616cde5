"""Fixtures for the election tests: a real etcd per test, always stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pylitefs.etcdserver import EtcdServer


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A started single-member etcd on free 127.0.0.1 ports; stopped at teardown even when the test fails."""
    server = EtcdServer(tmp_path / "etcd-data", tmp_path / "etcd.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
