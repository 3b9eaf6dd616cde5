"""A database image (the bytes of a database file) and the pages a transaction writes into it."""

from __future__ import annotations

from collections.abc import Mapping


def apply_pages(image: bytearray, page_size: int, commit_size: int, pages: Mapping[int, bytes]) -> None:
    """Write `pages` (pgno -> page) into `image` and set its size to `commit_size` pages.

    Pages beyond `commit_size` are ignored; a grown image is zero-filled.
    """
    size = commit_size * page_size
    if len(image) < size:
        image.extend(bytes(size - len(image)))
    for pgno, page in pages.items():
        if pgno <= commit_size:
            image[(pgno - 1) * page_size : pgno * page_size] = page
    del image[size:]
