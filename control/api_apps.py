"""API handlers for apps: views, scale and autoscale settings, start/stop/restart, config
vars, releases, rollbacks, deployments, events and logs."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from control import releases, tasks
from control.api_push import forget_app_files
from control.auth import APP_KINDS, READ_KINDS, hide_unless_visible, require
from control.autoscaler import Settings
from control.bodies import (
    ENV_CHANGE,
    EVENTS_LIMIT,
    LOGS_LIMIT,
    RESTART,
    ROLLBACK,
    SCALE,
    SEQ,
    TASK,
    RestartBody,
    ScaleBody,
)
from control.context import (
    Control,
    app_call,
    check_config,
    control_of,
    json_body,
    query_value,
)
from control.converge import stop_instance
from control.errors import (
    BadRequest,
    Conflict,
    NotFound,
    Unprocessable,
)
from control.model import BUILD_ENDED, LIVE_STATES, DeploymentState, InstanceState, TaskState
from control.rows import AppChanges, AppRow, Autoscale, DeploymentRow, LogRow
from control.scaling import settings_of


def app_view(ctl: Control, app: AppRow) -> dict[str, Any]:
    """An app with its current release and instances, as `foundry app` shows it."""
    now = ctl.store.clock()
    instances = [
        {
            "id": r["id"],
            "process": r["process"],
            "index": r["idx"],
            "release": r["release"],
            "state": InstanceState.STOPPING if r["stopping"] else r["state"],
            "node": r["node"],
            "address": r["address"],
            "port": r["port"],
            "restarts": r["restarts"],
            "reason": r["reason"],
            "uptime": round(now - r["started_at"], 1)
            if r["started_at"] and r["state"] == InstanceState.RUNNING
            else None,
        }
        for r in ctl.store.instance_rows(app=app["name"])
    ]
    return {
        "name": app["name"],
        "state": "started" if app["started"] else "stopped",
        "release": app["release"],
        "memory_mb": app["memory_mb"],
        "scale": app["scale"],
        "url": ctl.config.apps_url.format(app=app["name"]),
        "instances": instances,
        "processes": _processes(ctl, app),
        "health_check": app["health_check"],
        "max_in_flight": app["max_in_flight"],
        "autoscale": app["autoscale"],
        "last_cold_start": app["last_cold_start"],
        "created_at": app["created_at"],
    }


def _processes(ctl: Control, app: AppRow) -> dict[str, str]:
    if not app["release"]:
        return {}
    return ctl.store.get_release(app["name"], app["release"])["processes"]


async def list_apps(request: Request) -> Response:
    """List apps with their instances."""
    ctl = control_of(request)
    token = require(request, ctl.store, READ_KINDS)
    apps = [
        app_view(ctl, a)
        for a in ctl.store.list_apps()
        if token.apps is None or a["name"] in token.apps
    ]
    return JSONResponse({"apps": apps})


async def get_app(request: Request) -> Response:
    """Show one app (long-polls with ?wait=N&revision=R until the view changes)."""
    ctl, name, _ = app_call(request, READ_KINDS)
    since = request.query_params.get("revision")
    await ctl.wait(request, lambda: str(ctl.store.revision) != since)
    body = app_view(ctl, ctl.store.get_app(name))
    body["revision"] = str(ctl.store.revision)
    return JSONResponse(body)


async def delete_app(request: Request) -> Response:
    """Delete an app: its routes go at once, its instances are stopped."""
    ctl, name, token = app_call(request, APP_KINDS)
    ctl.store.delete_app(name)
    forget_app_files(ctl, name)
    ctl.store.add_event(None, "app-deleted", f"app {name} deleted", token.id)
    return JSONResponse({"deleted": name})


async def scale(request: Request) -> Response:
    """Set a process type's instance count, or autoscaling of web: {min, max, concurrency,
    idle} (min 0 scales to zero when idle)."""
    ctl, name, token = app_call(request, APP_KINDS)
    body = await json_body(request, SCALE)
    app = ctl.store.get_app(name)
    autoscaling = any(k in body for k in AUTOSCALE_KEYS)
    process = process_to_scale(name, body.get("process"), list(_processes(ctl, app)), autoscaling)
    changes: AppChanges = {}
    if autoscaling:
        auto = _autoscale_settings(body, settings_of(app["autoscale"]))
        changes["autoscale"] = auto
        count = max(auto["min"], min(auto["max"], app["scale"].get("web", 1)))
        what = (
            f"web autoscaled {auto['min']}..{auto['max']} at {auto['concurrency']} "
            f"in flight per instance, idle {auto['idle']:.0f} s"
        )
    else:
        if "instances" not in body:
            raise Unprocessable("instances: is required (or autoscaling: min, max, ...)")
        count = body["instances"]
        if process == "web":
            changes["autoscale"] = None
        what = f"{process} scaled to {count}"
    changes["scale"] = {**app["scale"], process: count}
    if "memory" in body:
        changes["memory_mb"] = body["memory"]
    ctl.store.update_app(name, **changes)
    ctl.store.add_event(name, "scale", what, token.id)
    return JSONResponse({**app_view(ctl, ctl.store.get_app(name)), "scaled": process})


AUTOSCALE_KEYS = ("min", "max", "concurrency", "idle", "window")


def process_to_scale(app: str, requested: str | None, types: list[str], autoscaling: bool) -> str:
    """The process type a scale request means: the one named, else `web` when the app has
    it, else its only type. Refused (with the known types) when the type is unknown or
    several types leave it ambiguous. Before the first release no type is known yet (the
    release says which types the build made): the scale is recorded as asked (default
    `web`), and a type the build does not make runs no instances."""
    types = [t for t in types if t != "release"]  # the release phase is never scaled
    known = ", ".join(sorted(types))
    if requested is None:
        if not types or "web" in types or autoscaling:
            requested = "web"
        elif len(types) == 1:
            requested = types[0]
        else:
            raise BadRequest(f"{app} has no web process; name one with -p ({known})")
    if types and requested not in types:
        raise Unprocessable(f"{app} has no process type {requested!r} (it has {known})")
    if autoscaling and requested != "web":
        raise BadRequest("only the web process type is autoscaled")
    return requested


def _autoscale_settings(body: ScaleBody, before: Settings | None) -> Autoscale:
    """The autoscale settings a scale request leaves (its ranges are checked by SCALE)."""
    base = before or Settings(min=1, max=10, concurrency=20, idle=60)
    lo, hi = body.get("min", base.min), body.get("max", base.max)
    if lo > hi:
        raise BadRequest(f"min ({lo}) must not exceed max ({hi})")
    return {
        "min": lo,
        "max": hi,
        "concurrency": body.get("concurrency", int(base.concurrency)),
        "idle": body.get("idle", float(base.idle)),
        "window": body.get("window", float(base.stable_window)),
    }


async def app_action(request: Request) -> Response:
    """stop / start / restart an app; restart with {process, index} replaces just that
    instance (stopped, then started afresh by the reconciler)."""
    ctl, name, token = app_call(request, APP_KINDS)
    action = request.path_params["action"]
    ctl.store.get_app(name)
    sent = (
        request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    )
    body: RestartBody = await json_body(request, RESTART) if action == "restart" and sent else {}
    if action == "stop":
        ctl.store.update_app(name, started=0)
    elif action == "start":
        ctl.store.update_app(name, started=1)
    elif action == "restart" and "index" in body:
        what = _restart_instance(ctl, name, body)
        ctl.store.add_event(name, action, f"{what} restarted", token.id)
        return JSONResponse(app_view(ctl, ctl.store.get_app(name)))
    elif action == "restart":
        releases.restart(ctl.store, name, token.id)
    else:
        raise NotFound(f"no action {action!r} (stop, start, restart)")
    ctl.store.add_event(name, action, f"app {action}", token.id)
    return JSONResponse(app_view(ctl, ctl.store.get_app(name)))


def _restart_instance(ctl: Control, name: str, body: RestartBody) -> str:
    """Stop the live instance of slot (process, index); returns its name, e.g. web.1."""
    process = body.get("process", "web")
    index = body["index"]
    live = [
        r
        for r in ctl.store.instance_rows(app=name)
        if r["process"] == process
        and r["idx"] == index
        and not r["stopping"]
        and r["state"] in LIVE_STATES
    ]
    if not live:
        raise NotFound(
            f"{name} has no running instance {process}.{index} (see `foundry app {name}`)"
        )
    for row in live:
        stop_instance(ctl.store, row)
    return f"{process}.{index}"


async def get_env(request: Request) -> Response:
    """Show an app's config vars."""
    ctl, name, _ = app_call(request, APP_KINDS)
    return JSONResponse({"env": ctl.store.get_app(name)["env"]})


async def patch_env(request: Request) -> Response:
    """Set and unset config vars: makes a new release (when there is a droplet)."""
    ctl, name, token = app_call(request, APP_KINDS)
    body = await json_body(request, ENV_CHANGE)
    env_changes = body.get("set", {})
    unsets = body.get("unset", [])
    app = ctl.store.get_app(name)
    env = {k: v for k, v in {**app["env"], **env_changes}.items() if k not in unsets}
    check_config(ctl, app["env"], env)
    idle = unchanged_keys(app["env"], env_changes, unsets)
    if env == app["env"]:  # nothing to change: no release, no restarts
        return JSONResponse({"env": env, "release": None, "unchanged": idle})
    ctl.store.update_app(name, env=env)
    version = None
    if app["release"]:
        current = ctl.store.get_release(name, app["release"])
        summary = ", ".join(
            [
                *(f"set {k}" for k in env_changes if k not in idle),
                *(f"unset {k}" for k in unsets if k not in idle),
            ]
        )
        version = releases.make_release(
            ctl.store,
            ctl.blobs,
            name,
            droplet=current["droplet"],
            env=env,
            processes=current["processes"],
            pack=current["pack"],
            description=summary or "config unchanged",
            actor=token.id,
            kind="config",
        )
    return JSONResponse({"env": env, "release": version, "unchanged": idle})


def unchanged_keys(env: dict[str, str], sets: dict[str, str], unsets: list[str]) -> list[str]:
    """The keys of a config change that change nothing: set to the value they have, or
    unset while not set."""
    return [
        *(k for k, v in sets.items() if env.get(k) == v and k not in unsets),
        *(k for k in unsets if k not in env and k not in sets),
    ]


async def list_releases(request: Request) -> Response:
    """List an app's releases, newest first."""
    ctl, name, _ = app_call(request, READ_KINDS, exists=True)
    return JSONResponse({"releases": ctl.store.list_releases(name)})


async def rollback(request: Request) -> Response:
    """Make a new release from an earlier one's droplet and config: {"version": N}."""
    ctl, name, token = app_call(request, APP_KINDS)
    body = await json_body(request, ROLLBACK)
    new = releases.rollback(ctl.store, ctl.blobs, name, body["version"], token.id)
    return JSONResponse({"release": new})


async def list_deployments(request: Request) -> Response:
    """An app's rollouts, newest first, with the progress of a running one."""
    ctl, name, _ = app_call(request, READ_KINDS, exists=True)
    spec = next((a for a in ctl.store.app_specs() if a.name == name), None)
    rows: list[DeploymentRow | RunningDeployment] = []
    for row in ctl.store.deployments(name):
        if row["state"] == DeploymentState.RUNNING and spec is not None:
            updated, wanted, _ = releases.progress(spec, ctl.store.instances())
            rows.append({**row, "updated": updated, "wanted": wanted})
        else:
            rows.append(row)
    return JSONResponse({"deployments": rows})


class RunningDeployment(DeploymentRow):
    """A rollout under way as the API lists it: with its progress."""

    updated: int  # slots running the wanted release
    wanted: int


async def cancel_deploy(request: Request) -> Response:
    """Stop a running rollout by rolling back to the release it started from."""
    ctl, name, token = app_call(request, APP_KINDS)
    running = ctl.store.deployments(name, running=True)
    if not running:
        raise Conflict(f"{name} has no deployment in progress")
    dep = running[0]
    if dep["from_release"] == 0 or dep["from_release"] == dep["to_release"]:
        raise Conflict(f"the running {dep['kind']} of {name} has no earlier release to return to")
    ctl.store.finish_deployment(dep["id"], DeploymentState.CANCELED)
    new = releases.rollback(
        ctl.store,
        ctl.blobs,
        name,
        dep["from_release"],
        token.id,
        f"rollback to v{dep['from_release']} (deploy of v{dep['to_release']} canceled)",
    )
    return JSONResponse({"release": new, "canceled": dep["id"]})


async def list_events(request: Request) -> Response:
    """List an app's newest events (?limit=N, default 100), oldest first."""
    ctl, name, _ = app_call(request, READ_KINDS, exists=True)
    limit = query_value(request, "limit", EVENTS_LIMIT, 100)
    return JSONResponse({"events": ctl.store.list_events(name, limit)})


async def read_logs(request: Request) -> Response:
    """Log lines after ?after=SEQ (or the last ?limit=N); long-polls with ?wait=N."""
    ctl, name, _ = app_call(request, READ_KINDS, exists=True)
    after: int | None = query_value(request, "after", SEQ, None)
    limit = query_value(request, "limit", LOGS_LIMIT, 500)
    build = request.query_params.get("build")
    if build is not None:
        _owned_build_or_task(ctl, name, build)

    def check() -> list[LogRow] | bool:
        lines = ctl.store.read_logs(name, after=after, limit=limit, build=build)
        if lines or build is None:
            return lines
        if build.startswith("t-"):  # a task's lines
            return ctl.store.get_task(build)["state"] != TaskState.RUNNING
        return ctl.store.get_build(build)["state"] in BUILD_ENDED  # nothing more

    found = await ctl.wait(request, check, logs=True)
    lines = found if isinstance(found, list) else []
    last = lines[-1]["seq"] if lines else after
    return JSONResponse({"lines": lines, "next": last})


def _owned_build_or_task(ctl: Control, app: str, bid: str) -> None:
    """NotFound, exactly as for a missing one, unless `bid` is a build or task of `app`:
    another app's build is not followed through this app's logs."""
    missing = NotFound(f"no task {bid}" if bid.startswith("t-") else f"no build {bid}")
    try:
        owner = (ctl.store.get_task(bid) if bid.startswith("t-") else ctl.store.get_build(bid))[
            "app"
        ]
    except NotFound:
        raise missing from None
    if owner != app:
        raise missing


async def run_task(request: Request) -> Response:
    """Run a one-off command with the app's current droplet and config: {"command": ...}."""
    ctl, name, token = app_call(request, APP_KINDS)
    command = (await json_body(request, TASK))["command"]
    app = ctl.store.get_app(name)
    if not app["release"]:
        raise Conflict(f"{name} has no release to run a command with yet")
    release = ctl.store.get_release(name, app["release"])
    tid = tasks.start_task(
        ctl.store,
        ctl.config.policy,
        name,
        command,
        droplet=release["droplet"],
        env=release["env"],
        release=app["release"],
    )
    ctl.store.add_event(name, "run", f"task {tid}: {command}", token.id)
    return JSONResponse({"task": tid}, status_code=201)


async def get_task(request: Request) -> Response:
    """A task's state and exit code (long-polls with ?wait=N until it ends)."""
    ctl = control_of(request)
    token = require(request, ctl.store, READ_KINDS)
    tid = request.path_params["task"]
    task = ctl.store.get_task(tid)
    hide_unless_visible(token, task["app"], NotFound(f"no task {tid}"))
    await ctl.wait(request, lambda: ctl.store.get_task(task["id"])["state"] != TaskState.RUNNING)
    row = ctl.store.get_task(task["id"])
    return JSONResponse({k: v for k, v in row.items() if k != "payload"})
