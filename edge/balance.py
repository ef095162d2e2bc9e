"""Which instance gets the next request: rotation, in-flight counts, ejection, pinning.

Pure state over `Route`s, with the clock passed in; the proxy reports what happened
(`started`, `finished`, `failed`) and asks for `candidates`.

Rules kept here:
  * Round-robin is the default: each request starts one further along the route's
    backends. "least-in-flight" orders by requests (and open websocket tunnels)
    in flight through this worker, with the rotation breaking ties; the proxy
    reports `started`/`finished` only for routes balanced that way.
  * A backend whose connection failed is ejected for `eject_seconds`: it goes to
    the back of the list rather than out of it, so a route whose every instance
    failed recently is still tried instead of answered 502 unasked.
  * A pinned instance (from the sticky cookie) goes first when it is still in the
    route and not ejected; otherwise pinning is ignored and balancing decides.
  * State is keyed by route key and by backend, outside the immutable tables, so
    it survives table refreshes; `forget_missing` drops what a table no longer has.
"""

from __future__ import annotations

from edge.routes import Backend, Route, RouteTable

BALANCE = "round-robin"  # the default mode, which needs no sorting


class Balancer:
    """Balancing state for one edge worker."""

    def __init__(self, *, eject_seconds: float = 10.0) -> None:
        self._eject_seconds = eject_seconds
        self._next: dict[tuple[str, str], int] = {}
        self._in_flight: dict[Backend, int] = {}
        self._ejected_until: dict[Backend, float] = {}

    def candidates(
        self, route: Route, limit: int, *, now: float = 0.0, pinned: str | None = None
    ) -> list[Backend]:
        """Up to `limit` distinct backends to try, best first; advances the route's turn."""
        count = len(route.backends)
        if count == 0 or limit <= 0:
            return []
        if count == 1:
            return list(route.backends)  # nothing to rotate or sort
        key = route.key
        start = self._next.get(key, 0) % count
        self._next[key] = start + 1
        order = [*route.backends[start:], *route.backends[:start]]
        plain = route.options.balance == BALANCE and not (pinned or self._ejected_until)
        if plain:
            return order[:limit]
        if route.options.balance == "least-in-flight":
            order.sort(key=lambda b: self._in_flight.get(b, 0))
        if self._ejected_until:
            order.sort(key=lambda b: self.is_ejected(b, now))
        if pinned and route.options.sticky:
            for backend in order:
                if backend.instance == pinned and not self.is_ejected(backend, now):
                    order.remove(backend)
                    order.insert(0, backend)
                    break
        return order[:limit]

    def is_ejected(self, backend: Backend, now: float) -> bool:
        """Whether `backend` failed recently enough to be tried last."""
        until = self._ejected_until.get(backend)
        if until is None:
            return False
        if now >= until:
            del self._ejected_until[backend]
            return False
        return True

    def failed(self, backend: Backend, now: float) -> None:
        """`backend` refused or timed out a connection at `now`."""
        self._ejected_until[backend] = now + self._eject_seconds

    def started(self, backend: Backend) -> None:
        """A request (or tunnel) to `backend` began."""
        self._in_flight[backend] = self._in_flight.get(backend, 0) + 1

    def finished(self, backend: Backend) -> None:
        """A request (or tunnel) to `backend` ended."""
        left = self._in_flight.get(backend, 0) - 1
        if left > 0:
            self._in_flight[backend] = left
        else:
            self._in_flight.pop(backend, None)

    def in_flight(self, backend: Backend) -> int:
        """Requests and tunnels to `backend` in flight now."""
        return self._in_flight.get(backend, 0)

    def forget_missing(self, table: RouteTable) -> None:
        """Drop rotation and ejection state the table no longer needs."""
        live = {route.key for route in table.routes}
        for key in [key for key in self._next if key not in live]:
            del self._next[key]
        backends = {b for route in table.routes for b in route.backends}
        for backend in [b for b in self._ejected_until if b not in backends]:
            del self._ejected_until[backend]
