"""Listening sockets that several worker processes can share, and the claim that keeps
any other program out of them.

SO_REUSEPORT lets each worker bind its own socket to the same port; the kernel
then spreads incoming connections across them, with no accept lock between them.
It would just as gladly let a second edge (same user) join a first one's port and
take half its connections, so an edge first claims its port (`claim_port`), and
only then do its workers bind it with SO_REUSEPORT. On Linux:
  * the probe binds with SO_REUSEADDR and without SO_REUSEPORT: that fails while any
    other socket LISTENS on the port (whatever its options), or holds it bound without
    SO_REUSEADDR, yet succeeds past the TIME_WAIT connections a just-stopped edge
    left (they carry its SO_REUSEADDR), so a restart is not refused;
  * the holder then binds with SO_REUSEPORT and without SO_REUSEADDR, kept bound (not
    listening) for as long as the edge runs: our workers' SO_REUSEPORT listeners may
    join it (same user), while another edge's probe fails against it even before our
    workers listen, which closes the window between two edges starting together.
"""

from __future__ import annotations

import errno
import socket

import trio


class PortInUse(OSError):
    """Another process has the port; the message is the one line shown to the user."""


def claim_port(host: str, port: int) -> socket.socket:
    """Make sure no other process has `host:port`, then hold it for this edge's workers.

    Returns the holder (bound, not listening; port 0 resolved), to keep open until the
    edge exits. Raises PortInUse if another program listens on the port or holds it.
    """
    port = check_port_free(host, port)
    holder = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _bind(holder, host, port)  # fails only if another process took it just now
    except BaseException:
        holder.close()
        raise
    return holder


def check_port_free(host: str, port: int) -> int:
    """Raise PortInUse if another socket listens on (or holds) `host:port`; the port,
    resolved if it was 0. The probe binds as a server about to listen would (with
    SO_REUSEADDR, without SO_REUSEPORT) and is closed at once."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _bind(probe, host, port)
        return int(probe.getsockname()[1])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind(sock: socket.socket, host: str, port: int) -> None:
    try:
        sock.bind((host, port))
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        raise PortInUse(f"port {port} is in use by another process") from None


async def open_listener(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A listening, non-blocking TCP socket with SO_REUSEADDR and SO_REUSEPORT set.

    It joins whatever SO_REUSEPORT sockets of this user have the port: call it only on a
    port the edge holds through `claim_port`.
    """
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
