"""fs.access: which threads are the daemon's own, and what a replica refuses to applications."""

from __future__ import annotations

import errno
import threading

import pytest

from fs.access import Access, Op, replica_refusal
from fs.names import Kind


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
