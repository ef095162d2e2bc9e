"""The routing table the edges long-poll: host (+ path) -> running web instances.

Every app with a `web` process type owns `<app>.<domain>`, whether or not anything
runs (the edge answers 503, not 404, for a known app with no instance). An instance
is routable once its node reports it RUNNING and until the control plane asks it to
stop. The control API itself is routed at `api.<domain>`. Routes added with
`map-route` (any host, optional path prefix, balancing/timeout/sticky options) lead to
the same backends as the app's own host. A route marked `wakeable` belongs to an app
that scales to zero: with no backend, the edge holds the request and asks the control
plane to wake the app (POST /v1/apps/<app>/wake) instead of answering 503. The etag is a hash of the
table, so an edge that already has it waits instead of re-downloading.
"""

from __future__ import annotations

import hashlib
import json

from control.model import AppSpec, InstanceState
from control.rows import InstanceRow, MappedRoute
from control.wire_edge import Backend, Route, RouteTable


def routing_table(
    apps: list[AppSpec],
    instances: list[InstanceRow],
    domain: str,
    api_address: str | None,
    mapped: list[MappedRoute] | None = None,
    wakeable: frozenset[str] = frozenset(),
) -> RouteTable:
    """Build the table and its etag from desired apps and instance rows."""
    backends: dict[str, list[Backend]] = {}
    for row in instances:
        if (
            row["process"] == "web"
            and row["state"] == InstanceState.RUNNING
            and not row["stopping"]
            and row["port"]
        ):
            backends.setdefault(row["app"], []).append(
                {"address": f"{row['address']}:{row['port']}", "instance": row["id"]}
            )
    routes: list[Route] = []
    if api_address:
        routes.append(
            {
                "host": f"api.{domain}",
                "path": "/",
                "app": "api",
                "backends": [{"address": api_address, "instance": "control"}],
            }
        )
    for app in sorted(apps, key=lambda a: a.name):
        if "web" in app.processes or app.release == 0:
            route: Route = {
                "host": f"{app.name}.{domain}",
                "path": "/",
                "app": app.name,
                "backends": sorted(backends.get(app.name, []), key=lambda b: b["instance"]),
            }
            if app.name in wakeable:
                route["wakeable"] = True
            routes.append(route)
    web = {a.name for a in apps if "web" in a.processes or a.release == 0}
    for mapped_route in mapped or []:
        if mapped_route["app"] in web:
            app_name = mapped_route["app"]
            extra: Route = {
                "host": mapped_route["host"],
                "path": mapped_route["path"],
                "app": app_name,
                "options": mapped_route["options"],
                "backends": sorted(backends.get(app_name, []), key=lambda b: b["instance"]),
            }
            if app_name in wakeable:
                extra["wakeable"] = True
            routes.append(extra)
    body = json.dumps(routes, sort_keys=True).encode()
    return {"etag": hashlib.sha256(body).hexdigest()[:16], "routes": routes}
