"""The control plane's HTTP API (JSON under /v1): every route is listed in `create_app`.

Handlers check the token, validate input, call the store, and return JSON; errors are
FoundryError subclasses turned into `{"error": ...}` in one handler. Long-polls
(routes, work, logs) hold the request until something they watch changes.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control import (
    api_apps,
    api_nodes,
    api_platform,
    api_push,
    bodies,
    converge,
)
from control.config import ControlConfig
from control.context import (
    Control,
    control_of,
)
from control.diskspace import full_message, is_disk_full
from control.errors import (
    FoundryError,
)
from control.schema import Body
from control.store import Store

log = logging.getLogger("foundry.control")


async def health(request: Request) -> Response:
    """Liveness of the control plane itself (no token needed)."""
    return JSONResponse({"ok": True, "revision": control_of(request).store.revision})


async def openapi(request: Request) -> Response:
    """This API described as OpenAPI 3."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        for method in sorted((route.methods or set()) - {"HEAD"}):
            doc = (route.endpoint.__doc__ or "").strip()
            paths.setdefault(route.path, {})[method.lower()] = {
                "summary": doc.splitlines()[0] if doc else route.name,
                "responses": {"200": {"description": "JSON"}},
                **_request_body(method, route.path),
            }
    return JSONResponse(
        {
            "openapi": "3.1.0",
            "info": {"title": "Foundry control API", "version": "1"},
            "paths": paths,
        }
    )


ROUTES = [
    Route("/v1/health", health),
    Route("/v1/openapi.json", openapi),
    Route("/v1/apps", api_apps.list_apps),
    Route("/v1/apps/{app}", api_apps.get_app),
    Route("/v1/apps/{app}", api_apps.delete_app, methods=["DELETE"]),
    Route("/v1/apps/{app}/builds", api_push.push, methods=["POST"]),
    Route("/v1/apps/{app}/scale", api_apps.scale, methods=["POST"]),
    Route("/v1/apps/{app}/wake", api_platform.wake, methods=["POST"]),
    Route("/v1/metrics", api_platform.metrics, methods=["POST"]),
    Route("/v1/apps/{app}/actions/{action}", api_apps.app_action, methods=["POST"]),
    Route("/v1/apps/{app}/env", api_apps.get_env),
    Route("/v1/apps/{app}/env", api_apps.patch_env, methods=["PATCH"]),
    Route("/v1/apps/{app}/releases", api_apps.list_releases),
    Route("/v1/apps/{app}/events", api_apps.list_events),
    Route("/v1/apps/{app}/rollback", api_apps.rollback, methods=["POST"]),
    Route("/v1/apps/{app}/routes", api_platform.map_route, methods=["POST"]),
    Route("/v1/apps/{app}/routes", api_platform.list_app_routes),
    Route("/v1/apps/{app}/routes", api_platform.unmap_route, methods=["DELETE"]),
    Route("/v1/apps/{app}/deployments", api_apps.list_deployments),
    Route("/v1/apps/{app}/deployments/cancel", api_apps.cancel_deploy, methods=["POST"]),
    Route("/v1/apps/{app}/logs", api_apps.read_logs),
    Route("/v1/builds/{build}", api_push.get_build),
    Route("/v1/apps/{app}/tasks", api_apps.run_task, methods=["POST"]),
    Route("/v1/tasks/{task}", api_apps.get_task),
    Route("/v1/tasks/{task}/result", api_nodes.task_result, methods=["POST"]),
    Route("/v1/buildpacks", api_push.list_buildpacks),
    Route("/v1/apps/{app}/buildpack", api_push.upload_buildpack, methods=["POST"]),
    Route("/v1/resources/match", api_push.match_resources, methods=["POST"]),
    Route("/v1/resources/listing", api_push.update_listing, methods=["POST"]),
    Route("/v1/resources", api_push.upload_resources, methods=["POST"]),
    Route("/v1/builds/{build}/result", api_nodes.build_result, methods=["POST"]),
    Route("/v1/routes", api_platform.routes),
    Route("/v1/tokens", api_platform.list_tokens),
    Route("/v1/tokens", api_platform.create_token, methods=["POST"]),
    Route("/v1/tokens/{token}", api_platform.revoke_token, methods=["DELETE"]),
    Route("/v1/nodes", api_nodes.list_nodes),
    Route("/v1/nodes/join", api_nodes.join, methods=["POST"]),
    Route("/v1/nodes/{node}/heartbeat", api_nodes.heartbeat, methods=["POST"]),
    Route("/v1/nodes/{node}/state", api_nodes.node_state, methods=["POST"]),
    Route("/v1/nodes/{node}", api_nodes.remove_node, methods=["DELETE"]),
    Route("/v1/nodes/{node}/work", api_nodes.work),
    Route("/v1/logs", api_nodes.post_logs, methods=["POST"]),
    Route("/v1/blobs/{digest}", api_nodes.get_blob),
    Route("/v1/blobs/{digest}", api_nodes.put_blob, methods=["PUT"]),
    Route("/git/{repo}/info/refs", api_push.git_info_refs),
    Route("/git/{repo}/{service}", api_push.git_rpc, methods=["POST"]),
]


# What each route's request body is: a JSON object of a shape in control/bodies.py, or an
# upload (a gzip'd tar, a droplet, git's protocol) checked as it streams. Every route
# with POST, PUT, PATCH or DELETE is in one of the three tables; the OpenAPI document and
# tests/component/test_api_hostile_bodies.py read them.
JSON_BODIES: dict[tuple[str, str], Body[Any]] = {
    ("POST", "/v1/apps/{app}/builds"): bodies.PUSH,  # with content-type application/json
    ("POST", "/v1/apps/{app}/scale"): bodies.SCALE,
    ("POST", "/v1/metrics"): bodies.METRICS,
    ("POST", "/v1/apps/{app}/actions/{action}"): bodies.RESTART,  # restart only, optional
    ("PATCH", "/v1/apps/{app}/env"): bodies.ENV_CHANGE,
    ("POST", "/v1/apps/{app}/rollback"): bodies.ROLLBACK,
    ("POST", "/v1/apps/{app}/routes"): bodies.MAP_ROUTE,
    ("DELETE", "/v1/apps/{app}/routes"): bodies.UNMAP_ROUTE,
    ("POST", "/v1/apps/{app}/tasks"): bodies.TASK,
    ("POST", "/v1/tasks/{task}/result"): bodies.TASK_RESULT,
    ("POST", "/v1/resources/match"): bodies.MATCH,
    ("POST", "/v1/resources/listing"): bodies.LISTING,
    ("POST", "/v1/builds/{build}/result"): bodies.BUILD_RESULT,
    ("POST", "/v1/tokens"): bodies.TOKEN,
    ("POST", "/v1/nodes/join"): bodies.JOIN,
    ("POST", "/v1/nodes/{node}/heartbeat"): bodies.HEARTBEAT,
    ("POST", "/v1/nodes/{node}/state"): bodies.NODE_STATE,
    ("POST", "/v1/logs"): bodies.LOGS,
}
UPLOADS = frozenset(
    {
        ("POST", "/v1/apps/{app}/builds"),  # a gzip'd tar, after an optional JSON config prefix
        ("POST", "/v1/apps/{app}/buildpack"),
        ("POST", "/v1/resources"),
        ("PUT", "/v1/blobs/{digest}"),
        ("POST", "/git/{repo}/{service}"),
    }
)
NO_BODY = frozenset(
    {
        ("DELETE", "/v1/apps/{app}"),
        ("POST", "/v1/apps/{app}/wake"),
        ("POST", "/v1/apps/{app}/deployments/cancel"),
        ("DELETE", "/v1/tokens/{token}"),
        ("DELETE", "/v1/nodes/{node}"),
    }
)


def _request_body(method: str, path: str) -> dict[str, Any]:
    """The OpenAPI requestBody of a route (empty when it takes none)."""
    content: dict[str, Any] = {}
    shape = JSON_BODIES.get((method, path))
    if shape is not None:
        fields = shape.spec.fields
        content["application/json"] = {
            "schema": {
                "type": "object",
                "properties": {k: {} for k in fields},
                "required": [k for k, f in fields.items() if f.required],
            }
        }
    if (method, path) in UPLOADS:
        content["application/octet-stream"] = {}
    return {"requestBody": {"content": content}} if content else {}


async def _foundry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FoundryError)
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {
        404: f"no such endpoint: {request.url.path}",
        405: f"method {request.method} not allowed on {request.url.path}",
    }
    return JSONResponse(
        {"error": message.get(exc.status_code, exc.detail)}, status_code=exc.status_code
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    if is_disk_full(exc):
        # A full disk is the operator's to fix, not a bug: one plain line, and no traceback.
        log.warning("disk-full path=%s error=%s", request.url.path, exc)
        home = control_of(request).config.home
        return JSONResponse({"error": full_message(exc, home)}, status_code=507)
    log.error("request-failed path=%s", request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal error; see the control plane's log"}, status_code=500)


def create_app(store: Store, config: ControlConfig, *, converge_loop: bool = True) -> Starlette:
    """The control plane as an ASGI app over `store`."""
    control = Control(store, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            if converge_loop:
                tasks.start_soon(
                    converge.run,
                    store,
                    control.notifier,
                    config.policy,
                    control.scaling,
                    control.blobs,
                )
            yield
            tasks.cancel_scope.cancel()

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={
            FoundryError: _foundry_error,
            HTTPException: _http_error,
            # here (not only under Exception) so a full disk is answered without the
            # server logging a traceback for it
            OSError: _unexpected,
            sqlite3.Error: _unexpected,
            Exception: _unexpected,
        },
    )
    app.state.control = control
    return app
