"""Long-poll waiting on the store's revision: an in-process condition, nothing more.

A waiter remembers the event current when it looked at the store, then waits on it;
`changed()` sets that event and installs a fresh one. An idle long-poll costs one
pending future. anyio keeps it independent of the event loop (uvicorn's asyncio in
production, trio in tests).
"""

from __future__ import annotations

import anyio


class Notifier:
    """Wakes every waiter when the store changes."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def changed(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    def snapshot(self) -> anyio.Event:
        """Take before reading state; wait on it after finding nothing new."""
        return self._event

    @staticmethod
    async def wait(event: anyio.Event, timeout: float) -> bool:
        """True if a change came within `timeout` seconds."""
        with anyio.move_on_after(max(timeout, 0)):
            await event.wait()
            return True
        return False
