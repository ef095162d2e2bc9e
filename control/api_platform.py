"""API handlers for the platform around apps: routes (the edges' table, map/unmap),
tokens, and the edges' concurrency reports and wake calls.

Route rules (control.policy): a host belongs to the app that claimed it first; the
routing table a caller reads holds only its apps' routes, with backend addresses for
infrastructure tokens only."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from control.auth import APP_KINDS, READ_KINDS, require, scope_of
from control.bodies import MAP_ROUTE, METRICS, TOKEN, UNMAP_ROUTE, MapRouteBody
from control.context import (
    Control,
    app_call,
    app_name,
    control_of,
    json_body,
)
from control.errors import (
    BadRequest,
    Conflict,
    Forbidden,
)
from control.policy import MappedRoute, route_claim_problem, scoped_table
from control.routing import routing_table
from control.scaling import settings_of
from control.wire_edge import RouteOptions


def _route_options(body: MapRouteBody) -> RouteOptions:
    options: RouteOptions = {}
    if "balance" in body:
        options["balance"] = body["balance"]
    if "timeout" in body:
        options["timeout"] = body["timeout"]
    if "sticky" in body:
        options["sticky"] = body["sticky"]
    return options


def _route_target(ctl: Control, route: tuple[str, str]) -> tuple[str, str]:
    host, path = route
    if host == f"api.{ctl.config.domain}":
        raise Conflict(f"{host} is the control API's own route")
    return host, path


async def map_route(request: Request) -> Response:
    """Route HOST[/PATH] to an app: {"route": ..., "balance"?, "timeout"?, "sticky"?}."""
    ctl, name, token = app_call(request, APP_KINDS)
    body = await json_body(request, MAP_ROUTE)
    host, path = _route_target(ctl, body["route"])
    ctl.store.get_app(name)
    if (host, path) == (f"{name}.{ctl.config.domain}", "/"):
        raise Conflict(f"{host} is already {name}'s own route")
    options = _route_options(body)
    # Decided and written with no await in between: no other request can claim the
    # host in the gap (the store is used from this one event loop).
    claims = [
        MappedRoute(r["host"], r["path"], r["app"], r["created_at"])
        for r in ctl.store.routes_on_host(host)
    ]
    problem = route_claim_problem(host, ctl.config.domain, claims, scope_of(token))
    if problem:
        raise Forbidden(problem)
    ctl.store.map_route(name, host, path, options)
    ctl.store.add_event(name, "route-mapped", f"{host}{path}", token.id)
    return JSONResponse({"routes": ctl.store.mapped_routes(name)})


async def list_app_routes(request: Request) -> Response:
    """Routes added to an app with map-route (its default route is implicit)."""
    ctl, name, _ = app_call(request, READ_KINDS, exists=True)
    return JSONResponse({"routes": ctl.store.mapped_routes(name)})


async def unmap_route(request: Request) -> Response:
    """Remove a route added with map-route: {"route": "HOST[/PATH]"}."""
    ctl, name, token = app_call(request, APP_KINDS)
    host, path = _route_target(ctl, (await json_body(request, UNMAP_ROUTE))["route"])
    ctl.store.unmap_route(name, host, path)
    ctl.store.add_event(name, "route-unmapped", f"{host}{path}", token.id)
    return JSONResponse({"routes": ctl.store.mapped_routes(name)})


async def create_token(request: Request) -> Response:
    """Mint a token: {kind, apps?, ttl?, uses?, label?}; the secret is shown only here."""
    ctl = control_of(request)
    caller = require(request, ctl.store, ("admin",))
    body = await json_body(request, TOKEN)
    kind = body["kind"]
    apps = body.get("apps")
    if apps is not None and kind not in ("deploy", "read"):
        raise BadRequest("apps limits deploy and read tokens, as a non-empty list")
    tid, secret = ctl.store.create_token(
        kind, apps=apps, ttl=body.get("ttl"), uses=body.get("uses"), label=body.get("label") or None
    )
    ctl.store.add_event(None, "token-created", f"{kind} token {tid}", caller.id)
    if kind == "join" and ctl.config.tls_fingerprint:
        secret = f"{secret}#{ctl.config.tls_fingerprint}"  # the node pins this certificate
    return JSONResponse({"id": tid, "kind": kind, "token": secret}, status_code=201)


async def list_tokens(request: Request) -> Response:
    """Tokens without their secrets."""
    ctl = control_of(request)
    require(request, ctl.store, ("admin",))
    return JSONResponse({"tokens": ctl.store.list_tokens()})


async def revoke_token(request: Request) -> Response:
    """Revoke a token by id: it stops working at once."""
    ctl = control_of(request)
    caller = require(request, ctl.store, ("admin",))
    tid = request.path_params["token"]
    ctl.store.revoke_token(tid)
    ctl.store.add_event(None, "token-revoked", f"token {tid}", caller.id)
    return JSONResponse({"revoked": tid})


async def routes(request: Request) -> Response:
    """The routing table; answers at once if ?etag differs, else holds up to ?wait."""
    ctl = control_of(request)
    token = require(request, ctl.store, (*READ_KINDS, "edge"))
    scope = scope_of(token)
    etag = request.query_params.get("etag", "")

    def view() -> dict[str, Any]:
        return scoped_table(_table(ctl), token.kind, scope)

    def table() -> dict[str, Any] | None:
        current = view()
        return current if current["etag"] != etag else None

    current = await ctl.wait(request, table)
    return JSONResponse(current or view())


def _table(ctl: Control) -> dict[str, Any]:
    wakeable = frozenset(
        a["name"]
        for a in ctl.store.autoscale_rows()
        if (s := settings_of(a["autoscale"])) is not None and s.min == 0
    )
    return dict(
        routing_table(
            ctl.store.app_specs(),
            ctl.store.instance_rows(),
            ctl.config.domain,
            ctl.config.api_address,
            ctl.store.mapped_routes(),
            wakeable,
        )
    )


async def wake(request: Request) -> Response:
    """An edge holds a request for an app at zero: bring up one instance (idempotent)."""
    ctl = control_of(request)
    name = app_name(request)
    token = require(request, ctl.store, ("edge", "admin"))
    waking = ctl.scaling.wake(name, token.id)
    return JSONResponse({"app": name, "waking": waking})


async def metrics(request: Request) -> Response:
    """An edge reports concurrency: {"apps": {app: {"in_flight": n, "tunnels": m}}}."""
    ctl = control_of(request)
    require(request, ctl.store, ("edge", "admin"))
    body = await json_body(request, METRICS)
    reporter = body.get("reporter", "")
    for name, sample in body["apps"].items():
        ctl.scaling.record(name, sample.get("in_flight", 0.0), sample.get("tunnels", 0), reporter)
    return JSONResponse({"ok": True})
