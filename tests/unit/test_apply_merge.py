"""fs.apply.merge: folding consecutive transactions equals applying them one by one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fs.apply import merge
from fs.formats.image import apply_pages
from replication.txn import Transaction

PAGE = 512


def txn(txid: int, commit_size: int, pages: dict[int, int], page_size: int = PAGE) -> Transaction:
    return Transaction(db="a.db", txid=txid, page_size=page_size, commit_size=commit_size,
                       pages={p: bytes([fill]) * page_size for p, fill in pages.items()},
                       timestamp_ns=0, node_id="n", pre_checksum=0, post_checksum=0)


def folded(image: bytes, txns: list[Transaction]) -> bytes:
    """What the applier does with the merge: shrink, write, set the size."""
    change = merge(txns)
    out = bytearray(image[: change.shrink_to * change.page_size])
    apply_pages(out, change.page_size, change.commit_size, change.pages)
    return bytes(out)


def sequential(image: bytes, txns: list[Transaction]) -> bytes:
    out = bytearray(image)
    for t in txns:
        apply_pages(out, t.page_size, t.commit_size, t.pages)
    return bytes(out)


def test_later_pages_win() -> None:
    change = merge([txn(1, 3, {1: 1, 2: 1}), txn(2, 3, {2: 2, 3: 2})])
    assert change.commit_size == 3 and change.shrink_to == 3
    assert {p: d[0] for p, d in change.pages.items()} == {1: 1, 2: 2, 3: 2}


def test_shrink_then_grow_zero_fills() -> None:
    start = bytes([9]) * (PAGE * 4)
    txns = [txn(1, 4, {4: 1}), txn(2, 2, {1: 2}), txn(3, 4, {3: 3})]
    assert folded(start, txns) == sequential(start, txns)
    assert folded(start, txns)[3 * PAGE :] == bytes(PAGE)  # page 4 was cut, then grown back empty


def test_page_size_change_rewrites_from_empty() -> None:
    start = bytes([9]) * (PAGE * 4)
    txns = [txn(1, 4, {1: 1}), txn(2, 2, {1: 2, 2: 2}, page_size=1024)]
    change = merge(txns)
    assert change.page_size == 1024 and change.shrink_to == 0
    assert folded(start, txns) == bytes([2]) * 2048


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 6), st.lists(st.tuples(st.integers(1, 6), st.dictionaries(
    st.integers(1, 6), st.integers(0, 255), max_size=4)), min_size=1, max_size=6))
def test_merge_equals_sequential(initial: int, steps: list[tuple[int, dict[int, int]]]) -> None:
    start = bytes(range(256)) * (initial * PAGE // 256)
    txns = [txn(i + 1, size, {p: f for p, f in pages.items() if p <= size}) for i, (size, pages) in enumerate(steps)]
    assert folded(start, txns) == sequential(start, txns)
