"""Byte tunnels for connections that switched protocols (websockets after a 101).

Rules kept here:
  * Bytes the HTTP parsers had already read past the handshake are delivered first,
    in order, before anything newly received.
  * The tunnel ends when either side closes or fails; both directions stop then, and
    the caller closes both streams. No idle timeout: websockets may be quiet for long.
"""

from __future__ import annotations

import trio

from edge.netio import Conn

CHUNK = 64 * 1024


async def tunnel(client: Conn, from_client: bytes, backend: Conn, from_backend: bytes) -> None:
    """Relay bytes both ways until either side closes; `from_*` are already-read bytes."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_copy, client, backend, from_client, nursery.cancel_scope)
        nursery.start_soon(_copy, backend, client, from_backend, nursery.cancel_scope)


async def _copy(source: Conn, sink: Conn, pending: bytes, done: trio.CancelScope) -> None:
    try:
        if pending:
            await sink.send_all(pending)
        while data := await source.receive_some(CHUNK):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # a side went away: the tunnel is over either way
    finally:
        done.cancel()
