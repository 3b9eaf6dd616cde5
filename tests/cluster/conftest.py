"""Fixtures for tests that run a cluster of real nodes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pylitefs.cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster factory; every node is stopped and unmounted at teardown, also on failure."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()
