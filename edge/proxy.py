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

import trio

from edge.accesslog import LogShipper
from edge.balance import Balancer
from edge.config import EdgeConfig
from edge.encode import error_response
from edge.fastpath import Lane, Phase
from edge.http import ProtocolError, RequestParser
from edge.listen import close_listener, open_listener
from edge.metrics import Concurrency
from edge.netio import Conn, serve_conns
from edge.peer import Peer
from edge.routes import Backend, Route, RouteSource, RouteTable
from edge.upstream import Connector
from edge.wake import Wakes

__all__ = ["Edge", "EdgeConfig", "serve"]

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 1.0
WATCHDOG_TICK = 0.05  # how late, at most, a lane's deadline is enforced
MAX_CACHED_HOSTS = 4096  # distinct raw Host values remembered by `Edge.fast_route`


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
                    accepting.start_soon(serve_conns, listener, connections, edge.handle_connection)
                    log.info("edge-listening host=%s port=%d", config.host, port)
                    task_status.started(port)
                    if shutdown is not None:
                        await shutdown.wait()
                        accepting.cancel_scope.cancel()
            finally:
                close_listener(listener)
            edge.drain(connections)
        nursery.cancel_scope.cancel()


class Edge:
    """What all connections of one worker share: config, routes, balancer, pool."""

    def __init__(
        self, config: EdgeConfig, source: RouteSource, shipper: LogShipper | None = None
    ) -> None:
        self.config = config
        self.connector = Connector(config.connect_timeout, idle_timeout=config.pool_idle_timeout)
        self.balancer = Balancer(eject_seconds=config.eject_seconds)
        self.shipper = shipper
        self.draining = False
        self.lanes: set[Lane] = set()  # every client connection's request loop
        self.tunnels: dict[Backend, set[trio.CancelScope]] = {}
        self.wakes = Wakes(timeout=config.wake_timeout, max_held=config.max_held)
        self.concurrency = Concurrency(trio.current_time())
        self._source = source
        self._table: RouteTable | None = None
        # Raw Host header -> that host's routes as (prefix, prefix + "/", route), longest
        # prefix first, for the fast path; emptied with every new table.
        self._by_raw_host: dict[bytes, tuple[tuple[bytes, bytes, Route], ...]] = {}

    def route(self, host: str, path: str) -> Route | None:
        """Look the request up in the current table."""
        self._notice_table()
        return self._source.table.lookup(host, path)

    def fast_route(self, host: bytes, path: bytes) -> Route | None:
        """`route` for the raw Host value and path of a plain request, with the host's
        routes remembered per raw Host value until the table changes."""
        self._notice_table()
        routes = self._by_raw_host.get(host)
        if routes is None:
            if len(self._by_raw_host) >= MAX_CACHED_HOSTS:
                self._by_raw_host.clear()
            found = self._source.table.host_routes(host.decode("latin-1"))
            prefixes = [r.path.encode("latin-1", "replace") for r in found]
            routes = tuple((p, p + b"/", r) for p, r in zip(prefixes, found, strict=True))
            self._by_raw_host[host] = routes
        for prefix, below, route in routes:
            if prefix == b"/" or path == prefix or path.startswith(below):
                return route
        return None

    async def handle_connection(self, stream: Conn) -> None:
        """Serve one client connection; never lets an error escape to the listener."""
        async with stream:
            try:
                # The lane reads the heads; it runs each in `Exchange` or its own fast path.
                await Lane(Session(self, stream)).run()
            except* (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away, perhaps mid-response; nothing is owed to it
            except* Exception:
                log.exception("edge-connection-crashed")

    async def housekeeping(self) -> None:
        """Close expired idle upstream connections and orphaned tunnels, forever."""
        while True:
            await trio.sleep(HOUSEKEEPING_INTERVAL)
            self.connector.sweep(trio.current_time())
            self._notice_table()

    async def watchdog(self) -> None:
        """End the waits of lanes whose deadline has passed, forever (`Lane` explains why
        its waits have no trio deadline of their own)."""
        while True:
            await trio.sleep(WATCHDOG_TICK)
            now = trio.current_time()
            for lane in [lane for lane in self.lanes if lane.deadline <= now]:
                lane.expire()

    async def follow_routes(self) -> None:
        """Notice every new routing table as it arrives, forever."""
        while True:
            self._notice_table()
            await self._source.changed(self._source.table)

    def drain(self, connections: trio.Nursery) -> None:
        """Close idle connections and give in-flight work its time before it is cancelled."""
        log.info("edge-draining timeout=%.1f", self.config.drain_timeout)
        self.draining = True
        for lane in [lane for lane in self.lanes if lane.phase is Phase.IDLE]:
            lane.expire()
        connections.cancel_scope.deadline = trio.current_time() + self.config.drain_timeout
        # The nursery's own exit waits for the remaining sessions (or the deadline).

    def _notice_table(self) -> None:
        table = self._source.table
        if table is self._table:
            return
        self._table = table
        self._by_raw_host.clear()
        self.wakes.table_changed()
        self.balancer.forget_missing(table)
        routed = {b for route in table.routes for b in route.backends}
        deadline = trio.current_time() + self.config.drain_timeout
        for backend, scopes in self.tunnels.items():
            if backend not in routed:
                for scope in scopes:
                    scope.deadline = min(scope.deadline, deadline)


class Session:
    """One client connection as its requests see it: the stream, the general parser
    (used only for what the fast path hands over), and who the peer is."""

    def __init__(self, edge: Edge, stream: Conn) -> None:
        self.edge = edge
        self.config = edge.config
        self.client = Peer(stream, RequestParser(edge.config.limits))
        self.client_ip = stream.peer_ip()
        self.trusted = self.config.is_trusted(self.client_ip)

    async def _refuse(self, error: ProtocolError) -> None:
        log.info("edge-bad-request status=%d reason=%r", error.status, error.reason)
        reply = error_response(error.status, error.reason, close=True, code=error.code)
        await self.client.send(reply)
        await self.client.stream.linger()  # the client may still be sending
