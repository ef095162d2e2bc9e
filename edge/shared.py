"""What all client connections of one edge worker share, and the edge's own loops.

Owns `Edge`: the config, the routing table as the requests see it (and its per-Host
cache for the fast path), the balancer, the backend pool, held requests for waking
apps, open tunnels, in-flight counts, and the set of lanes the watchdog bounds.

Rules kept here:
  * A new routing table is noticed once (`_notice_table`): the fast path's Host cache
    is emptied, held requests are woken, balancing state for gone backends is
    dropped, and tunnels to instances that left get `drain_timeout` to end.
  * The watchdog ends a lane's bounded wait at most `WATCHDOG_TICK` after its
    deadline; what that means for the lane is `edge.lanestate.ON_EXPIRY`.
  * Every request is counted and logged through `begin_request`/`end_request`, by
    both request paths alike (`edge.record`).
"""

from __future__ import annotations

import logging

import trio

from edge.accesslog import LogShipper, log_request
from edge.balance import Balancer
from edge.config import EdgeConfig
from edge.lanestate import Bounded, Phase
from edge.metrics import Concurrency
from edge.record import RequestRecord
from edge.routes import Backend, Route, RouteSource, RouteTable
from edge.upstream import Connector
from edge.wake import Wakes

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 1.0
WATCHDOG_TICK = 0.05  # how late, at most, a lane's deadline is enforced
MAX_CACHED_HOSTS = 4096  # distinct raw Host values remembered by `Edge.fast_route`


class Edge:
    """What all connections of one worker share: config, routes, balancer, pool."""

    def __init__(
        self, config: EdgeConfig, source: RouteSource, shipper: LogShipper | None = None
    ) -> None:
        self.config = config
        self.balancer = Balancer(eject_seconds=config.eject_seconds)
        self.connector = Connector(
            config.connect_timeout, self.balancer, idle_timeout=config.pool_idle_timeout
        )
        self.shipper = shipper
        self.draining = False
        self.lanes: set[Bounded] = set()  # every client connection's request loop
        self.tunnels: dict[Backend, set[trio.CancelScope]] = {}
        self.wakes = Wakes(timeout=config.wake_timeout, max_held=config.max_held)
        self.concurrency = Concurrency(trio.current_time())
        # `trio.current_time`, one call instead of three (the lane reads it twice a request).
        self.now = trio.lowlevel.current_clock().current_time
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
        if self._source.table is not self._table:
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

    def begin_request(self, record: RequestRecord, route: Route) -> None:
        """`record` is routed to `route` and counts as in flight for its app from now."""
        record.route = route
        app = record.counted = route.app
        self.concurrency.started(app, record.started)

    def end_request(self, record: RequestRecord, now: float, logged: bool) -> None:
        """`record`'s request is over: uncount it and, if `logged` (`access_wanted`, asked
        once per connection), write its access line."""
        app = record.counted
        if app is not None:
            self.concurrency.finished(app, now)
            record.counted = None
        if logged:
            log_request(self.shipper, record, now)

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
