"""Integrity scrubbing: every database's file, re-read at a steady pace, against its recorded position.

A pass reads each database's committed content (through `read`, which the
node implements per role so that the content and the position belong to the
same instant), recomputes its checksum (DESIGN §4) and compares it with the
position's. A mismatch is logged at ERROR level, shown in `/status`, and
handed to `on_mismatch` (a replica asks its primary for a snapshot). Reads are
paced to at most `rate` bytes a second; passes are `interval` seconds apart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import trio

from replication.checksum import image_checksum

log = logging.getLogger(__name__)

#: (committed content, its position), or None when the database cannot be checked now.
ReadFn = Callable[[str], Awaitable[tuple[bytes, tuple[int, int] | None] | None]]


@dataclass(slots=True)
class ScrubResult:
    """The last check of one database."""

    checked_at: float
    txid: int
    expected: str  # the position's checksum (16 hex digits)
    actual: str  # the content's checksum
    ok: bool


class Scrubber:
    """Checks every database returned by `databases()` once per pass."""

    def __init__(self, databases: Callable[[], list[str]], read: ReadFn,
                 on_mismatch: Callable[[str], Awaitable[None]], *, interval: float, rate: int) -> None:
        self.databases = databases
        self.read = read
        self.on_mismatch = on_mismatch
        self.interval = interval
        self.rate = rate
        self.results: dict[str, ScrubResult] = {}
        self.passes = 0
        self.mismatches = 0

    async def run(self) -> None:
        """Scrub forever (until cancelled); one database's failure never stops the others."""
        while True:
            for db in self.databases():
                try:
                    await self.check(db)
                except Exception as exc:  # e.g. a lock held too long: the next pass tries again
                    log.warning("cannot scrub %s, retrying next pass: %s", db, exc)
            self.passes += 1
            await trio.sleep(self.interval)

    async def check(self, db: str) -> ScrubResult | None:
        """Check `db` now; its result (None when it could not be read consistently)."""
        got = await self.read(db)
        if got is None:
            return None
        image, position = got
        actual = await trio.to_thread.run_sync(image_checksum, image)
        txid, expected = position or (0, 0)
        result = ScrubResult(time.time(), txid, f"{expected:016x}", f"{actual:016x}", actual == expected)
        self.results[db] = result
        if not result.ok:
            self.mismatches += 1
            log.error("scrub: %s does not match its position: TXID %d has checksum %016x, the file's content "
                      "%016x", db, txid, expected, actual)
            await self.on_mismatch(db)
        await trio.sleep(len(image) / self.rate)
        return result

    def status(self) -> dict[str, Any]:
        """What `/status` shows under "scrub"."""
        return {"passes": self.passes, "mismatches": self.mismatches,
                "databases": {db: asdict(r) for db, r in sorted(self.results.items())}}


__all__ = ["ReadFn", "ScrubResult", "Scrubber"]
