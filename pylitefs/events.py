"""`GET /events`: what happens on the node, fanned out to every listening client in order.

`EventHub.publish` (trio thread, never blocks) puts an event in each
subscriber's bounded queue. A subscriber whose queue is full is cut off: its
queue ends after the events it already holds, and `overflowed` tells the
HTTP side to send a final `{"type": "overflow"}` line. Memory per client is
at most `queue_size` events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from replication.txn import Transaction

log = logging.getLogger(__name__)

#: Events a client may be behind before it is disconnected.
DEFAULT_QUEUE_SIZE = 4096

Event = dict[str, Any]


class Subscription:
    """One client's queue: `async for event in subscription.receive`; ends on overflow or close."""

    def __init__(self, hub: EventHub, size: int) -> None:
        self._hub = hub
        self._send, self.receive = trio.open_memory_channel[Event](size)
        self.overflowed = False
        #: Called once when the queue overflows (the consumer may hurry its last send).
        self.on_overflow: Callable[[], None] | None = None

    def offer(self, event: Event) -> None:
        """Queue `event`, or cut this subscriber off when its queue is full."""
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.overflowed = True
            self.close()
            if self.on_overflow is not None:
                self.on_overflow()
        except trio.ClosedResourceError:
            pass

    def close(self) -> None:
        """Leave the hub; the queue ends after the events it already holds."""
        self._hub.unsubscribe(self)
        self._send.close()


class EventHub:
    """Every subscriber's queue; `publish` is called on the trio thread."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._subscribers: list[Subscription] = []

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self, first: Event) -> Subscription:
        """A new subscriber whose queue starts with `first` (the state as of now)."""
        sub = Subscription(self, self.queue_size)
        sub.offer(first)
        self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop queueing events for `sub` (a no-op if it already left)."""
        if sub in self._subscribers:
            self._subscribers.remove(sub)

    def publish(self, event: Event) -> None:
        """Queue `event` for every subscriber (without blocking)."""
        for sub in list(self._subscribers):
            sub.offer(event)
            if sub.overflowed:
                log.warning("an /events client fell %d events behind: disconnecting it", self.queue_size)


def tx_event(txn: Transaction) -> Event:
    """The `tx` event of a logged or applied transaction."""
    return {"type": "tx", "db": txn.db, "txid": txn.txid, "checksum": f"{txn.post_checksum:016x}",
            "pages": len(txn.pages), "time": txn.timestamp_ns / 1e9}


__all__ = ["DEFAULT_QUEUE_SIZE", "Event", "EventHub", "Subscription", "tx_event"]
