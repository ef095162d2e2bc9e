"""A lean stream over a non-blocking socket, for the edge's hot path.

trio's SocketStream yields to the scheduler on every successful send or receive
(its "checkpoint sandwich"), which costs more than the proxying itself when each
request needs four socket operations. `Conn` calls the socket first and only waits
(`wait_readable`/`wait_writable`) when the kernel says it would block.

Rules kept here:
  * Fairness: a Conn still checkpoints at least every `YIELD_EVERY` operations that
    did not block, so one busy stream (a big body, a pipelining client) cannot
    starve the others, and cancellation is still seen there.
  * A reset reads as end of stream (b""); sending to a closed peer raises
    trio.BrokenResourceError, and using a closed Conn raises ClosedResourceError,
    as trio streams do, so callers handle one set of errors.
  * `aclose` tells trio the fd is closing before closing it, so a task waiting on
    it in a tunnel is woken instead of left waiting on a reused fd.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable

import trio

YIELD_EVERY = 16
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024
_BROKEN = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class Conn:
    """One connected TCP socket; the subset of trio.abc.Stream the edge uses."""

    __slots__ = ("_eager", "closed", "sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._eager = 0  # operations in a row that completed without waiting
        self.closed = False

    async def _pace(self) -> None:
        self._eager += 1
        if self._eager >= YIELD_EVERY:
            self._eager = 0
            await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        """Up to `max_bytes`; b"" at end of stream (or a reset)."""
        if self.closed:
            raise trio.ClosedResourceError("connection was closed")
        while True:
            try:
                data = self.sock.recv(max_bytes)
            except BlockingIOError:
                self._eager = 0
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except _BROKEN:
                data = b""
            except OSError as error:
                raise trio.BrokenResourceError(str(error)) from error
            await self._pace()
            return data

    async def send_all(self, data: bytes | memoryview) -> None:
        """Send every byte of `data`; BrokenResourceError if the peer is gone."""
        if self.closed:
            raise trio.ClosedResourceError("connection was closed")
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                self._eager = 0
                await trio.lowlevel.wait_writable(self.sock)
                continue
            except OSError as error:
                raise trio.BrokenResourceError(str(error)) from error
            view = view[sent:]
        await self._pace()

    def close(self) -> None:
        """Close now (idempotent), waking any task waiting on this socket."""
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    async def aclose(self) -> None:
        """Close, as trio streams do."""
        self.close()
        await trio.lowlevel.checkpoint()

    async def linger(self, seconds: float = LINGER_SECONDS) -> None:
        """Half-close, then read and drop what the peer still sends (up to `LINGER_BYTES`,
        for up to `seconds`) before the caller closes. Closing with unread bytes makes
        the kernel reset the connection, which can destroy an answer still in flight
        to a client that is not done sending (nginx's "lingering close")."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return  # already gone
        dropped = 0
        with trio.move_on_after(seconds):
            while dropped < LINGER_BYTES:
                data = await self.receive_some(65536)
                if not data:
                    return
                dropped += len(data)

    def readable_now(self) -> bool:
        """Whether a read would not block: EOF, a reset or unexpected bytes are waiting."""
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

    def peer_ip(self) -> str:
        """The remote address, without the port."""
        return str(self.sock.getpeername()[0])

    async def __aenter__(self) -> Conn:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


async def connect(host: str, port: int, *, unacked_timeout: float | None = None) -> Conn:
    """Open a TCP connection to a numeric `host`. With `unacked_timeout`, the connection
    breaks (reads as a reset) once data it sent stays unacknowledged that long."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    if unacked_timeout is not None:
        milliseconds = max(1, round(unacked_timeout * 1000))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
    try:
        try:
            sock.connect((host, port))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, f"connect to {host}:{port} failed") from None
        return Conn(sock)
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise


async def serve_conns(
    listener: socket.socket, handler: trio.Nursery, handle: Callable[[Conn], Awaitable[None]]
) -> None:
    """Accept connections on `listener` forever, starting `handle(conn)` in `handler`."""
    listener.setblocking(False)
    while True:
        await trio.lowlevel.wait_readable(listener)
        for _ in range(64):
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                break
            except OSError as error:  # out of fds, or an aborted handshake: go on
                if error.errno not in _ACCEPT_RETRY:
                    raise
                await trio.sleep(0.01)
                break
            handler.start_soon(handle, Conn(sock))


_ACCEPT_RETRY = {
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOBUFS,
    errno.ENOMEM,
    errno.ECONNABORTED,
    errno.EPROTO,
}
