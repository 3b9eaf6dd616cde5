"""fs.access: the daemon's own threads, the lease's fence, what a replica refuses to applications."""

from __future__ import annotations

import errno
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fs.access import Access, Op, replica_refusal
from fs.errors import ReadOnlyDatabase
from fs.names import Kind
from fs.operations import Operations


def test_thread_registration_is_per_thread_and_nestable() -> None:
    access = Access(primary=False)
    me = threading.get_native_id()
    assert not access.privileged(me)
    with access.thread():
        assert access.privileged(me)
        with access.thread():
            assert access.privileged(me)
        assert access.privileged(me)
        seen: list[bool] = []
        other = threading.Thread(target=lambda: seen.append(access.privileged(threading.get_native_id())))
        other.start()
        other.join()
        assert seen == [False]
    assert not access.privileged(me)


def test_registration_ends_on_error() -> None:
    access = Access()
    with pytest.raises(RuntimeError), access.thread():
        raise RuntimeError
    assert not access.privileged(threading.get_native_id())


def test_primary_is_settable() -> None:
    access = Access(primary=True)
    access.primary = False
    assert access.primary is False


@pytest.mark.parametrize("op", list(Op))
def test_shm_is_never_refused(op: Op) -> None:
    assert replica_refusal(op, Kind.SHM) is None


@pytest.mark.parametrize(("op", "code"), [
    (Op.OPEN_WRITE, None),
    (Op.WRITE, errno.EROFS),
    (Op.TRUNCATE, errno.EROFS),
    (Op.CHANGE, errno.EROFS),
    (Op.CREATE, errno.EACCES),
    (Op.REMOVE, errno.EACCES),
])
def test_database(op: Op, code: int | None) -> None:
    refusal = replica_refusal(op, Kind.DATABASE)
    assert (refusal.errno if refusal is not None else None) == code


@pytest.mark.parametrize("kind", [Kind.JOURNAL, Kind.WAL])
@pytest.mark.parametrize("op", list(Op))
def test_journal_and_wal_are_eacces(kind: Kind, op: Op) -> None:
    refusal = replica_refusal(op, kind)
    assert refusal is not None and refusal.errno == errno.EACCES


# ------------------------------------------------------------- lease fence


def test_no_deadline_by_default() -> None:
    access = Access()
    assert access.writable_until == math.inf
    assert access.writable()


def test_writable_until_the_deadline_while_primary() -> None:
    access = Access(primary=True)
    access.writable_until = time.monotonic() + 3600
    assert access.writable()
    access.writable_until = time.monotonic()  # the instant itself is past
    assert not access.writable()
    assert access.primary  # the node has not noticed yet: the fence alone refuses
    access.writable_until = math.inf
    access.primary = False
    assert not access.writable()


class _Sink:
    """A CommitSink that records nothing: Operations only needs one to build its Capture."""

    def commit(self, db: str, page_size: int, commit_size: int, pages: object) -> None: ...
    def drop(self, db: str) -> None: ...
    def sync(self, db: str) -> None: ...
    def rename(self, old: str, new: str) -> None: ...
    def position(self, db: str) -> tuple[int, int] | None:
        return None


@pytest.fixture
def ops_access(tmp_path: Path) -> Iterator[tuple[Operations, Access]]:
    access = Access(primary=True)
    ops = Operations(str(tmp_path), _Sink(), access=access)  # type: ignore[arg-type]
    try:
        yield ops, access
    finally:
        ops.close()


def test_one_decision_per_request(ops_access: tuple[Operations, Access]) -> None:
    """Writable: allowed and captured; past the deadline: the replica's refusal; privileged: uncaptured."""
    ops, access = ops_access
    capture = ops._write_access(Op.WRITE, Kind.DATABASE, privileged=False)
    assert capture is not None
    assert ops._write_access((Op.OPEN_WRITE, Op.TRUNCATE), Kind.WAL, privileged=False) is capture
    assert ops._write_access(Op.WRITE, Kind.DATABASE, privileged=True) is None
    access.writable_until = time.monotonic() - 1
    with pytest.raises(ReadOnlyDatabase):
        ops._write_access(Op.WRITE, Kind.DATABASE, privileged=False)
    with pytest.raises(ReadOnlyDatabase):  # the first refused op of a request decides
        ops._write_access((Op.OPEN_WRITE, Op.TRUNCATE), Kind.DATABASE, privileged=False)
    assert ops._write_access(Op.OPEN_WRITE, Kind.DATABASE, privileged=False) is None  # allowed, uncaptured
    assert ops._write_access(Op.WRITE, Kind.SHM, privileged=False) is None
    assert ops._write_access(Op.WRITE, Kind.DATABASE, privileged=True) is None
    access.writable_until = math.inf
    assert ops._write_access(Op.WRITE, Kind.DATABASE, privileged=False) is capture


def test_reset_capture_starts_afresh(ops_access: tuple[Operations, Access]) -> None:
    ops, _ = ops_access
    before = ops._write_access(Op.WRITE, Kind.WAL, privileged=False)
    ops.reset_capture()
    after = ops._write_access(Op.WRITE, Kind.WAL, privileged=False)
    assert after is not None and after is not before
