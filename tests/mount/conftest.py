"""Fixtures of the real-mount tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.replica_harness import ReplicaHarness


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[ReplicaHarness]:
    """A primary-mode harness mount (captures into a store), always stopped and unmounted."""
    harness = ReplicaHarness(tmp_path / "mnt", tmp_path / "data", tmp_path / "harness.log",
                             primary=True, primary_host=None)
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()
