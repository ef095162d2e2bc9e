"""Socket I/O for `edge.fastpath`: receive trying one plain checkpoint before epoll.

When a read would block, `receive` first yields once to the other tasks
(`trio.lowlevel.checkpoint`) and tries again: under load the peer has usually
answered by then, which saves registering the socket with epoll and hearing back
from it. Only if the socket is still empty does it `wait_readable`. Otherwise it
keeps `edge.netio.Conn.receive_some`'s contract: b"" at end of stream or on a
reset, BrokenResourceError on other errors, ClosedResourceError on a closed Conn,
and a checkpoint at least every `YIELD_EVERY` reads that did not wait.

`send_now` sends what the socket takes without waiting, so the caller can tell
whether a send could block before it lifts its deadline for one.
"""

from __future__ import annotations

import trio

from edge.netio import _BROKEN, YIELD_EVERY, Conn


async def receive(conn: Conn, max_bytes: int) -> bytes:
    """Up to `max_bytes` from `conn`; b"" at end of stream (or a reset)."""
    if conn.closed:
        raise trio.ClosedResourceError("connection was closed")
    sock = conn.sock
    yielded = False
    while True:
        try:
            data = sock.recv(max_bytes)
        except BlockingIOError:
            conn._eager = 0
            if yielded:
                await trio.lowlevel.wait_readable(sock)
            else:
                await trio.lowlevel.checkpoint()
                yielded = True
            if conn.closed:
                raise trio.ClosedResourceError("connection was closed") from None
            continue
        except _BROKEN:
            return b""
        except OSError as error:
            raise trio.BrokenResourceError(str(error)) from error
        if not yielded:
            conn._eager += 1
            if conn._eager >= YIELD_EVERY:
                conn._eager = 0
                await trio.lowlevel.checkpoint()
        return data


def send_now(conn: Conn, data: bytes) -> int:
    """How much of `data` the socket took at once; 0 if it would block, is broken or closed
    (`Conn.send_all` then waits, or raises as trio streams do)."""
    if conn.closed:
        return 0
    try:
        return conn.sock.send(data)
    except OSError:
        return 0
