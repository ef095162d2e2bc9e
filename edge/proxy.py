"""The edge's trio server: accepts client connections and runs their requests.

The protocol lives in `edge.http`, routing in `edge.routes`/`edge.balance`, one
request's life in `edge.exchange` (or, for the common bodiless GET, in the fast
loop of `edge.fastpath`, which also reads each connection's request heads); this
module owns listening, connections (`Session`), the shared `Edge` state, and stopping.

Rules kept here:
  * One request at a time per client connection (pipelined requests wait their
    turn in the lane's buffer or the parser).
  * Between requests a connection may sit idle for `idle_timeout`, then it is
    closed silently. Once a request head has started it must be complete within
    `header_timeout` (slowloris), or the client gets 408 and the connection closes.
    These waits, and the fast path's wait for a backend, are ended by the
    `watchdog` task (at most `WATCHDOG_TICK` late), not by a trio deadline each.
  * An error answered with `Connection: close` is followed by a lingering close
    (`Conn.linger`), so the client reads it even if it was still sending.
  * The listener sets SO_REUSEPORT, so several worker processes (`edge.main`) can
    each accept on the same port and the kernel spreads connections across them.
  * Stopping (`shutdown` set) drains: the listener closes, idle keep-alive
    connections close, requests in flight get `drain_timeout` to finish (their
    responses say `Connection: close`), then whatever is left is cancelled.
  * Websocket tunnels survive table refreshes; a tunnel whose instance left the
    table is closed `drain_timeout` after the edge noticed.
  * The edge follows the route source (`RouteSource.changed`), so requests held
    for a waking app (`edge.wake`) go on as soon as the table gains a backend.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

import trio

from edge.config import EdgeConfig
from edge.fastpath import Lane
from edge.listen import close_listener, open_listener
from edge.netio import Conn, serve_conns
from edge.routes import RouteSource
from edge.session import Session
from edge.shared import Edge

__all__ = ["Edge", "EdgeConfig", "serve"]

log = logging.getLogger(__name__)


async def serve(
    config: EdgeConfig,
    source: RouteSource,
    *,
    shutdown: trio.Event | None = None,
    edge: Edge | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Proxy on config.host:config.port until cancelled or `shutdown` drains; reports the port."""
    listener = await open_listener(config.host, config.port)
    port = listener.getsockname()[1]
    edge = edge or Edge(config, source)
    try:
        await _serve(edge, listener, port, shutdown, task_status)
    finally:
        edge.connector.close_all()


async def _serve(
    edge: Edge,
    listener: socket.socket,
    port: int,
    shutdown: trio.Event | None,
    task_status: trio.TaskStatus[int],
) -> None:
    config = edge.config
    async with trio.open_nursery() as nursery:
        nursery.start_soon(edge.housekeeping)
        nursery.start_soon(edge.follow_routes)
        nursery.start_soon(edge.watchdog)
        async with trio.open_nursery() as connections:
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(serve_conns, listener, connections, edge_handler(edge))
                    log.info("edge-listening host=%s port=%d", config.host, port)
                    task_status.started(port)
                    if shutdown is not None:
                        await shutdown.wait()
                        accepting.cancel_scope.cancel()
            finally:
                close_listener(listener)
            edge.drain(connections)
        nursery.cancel_scope.cancel()


def edge_handler(edge: Edge) -> Callable[[Conn], Awaitable[None]]:
    """What `serve_conns` runs for each accepted connection of `edge`."""

    async def handle_connection(stream: Conn) -> None:
        """Serve one client connection; never lets an error escape to the listener."""
        async with stream:
            try:
                # The lane reads the heads; it runs each in `Exchange` or its own fast path.
                await Lane(Session(edge, stream)).run()
            except* (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away, perhaps mid-response; nothing is owed to it
            except* Exception:
                log.exception("edge-connection-crashed")

    return handle_connection
