"""Listening sockets that several worker processes can share.

SO_REUSEPORT lets each worker bind its own socket to the same port; the kernel
then spreads incoming connections across them, with no accept lock between them.
"""

from __future__ import annotations

import socket

import trio


async def open_listener(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A listening, non-blocking TCP socket with SO_REUSEADDR and SO_REUSEPORT set."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def close_listener(sock: socket.socket) -> None:
    """Close a listener another task may be waiting on."""
    trio.lowlevel.notify_closing(sock)
    sock.close()
