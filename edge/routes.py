"""The routing table: which app answers a (host, path), and which instance gets the next request.

Owns the pure side of routing: parsing the control plane's route JSON into a frozen
`RouteTable`, looking a request up in it, and the round-robin `Balancer`.

Rules kept here:
  * Host names are compared case-insensitively; a `:port` suffix and a trailing dot in
    the Host header are ignored, so `Hello.localhost:8080` finds `hello.localhost`.
  * A route's path is a prefix on segment boundaries: `/a` matches `/a` and `/a/x`
    but never `/ab`. When several prefixes match, the longest wins; `/` (or an empty
    path) matches everything. Paths are case-sensitive (RFC 3986 6.2.2.1).
  * Prefixes are matched against the request path in normal form (`normalize_path`),
    and that normal form is what the backend is sent (`routable_target`): percent-
    escapes of unreserved characters decoded (so `%2e` is a dot) and the others
    upper-cased, runs of `/` merged, then dot segments removed (RFC 3986 5.2.4), so
    `/api/../admin` and `/api/%2e%2e/admin` both route, and arrive, as `/admin`.
    Why normalise and forward rather than refuse dot segments with 400: the two are
    equally safe for routing, but forwarding the matched path also means the
    backend can never read the path another way than the edge routed it (the normal
    form is a fixed point of the usual server-side clean-ups: decoding unreserved
    escapes, merging slashes, resolving dots), and clients that send `./` or `//`
    (scripts, some crawlers) keep working, as with nginx. `%2F` is never decoded: it
    is data inside a segment, not a separator. `//` is merged (nginx's default)
    because a backend that merges it would otherwise read `/api//../x` as `/x` while
    the edge routed it under `/api`. Refused with 400 (`PathError`): a backslash
    (no URI contains one, and some servers read it as `/`), a `#` (a fragment is
    never sent, RFC 9112 3.2) and a malformed escape (`%zz`). `;` parameters are
    opaque segment text, as RFC 3986 has them.
  * A route path is brought to the same normal form; one with dot segments (say
    `/x/%2e%2e`, which would otherwise become `/`) is kept as given and so matches
    no request, since no normal path holds a dot segment or a `%2E`.
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

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol


class RouteTableError(ValueError):
    """The control plane sent route data this edge cannot understand."""


class PathError(ValueError):
    """A request path the edge refuses to route (answered with 400)."""


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
    """A route path as stored: in normal form, leading slash, no trailing slash, `/` for
    the root; as given (matching nothing) if it holds dot segments or is malformed."""
    path = "/" + path.strip("/")
    try:
        clean = _clean(path.encode("latin-1"))
    except (PathError, UnicodeEncodeError):
        return path
    if _without_dot_segments(clean) != clean:
        return path
    return clean.decode("latin-1").rstrip("/") or "/"


# What a target holds if `routable_target` may have to change or refuse it: a
# percent-escape, a backslash, a `#`, a `/.` or a `//` (in its query too, to keep
# the test one search). A target without any is already in normal form.
UNUSUAL_TARGET = re.compile(rb"[%\\#]|/[./]")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})?")
# An escape `_canonical_escape` would change: malformed, lower-case, or unreserved.
_ESCAPE_TO_CHANGE = re.compile(rb"%(?![0-9A-F]{2})|%(?:[46][1-9A-F]|[57][0-9A]|3[0-9]|2[DE]|5F|7E)")
_SLASHES = re.compile(rb"//++")


def normalize_path(path: bytes) -> bytes:
    """`path` (origin-form, starting with `/`, no query) in the normal form routes
    match; PathError if it is refused."""
    if b"\\" in path:
        raise PathError("backslash in the request path")
    if b"#" in path:
        raise PathError("fragment (#) in the request target")
    return _without_dot_segments(_clean(path))


def routable_target(target: bytes) -> tuple[bytes, bytes]:
    """(path to route by, target to forward) for an origin-form request `target`; the
    query is kept as sent. PathError if the path is refused."""
    if UNUSUAL_TARGET.search(target) is None:  # the commonest case: nothing to do
        return target.partition(b"?")[0], target
    if not target.startswith(b"/"):
        return target, target  # `*` (OPTIONS): nothing to normalise
    path, sep, query = target.partition(b"?")
    if b"#" in query:
        raise PathError("fragment (#) in the request target")
    normal = normalize_path(path)
    return normal, target if normal == path else normal + sep + query


def _clean(path: bytes) -> bytes:
    """`path` with canonical percent-escapes and no runs of `/`."""
    if b"%" in path and _ESCAPE_TO_CHANGE.search(path):
        path = _ESCAPE.sub(_canonical_escape, path)
    if b"//" in path:
        path = _SLASHES.sub(b"/", path)
    return path


def _canonical_escape(match: re.Match[bytes]) -> bytes:
    """An unreserved character for its escape, or the escape with upper-case digits."""
    digits = match.group(1)
    if digits is None:
        raise PathError("malformed percent-escape in the request path")
    byte = int(digits, 16)
    return bytes((byte,)) if byte in _UNRESERVED else b"%" + digits.upper()


def _without_dot_segments(path: bytes) -> bytes:
    """RFC 3986 5.2.4 on a path without runs of `/`: `.` goes, `..` takes the segment
    before it (never above the root), a trailing one leaves a trailing `/`."""
    if b"/." not in path:
        return path
    segments = path.split(b"/")[1:]
    kept: list[bytes] = []
    for segment in segments:
        if segment == b"..":
            if kept:
                kept.pop()
        elif segment != b".":
            kept.append(segment)
    if segments[-1] in (b".", b".."):
        kept.append(b"")
    return b"/" + b"/".join(kept)


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
