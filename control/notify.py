"""Long-poll waiting on the store's revision: an in-process condition, nothing more.

A waiter remembers the event current when it looked at the store, then waits on it;
`changed()` sets that event and installs a fresh one. An idle long-poll costs one
pending future.
"""

from __future__ import annotations

import asyncio


class Notifier:
    """Wakes every waiter when the store changes."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def changed(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def snapshot(self) -> asyncio.Event:
        """Take before reading state; wait on it after finding nothing new."""
        return self._event

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> bool:
        """True if a change came within `timeout` seconds."""
        try:
            await asyncio.wait_for(event.wait(), max(timeout, 0))
        except TimeoutError:
            return False
        return True
