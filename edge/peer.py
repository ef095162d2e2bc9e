"""The trio side of a sans-IO parser: one peer's stream, read until the parser has an event.

Rules kept here:
  * Bytes are read only when the parser has nothing queued, so a slow consumer
    applies backpressure to the peer instead of growing a buffer.
  * A connection reset reads as a close: the parser decides whether that was clean
    (between messages) or an error (mid-message).
"""

from __future__ import annotations

import trio

from edge.http import NEED_DATA, Event, RequestParser, ResponseParser, Signal
from edge.netio import Conn

CHUNK = 64 * 1024


class Peer:
    """One side's stream and the parser reading it."""

    def __init__(self, stream: Conn, parser: RequestParser | ResponseParser) -> None:
        self.stream = stream
        self.parser = parser
        self.received = 0  # bytes read from this peer so far

    async def next_event(self, timeout: float | None = None) -> Event | Signal:
        """The next event (or PAUSED), reading as needed; TooSlowError if none comes in time.

        Without a timeout the caller's cancel scope bounds the wait (the hot path
        arms one scope per exchange rather than one per read)."""
        event = self.parser.next_event()
        if event is not NEED_DATA:
            return event  # queued already: no deadline to arm
        if timeout is None:
            while (event := self.parser.next_event()) is NEED_DATA:
                await self.receive()
            return event
        with trio.fail_after(timeout):
            while (event := self.parser.next_event()) is NEED_DATA:
                await self.receive()
        return event

    async def receive(self) -> None:
        """Read once from the stream into the parser (b"" on close or reset)."""
        try:
            data = await self.stream.receive_some(CHUNK)
        except trio.BrokenResourceError:
            data = b""  # a reset is a close, mid-message or not
        self.received += len(data)
        self.parser.feed(data)

    async def send(self, data: bytes) -> None:
        """Write `data` (nothing if empty)."""
        if data:
            await self.stream.send_all(data)
