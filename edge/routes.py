"""The routing table: which app answers a (host, path), and which instance gets the next request.

Owns the pure side of routing: parsing the control plane's route JSON into a frozen
`RouteTable`, looking a request up in it, and the round-robin `Balancer`.

Rules kept here:
  * Host names are compared case-insensitively; a `:port` suffix and a trailing dot in
    the Host header are ignored, so `Hello.localhost:8080` finds `hello.localhost`.
  * A route's path is a prefix on segment boundaries: `/a` matches `/a` and `/a/x`
    but never `/ab`. When several prefixes match, the longest wins; `/` (or an empty
    path) matches everything.
  * A route with no backends is still a known host: the edge answers 503, not 404,
    unless the route is `wakeable` (its app scales to zero): then the edge holds
    the request and asks for a wake (`edge.wake`).
  * Tables are immutable and replaced whole. Balancing state lives outside them
    (`edge.balance`), so a refreshed table keeps each route's rotation going.
  * A route's `options` default to round-robin, a 900 s backend timeout (as
    gorouter) and sticky sessions; unknown option keys are ignored, bad values
    are a RouteTableError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol


class RouteTableError(ValueError):
    """The control plane sent route data this edge cannot understand."""


@dataclass(frozen=True)
class Backend:
    """One running instance: where to connect (`"127.0.0.1:40123"`) and its id."""

    address: str
    instance: str

    @property
    def host(self) -> str:
        """The host part of `address`, without IPv6 brackets."""
        return split_address(self.address)[0]

    @property
    def port(self) -> int:
        """The port part of `address`."""
        return split_address(self.address)[1]


BALANCE_MODES = ("round-robin", "least-in-flight")


@dataclass(frozen=True)
class RouteOptions:
    """How one route balances, how long its backend may take, and whether it pins."""

    balance: str = "round-robin"
    timeout: float = 900.0  # seconds for the response head, then between body reads
    sticky: bool = True

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> RouteOptions:
        """Options from the control plane's `"options"` object (absent: defaults)."""
        if not data:
            return cls()
        balance = str(data.get("balance") or "round-robin")
        if balance not in BALANCE_MODES:
            raise ValueError(f"unknown balance mode {balance!r}")
        timeout = float(data.get("timeout") or 900.0)
        if not timeout > 0:
            raise ValueError(f"route timeout must be positive, not {timeout!r}")
        sticky = data.get("sticky", True)
        if not isinstance(sticky, bool):
            raise ValueError(f"sticky must be true or false, not {sticky!r}")
        return cls(balance=balance, timeout=timeout, sticky=sticky)


DEFAULT_OPTIONS = RouteOptions()


@dataclass(frozen=True)
class Route:
    """Requests for `host` under `path` go to one of `backends` of `app`."""

    host: str
    path: str
    app: str
    backends: tuple[Backend, ...]
    options: RouteOptions = DEFAULT_OPTIONS
    wakeable: bool = False  # the app may be at zero: hold requests and wake it

    @cached_property
    def key(self) -> tuple[str, str]:
        """What identifies this route across table refreshes."""
        return (self.host, self.path)


@dataclass(frozen=True)
class RouteTable:
    """An immutable routing table; `etag` names the control plane's version of it."""

    routes: tuple[Route, ...] = ()
    etag: str = ""
    # host -> its routes, longest path prefix first; derived from `routes`.
    _by_host: Mapping[str, tuple[Route, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        by_host: dict[str, list[Route]] = {}
        for route in self.routes:
            by_host.setdefault(route.host, []).append(route)
        ordered = {
            host: tuple(sorted(routes, key=lambda r: len(r.path), reverse=True))
            for host, routes in by_host.items()
        }
        object.__setattr__(self, "_by_host", ordered)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RouteTable:
        """Build a table from `{"etag": ..., "routes": [...]}`; RouteTableError if malformed."""
        try:
            etag = str(data.get("etag") or "")
            routes = tuple(_route_from_json(item) for item in data["routes"])
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise RouteTableError(f"malformed route table: {error!r}") from error
        return cls(routes=routes, etag=etag)

    def lookup(self, host: str, path: str) -> Route | None:
        """The route serving `path` on `host` (a raw Host header value), or None."""
        for route in self.host_routes(host):
            if path_has_prefix(path, route.path):
                return route
        return None

    def host_routes(self, host: str) -> tuple[Route, ...]:
        """The routes of `host` (a raw Host header value), longest path prefix first."""
        return tuple(self._by_host.get(normalize_host(host), ()))


class RouteSource(Protocol):
    """Anything that can hand the proxy the current table (RouteSync, StaticSource)."""

    @property
    def table(self) -> RouteTable: ...

    async def changed(self, since: RouteTable) -> None:
        """Return once `table` is no longer `since`."""
        ...


def normalize_host(host: str) -> str:
    """Lower-case `host` and drop any `:port` and trailing dot (`[::1]:80` -> `[::1]`)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        host = host[: end + 1] if end != -1 else host
    else:
        host = host.partition(":")[0]
    return host.rstrip(".")


def normalize_prefix(path: str) -> str:
    """A route path as stored: leading slash, no trailing slash, `/` for the root."""
    path = "/" + path.strip("/")
    return path


def path_has_prefix(path: str, prefix: str) -> bool:
    """Whether `prefix` matches `path` on a segment boundary."""
    if prefix == "/":
        return True
    return path == prefix or path.startswith(prefix + "/")


def split_address(address: str) -> tuple[str, int]:
    """Split `"host:port"` or `"[v6]:port"` into its parts; ValueError if there is no port."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"backend address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def _route_from_json(item: Mapping[str, Any]) -> Route:
    backends = tuple(
        Backend(address=str(b["address"]), instance=str(b.get("instance", "")))
        for b in item.get("backends") or ()
    )
    for backend in backends:
        split_address(backend.address)
    host = normalize_host(str(item["host"]))
    if not host:
        raise ValueError("route without a host")
    return Route(
        host=host,
        path=normalize_prefix(str(item.get("path") or "/")),
        app=str(item["app"]),
        backends=backends,
        options=RouteOptions.from_json(item.get("options")),
        wakeable=item.get("wakeable") is True,
    )
