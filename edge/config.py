"""The edge's configuration: one frozen dataclass built in `main` and passed down.

Defaults follow the issue's contract: 10 s to send a request head (slowloris),
64 KiB of headers, 100 MiB of body, 900 s for a backend to answer unless the route
says otherwise, and one worker process per core.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property

from edge.http import Limits


@dataclass(frozen=True)
class EdgeConfig:
    """How an edge listens, where its routes come from, and the limits it enforces."""

    host: str
    port: int
    control_url: str | None
    token: str | None
    connect_timeout: float = 5.0
    # Ceiling on every route's own timeout (for the response head, then between
    # body reads); a route's "timeout" option (default 900 s) applies below it.
    response_timeout: float = 900.0
    idle_timeout: float = 60.0  # keep-alive wait for a next request; gaps in a request body
    header_timeout: float = 10.0  # from a request head's first byte to its last
    max_attempts: int = 3
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_body_bytes: int | None = 100 * 1024 * 1024
    scheme: str = "http"  # what X-Forwarded-Proto says
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-* headers are believed
    workers: int = 0  # worker processes sharing the port; 0 means one per core
    drain_timeout: float = 10.0  # on stop: how long in-flight work may go on
    eject_seconds: float = 10.0  # a backend that refused a connection is tried last this long
    pool_idle_timeout: float = 4.0  # idle upstream keep-alive connections are closed after this
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None  # GET /healthz is served here, apart from app traffic
    ship_access_logs: bool = False  # also POST access lines to the control plane's /v1/logs
    wake_timeout: float = 30.0  # how long a request for an app at zero is held, then 503
    max_held: int = 1000  # requests held per app while it wakes; more get 503 at once
    metrics_interval: float = 0.5  # how often per-app concurrency is reported to control

    @cached_property
    def limits(self) -> Limits:
        """The per-message limits both parsers enforce."""
        return Limits(self.max_header_bytes, self.max_headers, self.max_body_bytes)

    @cached_property
    def _trusted(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in self.trusted_proxies)

    def is_trusted(self, peer_ip: str) -> bool:
        """Whether `peer_ip` is a proxy whose X-Forwarded-* headers are believed."""
        if not self.trusted_proxies:
            return False
        try:
            address = ipaddress.ip_address(peer_ip)
        except ValueError:
            return False
        return any(address in network for network in self._trusted)
