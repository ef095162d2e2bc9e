"""Socket I/O for `edge.fastpath`: receive trying one plain yield before epoll.

When a read would block, `receive` first yields once to the other tasks
(`trio.lowlevel.cancel_shielded_checkpoint`) and tries again: under load the peer
has usually answered by then, which saves registering the socket with epoll and
hearing back from it. Only if the socket is still empty does it `wait_readable`
(a cancellation point). It returns b"" at end of stream and on any socket error
(a reset, or a connection that broke otherwise): to the fast path all of those
mean the peer is gone. A closed Conn raises ClosedResourceError, as trio streams
do, and reads that did not wait on epoll pass a real checkpoint every `YIELD_EVERY`
times, so one busy connection cannot starve the others or miss a cancellation.

`send_now` sends what the socket takes without waiting, so the caller can tell
whether a send could block.
"""

from __future__ import annotations

import trio

from edge.netio import YIELD_EVERY, Conn

_yield = trio.lowlevel.cancel_shielded_checkpoint
_wait_readable = trio.lowlevel.wait_readable


async def receive(conn: Conn, max_bytes: int) -> bytes:
    """Up to `max_bytes` from `conn`; b"" at end of stream or on a socket error."""
    if conn.closed:
        raise trio.ClosedResourceError("connection was closed")
    sock = conn.sock
    try:
        data = sock.recv(max_bytes)
    except BlockingIOError:
        await _yield()  # no cancellation point: a read that never waits counts as eager
        while True:
            if conn.closed:
                raise trio.ClosedResourceError("connection was closed") from None
            try:
                data = sock.recv(max_bytes)
                break
            except BlockingIOError:
                conn._eager = 0
                await _wait_readable(sock)
            except OSError:
                return b""
    except OSError:
        return b""
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
