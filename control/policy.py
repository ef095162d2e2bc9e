"""Who may see and claim what: pure decisions over a token's scope, no I/O.

A scope is the set of apps a token may act on, or None for every app (admin tokens,
and deploy/read tokens minted without an app list). Rules kept here:

* Hosts belong to whoever claimed them first, as in Cloud Controller. The default
  host `<name>.<domain>` is claimed by the app called `<name>` whether or not it exists
  yet (app names are DNS labels, so that host can only ever be that app's); any other
  host belongs to the app of the earliest route mapped on it. Mapping any path under a
  host owned by an app outside the caller's scope is refused.
* Backend addresses, node rows and the control API's own route are infrastructure:
  only admin, edge and unscoped read tokens (the read-only admin) see them.
* A scoped caller's view of the routing table holds only its apps' routes, and its
  etag is computed over that view, so other apps' changes do not show through it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MappedRoute:
    """A route added with map-route; `created` orders claims on one host."""

    host: str
    path: str
    app: str
    created: float


def may_access(scope: frozenset[str] | None, app: str) -> bool:
    """Whether a token with `scope` may act on (and see) `app`."""
    return scope is None or app in scope


def sees_infrastructure(kind: str, scope: frozenset[str] | None) -> bool:
    """Whether a token sees backend addresses and nodes: admin, edge, or read-only admin."""
    return kind in ("admin", "edge") or (kind == "read" and scope is None)


def host_owner(host: str, domain: str, mapped: Iterable[MappedRoute]) -> str | None:
    """The app that owns `host`, or None while nobody has claimed it."""
    name, dot, rest = host.partition(".")
    if dot and rest == domain:
        return name
    on_host = sorted((r for r in mapped if r.host == host), key=lambda r: (r.created, r.path))
    return on_host[0].app if on_host else None


def route_claim_problem(
    host: str, domain: str, mapped: Iterable[MappedRoute], scope: frozenset[str] | None
) -> str | None:
    """Why a caller with `scope` may not map a route under `host`, or None when it may."""
    owner = host_owner(host, domain, mapped)
    if owner is None or may_access(scope, owner):
        return None
    return f"host {host} is reserved for another owner"


def scoped_table(table: dict[str, Any], kind: str, scope: frozenset[str] | None) -> dict[str, Any]:
    """The routing table ({etag, routes}) as a caller sees it, with an etag of exactly
    that view: only routes of apps in its scope, and backends reduced to instance ids
    (their count stays visible) unless it sees infrastructure."""
    if sees_infrastructure(kind, scope):
        return table
    view = [
        {**r, "backends": [{"instance": b["instance"]} for b in r["backends"]]}
        for r in table["routes"]
        if r["app"] != "api" and may_access(scope, r["app"])
    ]
    body = json.dumps(view, sort_keys=True).encode()
    return {"etag": hashlib.sha256(body).hexdigest()[:16], "routes": view}
