"""The trio side of the stream protocol: messages over a byte stream, and the HTTP upgrade.

`MessageStream` wraps any `trio.abc.Stream` with the sans-IO codec of
`replication.wire`. A node serves its HTTP API and the stream on one port:
a replica connects with `open_upgraded(url)`, an HTTP/1.1 request for
`STREAM_PATH` asking to upgrade to `UPGRADE_TOKEN`; the server (pylitefs/http.py)
answers `101 Switching Protocols` and both sides then speak frames.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from collections.abc import AsyncIterator, Iterator

import h11
import trio

from replication.wire import MAX_FRAME_SIZE, FrameDecoder, Message, ProtocolError, encode_frame

log = logging.getLogger(__name__)

STREAM_PATH = "/stream"
UPGRADE_TOKEN = "pylitefs-stream"
RECEIVE_SIZE = 1 << 18
#: Frame bodies at least this large are written on their own, not copied into one buffer with their
#: length prefix and other frames (a copy per byte sent: measurable when catching up).
DIRECT_SEND = 1 << 16
#: Largest HTTP response head a replica reads before the upgrade.
MAX_HTTP_HEAD = 64 * 1024


@contextlib.asynccontextmanager
async def open_task_group() -> AsyncIterator[trio.Nursery]:
    """A nursery whose failure raises the first real error itself, not an ExceptionGroup.

    Sessions end on the first error of any of their tasks (the others are
    cancelled); callers then handle `ProtocolError`, `StreamClosed`, ... by
    type. A group made only of cancellations is re-raised as it is.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        errors = [e for e in leaves if not isinstance(e, trio.Cancelled)]
        if not errors:
            raise
        for other in errors[1:]:
            log.debug("also failed: %r", other)
        raise errors[0] from group


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


class StreamClosed(Exception):
    """The peer closed the connection cleanly, between two messages."""


class UpgradeError(Exception):
    """The node at the URL did not switch to the stream protocol; the message says why."""


class MessageStream:
    """Sends and receives `replication.wire` messages over a trio stream.

    One task may send while another receives; `send` calls are serialised.
    """

    def __init__(self, stream: trio.abc.Stream, leftover: bytes = b"",
                 max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(max_frame_size)
        if leftover:
            self._decoder.feed(leftover)
        self._send_lock = trio.Lock()

    @property
    def max_frame_size(self) -> int:
        """The largest frame body accepted from the peer."""
        return self._decoder.max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        self._decoder.max_frame_size = value

    async def send(self, msg: Message) -> None:
        """Send one message (waits while the peer's window is full)."""
        await self.send_many([msg])

    async def send_many(self, msgs: list[Message]) -> None:
        """Send several messages, in order: small frames in one write, large bodies each as they are."""
        writes: list[bytes] = []
        small: list[bytes] = []
        for msg in msgs:
            prefix, body = encode_frame(msg)
            small.append(prefix)
            if len(body) < DIRECT_SEND:
                small.append(body)
            else:
                writes += (b"".join(small), body)
                small = []
        if small:
            writes.append(b"".join(small))
        async with self._send_lock:
            for data in writes:
                await self.stream.send_all(data)

    async def receive(self) -> Message:
        """The next message; StreamClosed at a clean end, ProtocolError for bad bytes."""
        while True:
            msg = self._decoder.next_message()
            if msg is not None:
                return msg
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                self._decoder.close()  # raises if the peer stopped inside a frame
                raise StreamClosed("the peer closed the connection")
            self._decoder.feed(data)

    async def aclose(self) -> None:
        """Close the underlying stream (never raises for a broken one)."""
        try:
            await self.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def open_upgraded(url: str, timeout: float) -> MessageStream:
    """Connect to the node at `url` (http://host:port) and switch to the stream protocol.

    Raises OSError when the node cannot be reached, UpgradeError when it
    answers but refuses, and trio.TooSlowError after `timeout` seconds.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 80
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        try:
            leftover = await _request_upgrade(stream, f"{host}:{port}")
        except BaseException:
            await stream.aclose()
            raise
    return MessageStream(stream, leftover)


async def _request_upgrade(stream: trio.abc.Stream, authority: str) -> bytes:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HTTP_HEAD)
    request = h11.Request(method="GET", target=STREAM_PATH, headers=[
        ("Host", authority), ("Connection", "Upgrade"), ("Upgrade", UPGRADE_TOKEN),
    ])
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpgradeError(f"bad HTTP answer from {authority}: {exc}") from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise UpgradeError(f"{authority} closed the connection before switching protocols")
            conn.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            return bytes(conn.trailing_data[0])
        if isinstance(event, h11.Response):
            raise UpgradeError(f"{authority} answered {event.status_code} {event.reason.decode(errors='replace')} "
                               "instead of switching to the stream protocol")
        if isinstance(event, h11.ConnectionClosed):
            raise UpgradeError(f"{authority} closed the connection before switching protocols")


__all__ = [
    "STREAM_PATH",
    "UPGRADE_TOKEN",
    "MessageStream",
    "ProtocolError",
    "StreamClosed",
    "UpgradeError",
    "open_task_group",
    "open_upgraded",
]
