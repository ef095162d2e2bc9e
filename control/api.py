"""The control plane's HTTP API (JSON under /v1): every route is listed in `create_app`.

Handlers check the token, validate input, call the store, and return JSON; errors are
FoundryError subclasses turned into `{"error": ...}` in one handler. Long-polls
(routes, work, logs) hold the request until something they watch changes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from control import converge, gitserve, releases, resources
from control.auth import APP_KINDS, READ_KINDS, require, require_node
from control.autoscaler import Settings
from control.blobs import BlobStore
from control.config import ControlConfig
from control.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    FoundryError,
    NotFound,
    TooLarge,
    Unauthorized,
    Unprocessable,
)
from control.heartbeats import apply_heartbeat
from control.names import (
    app_name_problem,
    env_name_problem,
    parse_memory,
    parse_route,
    process_name_problem,
)
from control.notify import Notifier
from control.routing import routing_table
from control.scaling import Scaling, settings_of
from control.store import Store
from control.uploads import check_archive
from packs import ordered_names

log = logging.getLogger("foundry.control")


class Control:
    """The objects every handler needs."""

    def __init__(self, store: Store, config: ControlConfig) -> None:
        self.store = store
        self.config = config
        self.blobs = BlobStore(config.home / "blobs")
        self.notifier = Notifier()
        self.log_notifier = Notifier()
        self.asked_to_stop: dict[str, set[str]] = {}
        self.scaling = Scaling(store)
        store.on_change = self._state_changed
        store.on_logs = self.log_notifier.changed

    def _state_changed(self) -> None:
        # Log followers wake on state changes too: a build that ends is news to them.
        self.notifier.changed()
        self.log_notifier.changed()

    async def wait(self, request: Request, check: Any, logs: bool = False) -> Any:
        """Call `check()` until it returns something truthy or the requested wait ends."""
        wait = _float(request, "wait", 0.0, 0.0, self.config.long_poll_max)
        deadline = anyio.current_time() + wait
        notifier = self.log_notifier if logs else self.notifier
        while True:
            event = notifier.snapshot()
            result = check()
            remaining = deadline - anyio.current_time()
            if result or remaining <= 0:
                return result
            await Notifier.wait(event, remaining)


def _ctl(request: Request) -> Control:
    ctl: Control = request.app.state.control
    return ctl


def _float(request: Request, key: str, default: float, lo: float, hi: float) -> float:
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return default
    try:
        return min(max(float(raw), lo), hi)
    except ValueError:
        raise BadRequest(f"query parameter {key!r} must be a number") from None


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{what} must be a whole number") from None
    if not lo <= number <= hi:
        raise BadRequest(f"{what} must be between {lo} and {hi}")
    return number


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _app_name(request: Request) -> str:
    name: str = request.path_params["app"]
    problem = app_name_problem(name)
    if problem:
        raise Unprocessable(problem)
    return name


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BadRequest(f"config var {pair!r} must look like KEY=VALUE")
        problem = env_name_problem(key)
        if problem:
            raise BadRequest(problem)
        env[key] = value
    return env


# --- apps ---------------------------------------------------------------------------
def app_view(ctl: Control, app: dict[str, Any]) -> dict[str, Any]:
    """An app with its current release and instances, as `foundry app` shows it."""
    now = ctl.store.clock()
    instances = [{
        "id": r["id"], "process": r["process"], "index": r["idx"], "release": r["release"],
        "state": "STOPPING" if r["stopping"] else r["state"], "node": r["node"],
        "address": r["address"], "port": r["port"], "restarts": r["restarts"],
        "reason": r["reason"],
        "uptime": round(now - r["started_at"], 1) if r["started_at"] and r["state"] == "RUNNING"
        else None,
    } for r in ctl.store.instance_rows(app=app["name"])]
    return {"name": app["name"], "state": "started" if app["started"] else "stopped",
            "release": app["release"], "memory_mb": app["memory_mb"], "scale": app["scale"],
            "url": ctl.config.apps_url.format(app=app["name"]), "instances": instances,
            "processes": _processes(ctl, app),
            "health_check": app["health_check"], "max_in_flight": app["max_in_flight"],
            "autoscale": json.loads(app["autoscale"]) if app["autoscale"] else None,
            "last_cold_start": app["last_cold_start"],
            "created_at": app["created_at"]}


def _processes(ctl: Control, app: dict[str, Any]) -> dict[str, str]:
    if not app["release"]:
        return {}
    processes: dict[str, str] = ctl.store.get_release(app["name"], app["release"])["processes"]
    return processes


async def list_apps(request: Request) -> Response:
    """List apps with their instances."""
    ctl = _ctl(request)
    token = require(request, ctl.store, READ_KINDS)
    apps = [app_view(ctl, a) for a in ctl.store.list_apps()
            if token.apps is None or a["name"] in token.apps]
    return JSONResponse({"apps": apps})


async def get_app(request: Request) -> Response:
    """Show one app (long-polls with ?wait=N&revision=R until the view changes)."""
    ctl = _ctl(request)
    name = _app_name(request)
    require(request, ctl.store, READ_KINDS, app=name)
    since = request.query_params.get("revision")
    await ctl.wait(request, lambda: str(ctl.store.revision) != since)
    body = app_view(ctl, ctl.store.get_app(name))
    body["revision"] = str(ctl.store.revision)
    return JSONResponse(body)


async def delete_app(request: Request) -> Response:
    """Delete an app: its routes go at once, its instances are stopped."""
    ctl = _ctl(request)
    name = _app_name(request)
    token = require(request, ctl.store, APP_KINDS, app=name)
    ctl.store.delete_app(name)
    ctl.store.add_event(None, "app-deleted", f"app {name} deleted", token.id)
    return JSONResponse({"deleted": name})


async def push(request: Request) -> Response:
    """Upload a source package (gzip'd tar body): creates the app if needed, queues a build."""
    ctl = _ctl(request)
    name = _app_name(request)
    token = require(request, ctl.store, APP_KINDS, app=name)
    q = request.query_params
    settings: dict[str, Any] = {}
    if "instances" in q:
        settings["scale"] = {"web": _int(q["instances"], "instances", 0, 100)}
    if "memory" in q:
        try:
            settings["memory_mb"] = parse_memory(q["memory"])
        except ValueError as e:
            raise BadRequest(str(e)) from None
    if "max_in_flight" in q:
        settings["max_in_flight"] = _int(q["max_in_flight"], "max_in_flight", 1, 100)
    if "health_check" in q:
        settings["health_check"] = _health_check(q["health_check"])
    env = _env_pairs(q.getlist("env"))
    options = _build_options(ctl, q)
    if request.headers.get("content-type", "").startswith("application/json"):
        digest = await _assemble_source(ctl, request)   # resource matching
    else:
        digest = await _receive_source(ctl, request)
    created = _save_push_settings(ctl, name, settings, env)
    if q.get("replace_env") == "1" and not created:   # push --strict: exactly these vars
        ctl.store.update_app(name, env=env)
    build = ctl.store.create_build(name, digest, options)
    ctl.store.add_event(name, "build-queued", f"build {build} queued", token.id)
    return JSONResponse({"app": name, "build": build, "created": created}, status_code=201)


async def _receive_source(ctl: Control, request: Request) -> str:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > ctl.config.max_upload:
        raise TooLarge(f"upload is larger than the {ctl.config.max_upload} byte limit")
    temp = await ctl.blobs.receive(request.stream(), ctl.config.max_upload)
    try:
        await anyio.to_thread.run_sync(check_archive, temp, ctl.config.limits)
        return ctl.blobs.commit(temp)
    finally:
        temp.unlink(missing_ok=True)


def _files(ctl: Control) -> BlobStore:
    """Single files of apps' sources, by sha256 (resource matching)."""
    return BlobStore(ctl.config.home / "files")


async def _assemble_source(ctl: Control, request: Request) -> str:
    """The source package built from a resource list of files the store has."""
    found = resources.parse_resources(await _json(request), ctl.config.limits)
    fd, name = tempfile.mkstemp(dir=ctl.blobs.root, prefix=".assembling-")
    os.close(fd)
    temp = Path(name)
    try:
        await anyio.to_thread.run_sync(resources.assemble, found, _files(ctl), temp)
        return ctl.blobs.commit(temp)
    finally:
        temp.unlink(missing_ok=True)


def _build_options(ctl: Control, q: Any) -> dict[str, Any]:
    """What the stager is told beyond the source: buildpack, no_cache, commands."""
    options: dict[str, Any] = {}
    if q.get("buildpack"):
        options["buildpack"] = _buildpack(ctl, q["buildpack"])
    if q.get("no_cache") in ("1", "true"):
        options["no_cache"] = True
    commands = {}
    for pair in q.getlist("command"):
        process, sep, command = pair.partition(":")
        if not sep or not command.strip() or process_name_problem(process):
            raise BadRequest(f"command {pair!r} must look like TYPE:COMMAND")
        commands[process] = command.strip()
    if commands:
        options["processes"] = commands
    return options


_GIT_URL = re.compile(r"^(https?|git)://[^\s#]+(#[A-Za-z0-9._/-]+)?$")


def _buildpack(ctl: Control, text: str) -> str:
    """An installed pack's name, `blob:<sha256>` of an uploaded pack, or a git URL."""
    names = ordered_names()
    if text in names or _GIT_URL.match(text):
        return text
    if text.startswith("blob:"):
        ctl.blobs.existing(text.removeprefix("blob:"))
        return text
    raise Unprocessable(f"no buildpack {text!r}: use one of {', '.join(names)}, "
                        "blob:<sha256> of an uploaded pack, or an http(s):// or git:// URL")


def _health_check(text: str) -> str:
    """`port`, `process`, or `http:/path` (2xx within 1 s)."""
    if text in ("port", "process") or (text.startswith("http:/") and " " not in text):
        return text
    raise BadRequest(f"health check {text!r} must be port, process or http:/PATH")


def _save_push_settings(ctl: Control, name: str, settings: dict[str, Any],
                        env: dict[str, str]) -> bool:
    if not ctl.store.app_exists(name):
        ctl.store.create_app(name, memory_mb=settings.pop("memory_mb", 256),
                             scale=settings.pop("scale", None), env=env)
        if settings:
            ctl.store.update_app(name, **settings)
        return True
    if env:
        settings["env"] = {**ctl.store.get_app(name)["env"], **env}
    if "scale" in settings:
        settings["scale"] = {**ctl.store.get_app(name)["scale"], **settings["scale"]}
    if settings:
        ctl.store.update_app(name, **settings)
    return False


async def list_buildpacks(request: Request) -> Response:
    """The installed buildpacks, in detection order."""
    require(request, _ctl(request).store, READ_KINDS)
    return JSONResponse({"buildpacks": [{"position": i, "name": n}
                                        for i, n in enumerate(ordered_names(), start=1)]})


async def upload_buildpack(request: Request) -> Response:
    """Upload a buildpack directory (gzip'd tar) for this app's pushes: `blob:<sha256>`."""
    ctl = _ctl(request)
    name = _app_name(request)
    require(request, ctl.store, APP_KINDS, app=name)
    digest = await _receive_source(ctl, request)
    return JSONResponse({"buildpack": f"blob:{digest}"}, status_code=201)


async def match_resources(request: Request) -> Response:
    """Resource matching: which of these file digests the control plane lacks."""
    ctl = _ctl(request)
    require(request, ctl.store, APP_KINDS)
    digests = resources.parse_digests(await _json(request), ctl.config.limits)
    return JSONResponse({"missing": resources.missing(digests, _files(ctl))})


async def upload_resources(request: Request) -> Response:
    """Store files for resource matching: a gzip'd tar of files named by their sha256."""
    ctl = _ctl(request)
    require(request, ctl.store, APP_KINDS)
    temp = await ctl.blobs.receive(request.stream(), ctl.config.max_upload)
    try:
        stored = await anyio.to_thread.run_sync(resources.store_files, temp, _files(ctl),
                                                ctl.config.limits)
    finally:
        temp.unlink(missing_ok=True)
    return JSONResponse({"stored": stored}, status_code=201)


async def get_build(request: Request) -> Response:
    """Show a build's state (long-polls with ?wait=N until it finishes)."""
    ctl = _ctl(request)
    build = ctl.store.get_build(request.path_params["build"])
    require(request, ctl.store, READ_KINDS, app=build["app"])
    await ctl.wait(request, lambda: ctl.store.get_build(build["id"])["state"]
                   in ("STAGED", "FAILED"))
    return JSONResponse(ctl.store.get_build(build["id"]))


async def scale(request: Request) -> Response:
    """Set a process type's instance count, or autoscaling of web: {min, max, concurrency,
    idle} (min 0 scales to zero when idle)."""
    ctl = _ctl(request)
    name = _app_name(request)
    token = require(request, ctl.store, APP_KINDS, app=name)
    body = await _json(request)
    process = str(body.get("process", "web"))
    problem = process_name_problem(process)
    if problem:
        raise BadRequest(problem)
    app = ctl.store.get_app(name)
    changes: dict[str, Any] = {}
    if any(body.get(k) is not None for k in ("min", "max", "concurrency", "idle", "window")):
        if process != "web":
            raise BadRequest("only the web process type is autoscaled")
        auto = _autoscale_settings(body, settings_of(app))
        changes["autoscale"] = json.dumps(auto)
        count = max(auto["min"], min(auto["max"], app["scale"].get("web", 1)))
        what = (f"web autoscaled {auto['min']}..{auto['max']} at {auto['concurrency']} "
                f"in flight per instance, idle {auto['idle']:.0f} s")
    else:
        count = _int(body.get("instances"), "instances", 0, 100)
        if process == "web":
            changes["autoscale"] = None
        what = f"{process} scaled to {count}"
    changes["scale"] = {**app["scale"], process: count}
    if "memory" in body:
        try:
            changes["memory_mb"] = parse_memory(str(body["memory"]))
        except ValueError as e:
            raise BadRequest(str(e)) from None
    ctl.store.update_app(name, **changes)
    ctl.store.add_event(name, "scale", what, token.id)
    return JSONResponse(app_view(ctl, ctl.store.get_app(name)))


def _autoscale_settings(body: dict[str, Any], before: Settings | None) -> dict[str, Any]:
    base = before or Settings(min=1, max=10, concurrency=20, idle=60)
    lo = _int(body.get("min", base.min), "min", 0, 100)
    hi = _int(body.get("max", base.max), "max", 1, 100)
    if lo > hi:
        raise BadRequest(f"min ({lo}) must not exceed max ({hi})")
    concurrency = _int(body.get("concurrency", base.concurrency), "concurrency", 1, 10_000)
    idle = body.get("idle", base.idle)
    seconds = parse_duration(idle) if isinstance(idle, str) else float(idle)
    if not 1 <= seconds <= 86_400:
        raise BadRequest("idle must be between 1 s and 1 day")
    window = body.get("window", base.stable_window)
    window_s = parse_duration(window) if isinstance(window, str) else float(window)
    if not 6 <= window_s <= 3600:
        raise BadRequest("window must be between 6 s and 1 h")
    return {"min": lo, "max": hi, "concurrency": concurrency, "idle": seconds,
            "window": window_s}


async def wake(request: Request) -> Response:
    """An edge holds a request for an app at zero: bring up one instance (idempotent)."""
    ctl = _ctl(request)
    name = _app_name(request)
    token = require(request, ctl.store, ("edge", "admin"))
    waking = ctl.scaling.wake(name, token.id)
    return JSONResponse({"app": name, "waking": waking})


async def metrics(request: Request) -> Response:
    """An edge reports concurrency: {"apps": {app: {"in_flight": n, "tunnels": m}}}."""
    ctl = _ctl(request)
    require(request, ctl.store, ("edge", "admin"))
    body = await _json(request)
    apps = body.get("apps")
    if not isinstance(apps, dict):
        raise BadRequest("apps must map app names to {in_flight, tunnels}")
    for name, sample in apps.items():
        if isinstance(sample, dict):
            ctl.scaling.record(str(name), float(sample.get("in_flight") or 0),
                               int(sample.get("tunnels") or 0))
    return JSONResponse({"ok": True})


async def app_action(request: Request) -> Response:
    """stop / start / restart an app."""
    ctl = _ctl(request)
    name = _app_name(request)
    token = require(request, ctl.store, APP_KINDS, app=name)
    action = request.path_params["action"]
    ctl.store.get_app(name)
    if action == "stop":
        ctl.store.update_app(name, started=0)
    elif action == "start":
        ctl.store.update_app(name, started=1)
    elif action == "restart":
        releases.restart(ctl.store, name, token.id)
    else:
        raise NotFound(f"no action {action!r} (stop, start, restart)")
    ctl.store.add_event(name, action, f"app {action}", token.id)
    return JSONResponse(app_view(ctl, ctl.store.get_app(name)))


async def get_env(request: Request) -> Response:
    """Show an app's config vars."""
    ctl = _ctl(request)
    name = _app_name(request)
    require(request, ctl.store, APP_KINDS, app=name)
    return JSONResponse({"env": ctl.store.get_app(name)["env"]})


async def patch_env(request: Request) -> Response:
    """Set and unset config vars: makes a new release (when there is a droplet)."""
    ctl = _ctl(request)
    name = _app_name(request)
    token = require(request, ctl.store, APP_KINDS, app=name)
    body = await _json(request)
    sets = body.get("set") or {}
    unsets = body.get("unset") or []
    if not isinstance(sets, dict) or not isinstance(unsets, list):
        raise BadRequest("body must be {\"set\": {KEY: VALUE}, \"unset\": [KEY]}")
    env_changes = _env_pairs([f"{k}={v}" for k, v in sets.items()])
    for key in unsets:
        if env_name_problem(str(key)):
            raise BadRequest(env_name_problem(str(key)) or "")
    app = ctl.store.get_app(name)
    env = {k: v for k, v in {**app["env"], **env_changes}.items() if k not in unsets}
    ctl.store.update_app(name, env=env)
    version = None
    if app["release"]:
        current = ctl.store.get_release(name, app["release"])
        summary = ", ".join([*(f"set {k}" for k in env_changes), *(f"unset {k}" for k in unsets)])
        version = releases.make_release(
            ctl.store, ctl.blobs, name, droplet=current["droplet"], env=env,
            processes=current["processes"], pack=current["pack"],
            description=summary or "config unchanged", actor=token.id, kind="config")
    return JSONResponse({"env": env, "release": version})


async def list_releases(request: Request) -> Response:
    """List an app's releases, newest first."""
    ctl = _ctl(request)
    name = _app_name(request)
    require(request, ctl.store, READ_KINDS, app=name)
    ctl.store.get_app(name)
    return JSONResponse({"releases": ctl.store.list_releases(name)})


async def rollback(request: Request) -> Response:
    """Make a new release from an earlier one's droplet and config: {"version": N}."""
    ctl = _ctl(request)
    name = _app_name(request)
    token = require(request, ctl.store, APP_KINDS, app=name)
    body = await _json(request)
    version = _int(str(body.get("version", "")).lstrip("v"), "version", 1, 1 << 30)
    new = releases.rollback(ctl.store, ctl.blobs, name, version, token.id)
    return JSONResponse({"release": new})


async def list_deployments(request: Request) -> Response:
    """An app's rollouts, newest first, with the progress of a running one."""
    ctl = _ctl(request)
    name = _app_name(request)
    require(request, ctl.store, READ_KINDS, app=name)
    ctl.store.get_app(name)
    rows = ctl.store.deployments(name)
    spec = next((a for a in ctl.store.app_specs() if a.name == name), None)
    for row in rows:
        if row["state"] == "RUNNING" and spec is not None:
            row["updated"], row["wanted"], _ = releases.progress(spec, ctl.store.instances())
    return JSONResponse({"deployments": rows})


async def cancel_deploy(request: Request) -> Response:
    """Stop a running rollout by rolling back to the release it started from."""
    ctl = _ctl(request)
    name = _app_name(request)
    token = require(request, ctl.store, APP_KINDS, app=name)
    running = ctl.store.deployments(name, running=True)
    if not running:
        raise Conflict(f"{name} has no deployment in progress")
    dep = running[0]
    if dep["from_release"] == 0 or dep["from_release"] == dep["to_release"]:
        raise Conflict(f"the running {dep['kind']} of {name} has no earlier release to return to")
    ctl.store.finish_deployment(dep["id"], "CANCELED")
    new = releases.rollback(ctl.store, ctl.blobs, name, dep["from_release"], token.id,
                            f"rollback to v{dep['from_release']} (deploy of "
                            f"v{dep['to_release']} canceled)")
    return JSONResponse({"release": new, "canceled": dep["id"]})


async def list_events(request: Request) -> Response:
    """List an app's events, oldest first."""
    ctl = _ctl(request)
    name = _app_name(request)
    require(request, ctl.store, READ_KINDS, app=name)
    ctl.store.get_app(name)
    return JSONResponse({"events": ctl.store.list_events(name)})


async def read_logs(request: Request) -> Response:
    """Log lines after ?after=SEQ (or the last ?limit=N); long-polls with ?wait=N."""
    ctl = _ctl(request)
    name = _app_name(request)
    require(request, ctl.store, READ_KINDS, app=name)
    ctl.store.get_app(name)
    after_raw = request.query_params.get("after")
    after = _int(after_raw, "after", 0, 1 << 62) if after_raw not in (None, "") else None
    limit = _int(request.query_params.get("limit", "500"), "limit", 1, 5000)
    build = request.query_params.get("build")

    def check() -> list[dict[str, Any]] | bool:
        lines = ctl.store.read_logs(name, after=after, limit=limit, build=build)
        if lines or build is None:
            return lines
        return ctl.store.get_build(build)["state"] in ("STAGED", "FAILED")  # nothing more

    found = await ctl.wait(request, check, logs=True)
    lines = found if isinstance(found, list) else []
    last = lines[-1]["seq"] if lines else after
    return JSONResponse({"lines": lines, "next": last})


# --- routes -------------------------------------------------------------------------
def _route_options(body: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if body.get("balance") is not None:
        if body["balance"] not in ("round-robin", "least-in-flight"):
            raise BadRequest("balance must be round-robin or least-in-flight")
        options["balance"] = body["balance"]
    if body.get("timeout") is not None:
        options["timeout"] = _int(body["timeout"], "timeout", 1, 3600)
    if body.get("sticky") is not None:
        options["sticky"] = bool(body["sticky"])
    return options


def _route_target(ctl: Control, body: dict[str, Any]) -> tuple[str, str]:
    try:
        host, path = parse_route(str(body.get("route", "")))
    except ValueError as e:
        raise BadRequest(str(e)) from None
    if host == f"api.{ctl.config.domain}":
        raise Conflict(f"{host} is the control API's own route")
    return host, path


async def map_route(request: Request) -> Response:
    """Route HOST[/PATH] to an app: {"route": ..., "balance"?, "timeout"?, "sticky"?}."""
    ctl = _ctl(request)
    name = _app_name(request)
    token = require(request, ctl.store, APP_KINDS, app=name)
    body = await _json(request)
    host, path = _route_target(ctl, body)
    ctl.store.get_app(name)
    if (host, path) == (f"{name}.{ctl.config.domain}", "/"):
        raise Conflict(f"{host} is already {name}'s own route")
    ctl.store.map_route(name, host, path, _route_options(body))
    ctl.store.add_event(name, "route-mapped", f"{host}{path}", token.id)
    return JSONResponse({"routes": ctl.store.mapped_routes(name)})


async def list_app_routes(request: Request) -> Response:
    """Routes added to an app with map-route (its default route is implicit)."""
    ctl = _ctl(request)
    name = _app_name(request)
    require(request, ctl.store, READ_KINDS, app=name)
    ctl.store.get_app(name)
    return JSONResponse({"routes": ctl.store.mapped_routes(name)})


async def unmap_route(request: Request) -> Response:
    """Remove a route added with map-route: {"route": "HOST[/PATH]"}."""
    ctl = _ctl(request)
    name = _app_name(request)
    token = require(request, ctl.store, APP_KINDS, app=name)
    host, path = _route_target(ctl, await _json(request))
    ctl.store.unmap_route(name, host, path)
    ctl.store.add_event(name, "route-unmapped", f"{host}{path}", token.id)
    return JSONResponse({"routes": ctl.store.mapped_routes(name)})


# --- tokens -------------------------------------------------------------------------
TOKEN_KINDS = ("admin", "deploy", "read", "join", "edge")


def parse_duration(text: str) -> float:
    """'90s', '30m', '1h', '7d' -> seconds; BadRequest otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) == 0:
        raise BadRequest(f"duration {text!r} must look like 90s, 30m, 1h or 7d")
    return int(number) * units[unit]


async def create_token(request: Request) -> Response:
    """Mint a token: {kind, apps?, ttl?, uses?, label?}; the secret is shown only here."""
    ctl = _ctl(request)
    caller = require(request, ctl.store, ("admin",))
    body = await _json(request)
    kind = body.get("kind")
    if kind not in TOKEN_KINDS:
        raise BadRequest(f"token kind must be one of {', '.join(TOKEN_KINDS)}")
    apps = body.get("apps")
    if apps is not None:
        if kind not in ("deploy", "read") or not isinstance(apps, list) or not apps:
            raise BadRequest("apps limits deploy and read tokens, as a non-empty list")
        for name in apps:
            if app_name_problem(str(name)):
                raise BadRequest(app_name_problem(str(name)) or "")
    ttl = parse_duration(str(body["ttl"])) if body.get("ttl") else None
    uses = _int(body["uses"], "uses", 1, 1 << 30) if body.get("uses") is not None else None
    tid, secret = ctl.store.create_token(kind, apps=apps, ttl=ttl, uses=uses,
                                         label=str(body.get("label") or "")[:80] or None)
    ctl.store.add_event(None, "token-created", f"{kind} token {tid}", caller.id)
    if kind == "join" and ctl.config.tls_fingerprint:
        secret = f"{secret}#{ctl.config.tls_fingerprint}"    # the node pins this certificate
    return JSONResponse({"id": tid, "kind": kind, "token": secret}, status_code=201)


async def list_tokens(request: Request) -> Response:
    """Tokens without their secrets."""
    ctl = _ctl(request)
    require(request, ctl.store, ("admin",))
    rows = ctl.store.list_tokens()
    for row in rows:
        row["apps"] = json.loads(row["apps"]) if row["apps"] else None
    return JSONResponse({"tokens": rows})


async def revoke_token(request: Request) -> Response:
    """Revoke a token by id: it stops working at once."""
    ctl = _ctl(request)
    caller = require(request, ctl.store, ("admin",))
    tid = request.path_params["token"]
    ctl.store.revoke_token(tid)
    ctl.store.add_event(None, "token-revoked", f"token {tid}", caller.id)
    return JSONResponse({"revoked": tid})


# --- edge ---------------------------------------------------------------------------
async def routes(request: Request) -> Response:
    """The routing table; answers at once if ?etag differs, else holds up to ?wait."""
    ctl = _ctl(request)
    require(request, ctl.store, (*READ_KINDS, "edge"))
    etag = request.query_params.get("etag", "")

    def table() -> dict[str, Any] | None:
        current = _table(ctl)
        return current if current["etag"] != etag else None

    current = await ctl.wait(request, table)
    return JSONResponse(current or _table(ctl))


def _table(ctl: Control) -> dict[str, Any]:
    wakeable = frozenset(a["name"] for a in ctl.store.list_apps()
                         if (s := settings_of(a)) is not None and s.min == 0)
    return routing_table(ctl.store.app_specs(), ctl.store.instance_rows(), ctl.config.domain,
                         ctl.config.api_address, ctl.store.mapped_routes(), wakeable)


# --- nodes --------------------------------------------------------------------------
async def join(request: Request) -> Response:
    """Exchange a join token for a node id and node token."""
    ctl = _ctl(request)
    token = require(request, ctl.store, ("join", "admin"))
    body = await _json(request)
    name = str(body.get("name") or "node")
    memory = _int(body.get("memory_mb"), "memory_mb", 64, 1 << 24)
    address = str(body.get("address") or "127.0.0.1")
    if not ctl.store.use_token(token.id):
        raise Unauthorized("invalid, expired or revoked token")
    nid = ctl.store.add_node(name, address, memory, body.get("tier"))
    _, secret = ctl.store.create_token("node", node=nid, label=name)
    ctl.store.add_event(None, "node-joined", f"node {name} ({nid}) joined at {address}")
    log.info("node-joined node=%s name=%s address=%s", nid, name, address)
    return JSONResponse({"id": nid, "token": secret}, status_code=201)


async def list_nodes(request: Request) -> Response:
    """List nodes with state, tier, capacity and instance counts."""
    ctl = _ctl(request)
    require(request, ctl.store, READ_KINDS)
    rows = ctl.store.node_rows()
    instances = ctl.store.instance_rows()
    for row in rows:
        mine = [i for i in instances if i["node"] == row["id"]]
        row["instances"] = len(mine)
        row["used_mb"] = sum(i["memory_mb"] for i in mine)
    return JSONResponse({"nodes": rows})


async def node_state(request: Request) -> Response:
    """Drain a node (its instances move elsewhere first) or make it ready again."""
    ctl = _ctl(request)
    caller = require(request, ctl.store, ("admin",))
    node = ctl.store.get_node(request.path_params["node"])
    body = await _json(request)
    state = body.get("state")
    if state not in ("draining", "ready"):
        raise BadRequest("state must be draining or ready")
    if node["state"] == "lost":
        raise Conflict(f"node {node['name']} is lost; it becomes ready when it is heard from")
    ctl.store.set_node_state(node["id"], state)
    ctl.store.add_event(None, f"node-{state}", f"node {node['name']} is {state}", caller.id)
    return JSONResponse({"id": node["id"], "state": state})


async def heartbeat(request: Request) -> Response:
    """A node reports its capacity and the actual state of its instances."""
    ctl = _ctl(request)
    nid = request.path_params["node"]
    require_node(request, ctl.store, nid)
    body = await _json(request)
    if not isinstance(body.get("instances", []), list) or "address" not in body:
        raise BadRequest("heartbeat needs address, memory_mb and an instances list")
    apply_heartbeat(ctl.store, nid, body, ctl.asked_to_stop.setdefault(nid, set()))
    return JSONResponse({"ok": True})


async def work(request: Request) -> Response:
    """Work items after ?after=SEQ for a node (acknowledging those up to SEQ)."""
    ctl = _ctl(request)
    nid = request.path_params["node"]
    require_node(request, ctl.store, nid)
    ctl.store.get_node(nid)
    after = _int(request.query_params.get("after", "0"), "after", 0, 1 << 62)
    ctl.store.ack_work(nid, after)
    items = await ctl.wait(request, lambda: ctl.store.work_after(nid, after))
    return JSONResponse({"work": items})


async def build_result(request: Request) -> Response:
    """A stager reports how a build ended; success makes a new release."""
    ctl = _ctl(request)
    build = ctl.store.get_build(request.path_params["build"])
    require_node(request, ctl.store, build["node"] or "")
    body = await _json(request)
    if build["state"] != "STAGING":
        raise Conflict(f"build {build['id']} is {build['state']}, not STAGING")
    if not body.get("ok"):
        error = str(body.get("error") or "build failed")
        ctl.store.set_build(build["id"], "FAILED", error=error)
        ctl.store.add_event(build["app"], "build-failed", f"build {build['id']}: {error}")
        return JSONResponse({"state": "FAILED"})
    droplet = str(body.get("droplet", ""))
    ctl.blobs.existing(droplet)
    processes = body.get("processes") or {}
    if not isinstance(processes, dict) or not all(
            isinstance(v, str) and not process_name_problem(k) for k, v in processes.items()):
        raise BadRequest("processes must map process type names to commands")
    if not ctl.store.app_exists(build["app"]):
        raise NotFound(f"app {build['app']!r} was deleted while it was being built")
    env = ctl.store.get_app(build["app"])["env"]
    version = releases.make_release(
        ctl.store, ctl.blobs, build["app"], droplet=droplet, env=env, processes=processes,
        pack=body.get("pack"), description=f"build {build['id']} ({body.get('pack')})",
        actor=None)
    ctl.store.set_build(build["id"], "STAGED", droplet=droplet, pack=body.get("pack"),
                        processes=processes, release=version)
    return JSONResponse({"state": "STAGED", "release": version})


async def post_logs(request: Request) -> Response:
    """A node appends log lines: {"lines": [{app, source, line, ts, build?}]}."""
    ctl = _ctl(request)
    token = require(request, ctl.store, ("node", "admin", "edge"))
    body = await _json(request)
    lines = body.get("lines")
    if not isinstance(lines, list) or not all(
            isinstance(r, dict) and {"app", "source", "line"} <= r.keys() for r in lines):
        raise BadRequest("lines must be a list of {app, source, line}")
    if token.kind == "edge" and any(r["source"] != "router" for r in lines):
        raise Forbidden("an edge token may only post router lines")
    ctl.store.append_logs(lines)
    return JSONResponse({"ok": True})


async def get_blob(request: Request) -> Response:
    """Download a source package or droplet (nodes only)."""
    ctl = _ctl(request)
    require(request, ctl.store, ("node", "admin"))
    return FileResponse(ctl.blobs.existing(request.path_params["digest"]),
                        media_type="application/octet-stream")


async def put_blob(request: Request) -> Response:
    """Upload a droplet; the body's sha256 must equal the digest in the path."""
    ctl = _ctl(request)
    require(request, ctl.store, ("node", "admin"))
    digest = request.path_params["digest"]
    ctl.blobs.path(digest)
    temp = await ctl.blobs.receive(request.stream(), ctl.config.max_upload)
    try:
        ctl.blobs.commit(temp, expected=digest)
    finally:
        temp.unlink(missing_ok=True)
    return JSONResponse({"digest": digest}, status_code=201)


def _git_root(ctl: Control) -> Path:
    return ctl.config.home / "git"


async def git_info_refs(request: Request) -> Response:
    """git smart HTTP: the ref advertisement."""
    ctl = _ctl(request)
    try:
        return await gitserve.info_refs(request, ctl.store, _git_root(ctl))
    except Unauthorized as e:
        return gitserve.challenge(e.message)


async def git_rpc(request: Request) -> Response:
    """git smart HTTP: a push (deploys through the pre-receive hook) or a fetch."""
    ctl = _ctl(request)
    app = request.path_params["repo"].removesuffix(".git")
    tid, secret = ctl.store.create_token("deploy", apps=[app], ttl=3600, label="git push hook")
    env = {"FOUNDRY_API": ctl.config.self_url, "FOUNDRY_TOKEN": secret,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        return await gitserve.rpc(request, ctl.store, _git_root(ctl), env,
                                  on_done=lambda: ctl.store.revoke_token(tid),
                                  max_bytes=ctl.config.max_upload)
    except Unauthorized as e:
        ctl.store.revoke_token(tid)
        return gitserve.challenge(e.message)
    except FoundryError:
        ctl.store.revoke_token(tid)
        raise


async def health(request: Request) -> Response:
    """Liveness of the control plane itself (no token needed)."""
    return JSONResponse({"ok": True, "revision": _ctl(request).store.revision})


async def openapi(request: Request) -> Response:
    """This API described as OpenAPI 3."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        for method in sorted((route.methods or set()) - {"HEAD"}):
            doc = (route.endpoint.__doc__ or "").strip()
            paths.setdefault(route.path, {})[method.lower()] = {
                "summary": doc.splitlines()[0] if doc else route.name,
                "responses": {"200": {"description": "JSON"}}}
    return JSONResponse({"openapi": "3.1.0",
                         "info": {"title": "Foundry control API", "version": "1"},
                         "paths": paths})


ROUTES = [
    Route("/v1/health", health),
    Route("/v1/openapi.json", openapi),
    Route("/v1/apps", list_apps),
    Route("/v1/apps/{app}", get_app),
    Route("/v1/apps/{app}", delete_app, methods=["DELETE"]),
    Route("/v1/apps/{app}/builds", push, methods=["POST"]),
    Route("/v1/apps/{app}/scale", scale, methods=["POST"]),
    Route("/v1/apps/{app}/wake", wake, methods=["POST"]),
    Route("/v1/metrics", metrics, methods=["POST"]),
    Route("/v1/apps/{app}/actions/{action}", app_action, methods=["POST"]),
    Route("/v1/apps/{app}/env", get_env),
    Route("/v1/apps/{app}/env", patch_env, methods=["PATCH"]),
    Route("/v1/apps/{app}/releases", list_releases),
    Route("/v1/apps/{app}/events", list_events),
    Route("/v1/apps/{app}/rollback", rollback, methods=["POST"]),
    Route("/v1/apps/{app}/routes", map_route, methods=["POST"]),
    Route("/v1/apps/{app}/routes", list_app_routes),
    Route("/v1/apps/{app}/routes", unmap_route, methods=["DELETE"]),
    Route("/v1/apps/{app}/deployments", list_deployments),
    Route("/v1/apps/{app}/deployments/cancel", cancel_deploy, methods=["POST"]),
    Route("/v1/apps/{app}/logs", read_logs),
    Route("/v1/builds/{build}", get_build),
    Route("/v1/buildpacks", list_buildpacks),
    Route("/v1/apps/{app}/buildpack", upload_buildpack, methods=["POST"]),
    Route("/v1/resources/match", match_resources, methods=["POST"]),
    Route("/v1/resources", upload_resources, methods=["POST"]),
    Route("/v1/builds/{build}/result", build_result, methods=["POST"]),
    Route("/v1/routes", routes),
    Route("/v1/tokens", list_tokens),
    Route("/v1/tokens", create_token, methods=["POST"]),
    Route("/v1/tokens/{token}", revoke_token, methods=["DELETE"]),
    Route("/v1/nodes", list_nodes),
    Route("/v1/nodes/join", join, methods=["POST"]),
    Route("/v1/nodes/{node}/heartbeat", heartbeat, methods=["POST"]),
    Route("/v1/nodes/{node}/state", node_state, methods=["POST"]),
    Route("/v1/nodes/{node}/work", work),
    Route("/v1/logs", post_logs, methods=["POST"]),
    Route("/v1/blobs/{digest}", get_blob),
    Route("/v1/blobs/{digest}", put_blob, methods=["PUT"]),
    Route("/git/{repo}/info/refs", git_info_refs),
    Route("/git/{repo}/{service}", git_rpc, methods=["POST"]),
]


async def _foundry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FoundryError)
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no such endpoint: {request.url.path}",
               405: f"method {request.method} not allowed on {request.url.path}"}
    return JSONResponse({"error": message.get(exc.status_code, exc.detail)},
                        status_code=exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("request-failed path=%s", request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal error; see the control plane's log"},
                        status_code=500)


def create_app(store: Store, config: ControlConfig, *, converge_loop: bool = True) -> Starlette:
    """The control plane as an ASGI app over `store`."""
    control = Control(store, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            if converge_loop:
                tasks.start_soon(converge.run, store, control.notifier, config.policy,
                                 control.scaling)
            yield
            tasks.cancel_scope.cancel()

    app = Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers={
        FoundryError: _foundry_error, HTTPException: _http_error, Exception: _unexpected})
    app.state.control = control
    return app
