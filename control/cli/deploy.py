"""The client side of `foundry push`: which apps to push, building each, and its manifest.

Rules kept here:
  * Everything the command line can get wrong (memory, directory, manifest, --env pairs)
    is refused by `plan_push` before the control plane is contacted.
  * An app whose first build fails is deleted again: a failed push leaves no husk.
  * Config vars travel in request bodies, never in URLs (which logs keep).
  * `--strict` shows every change it would make (config values never shown) and needs the
    user's agreement — on a terminal, or with --yes — before anything changes.
  * Progress goes to the Reporter; nothing here prints or exits.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from control.cli.client import Api, CLIError, Reporter
from control.cli.follow import finish, follow_build
from control.cli.sources import (
    default_app_name,
    ignore_patterns,
    ignored,
    pack_source,
    resolve_buildpack,
    scan_resources,
    send_listing,
    upload_chunks,
    upload_files,
)
from control.manifest import (
    AppManifest,
    AppNow,
    ManifestError,
    StrictDiff,
    parse_manifest,
    strict_changes,
    strict_diff,
)
from control.names import app_name_problem, parse_memory


@dataclass
class PushJob:
    """One app's push: its source, what to ask of the build, and its manifest entry."""

    directory: Path
    name: str
    params: list[tuple[str, str | int]]
    buildpack: str | None = None
    manifest: AppManifest | None = None  # when pushed from one
    strict: bool = False
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # sent in the body
    yes: bool = False  # --yes: apply --strict's changes without asking
    replace_env: bool = False  # --strict: the app's config vars become exactly `env`

    def config(self) -> dict[str, Any]:
        """The push's config for the request body (never the URL, which logs keep)."""
        return {"env": self.env, "replace_env": self.replace_env}


@dataclass(frozen=True)
class PushOptions:
    """`foundry push`'s command line."""

    path: Path
    name: str | None = None
    instances: int | None = None
    memory: str | None = None
    env: tuple[str, ...] = ()
    health_check: str | None = None
    max_in_flight: int | None = None
    buildpack: str | None = None
    no_cache: bool = False
    manifest_file: Path | None = None
    no_manifest: bool = False
    strict: bool = False
    yes: bool = False
    wait: bool = True
    timeout: float = 180
    watch: bool = False

    def flags(self) -> list[tuple[str, str | int]]:
        """The build's query parameters the flags ask for."""
        given: list[tuple[str, str | int | None]] = [
            ("instances", self.instances),
            ("memory", self.memory),
            ("health_check", self.health_check),
            ("max_in_flight", self.max_in_flight),
            ("no_cache", 1 if self.no_cache else None),
        ]
        return [(key, value) for key, value in given if value is not None]


def env_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    """--env KEY=VALUE flags as a dict; CLIError for one that is not a pair."""
    found: dict[str, str] = {}
    for pair in pairs:
        var, sep, text = pair.partition("=")
        if not sep or not var:
            raise CLIError(f"--env {pair!r} must look like KEY=VALUE")
        found[var] = text
    return found


def plan_push(o: PushOptions, report: Reporter) -> list[PushJob]:
    """The apps a push builds, with the flags applied; refuses bad input before any call."""
    if o.memory is not None:
        try:
            parse_memory(o.memory)
        except ValueError as e:
            raise CLIError(str(e)) from None
    if not o.path.is_dir():
        raise CLIError(f"{o.path}: no such directory")
    jobs = None if o.no_manifest else manifest_jobs(o, report)
    if jobs is None:
        if o.strict:
            raise CLIError("--strict needs a manifest (manifest.yml or -f FILE)")
        jobs = [PushJob(o.path, o.name or default_app_name(o.path), [])]
    env = env_pairs(o.env)
    for job in jobs:
        job.params += o.flags()
        job.env = {**job.env, **env}
        job.buildpack = o.buildpack or job.buildpack
        job.yes = o.yes
    return jobs


def push_all(api: Api, jobs: list[PushJob], o: PushOptions, report: Reporter) -> None:
    """Push each app in turn; with --watch, again after each burst of file changes."""
    for number, job in enumerate(jobs, start=1):
        problem = app_name_problem(job.name)
        if problem:
            raise CLIError(f"{problem} (choose one with --name)")
        if len(jobs) > 1:
            report.say(f"==> {job.name} ({number} of {len(jobs)})")
        push_app(api, dataclasses.replace(job, params=list(job.params)), o.wait, o.timeout, report)
    if o.watch:
        watch_and_push(api, o.path, jobs, o.timeout, report)


def start_build(api: Api, job: PushJob, report: Reporter) -> dict[str, Any]:
    """Send the source (resource-matched when it can be) and queue the build."""
    path = f"/v1/apps/{job.name}/builds"
    found = scan_resources(job.directory)
    if found is not None:
        listing, missing, _ = send_listing(api, job.name, found)
        upload_files(api, job.name, job.directory, found, missing, report)
        body = {"listing": listing, **job.config()}
        return dict(api.request("POST", path, params=job.params, timeout=600, json=body))
    with tempfile.TemporaryDirectory() as tmp:
        tarball = Path(tmp) / "source.tgz"
        count = pack_source(job.directory, tarball)
        report.say(f"Packing {count} files from {job.directory}")
        # Config vars go in the body ahead of the tarball, never in the URL.
        config = json.dumps(job.config()).encode()
        return dict(
            api.request(
                "POST",
                path,
                params=job.params,
                timeout=600,
                headers={"foundry-config-length": str(len(config))},
                content=itertools.chain([config], upload_chunks(tarball, report)),
            )
        )


def push_app(api: Api, job: PushJob, wait: bool, timeout: float, report: Reporter) -> None:
    """Build and roll out one app; with a manifest, then set its routes and scales."""
    if job.buildpack:
        job.params.append(("buildpack", resolve_buildpack(api, job.name, job.buildpack, report)))
    diff = show_strict_diff(api, job, report) if job.strict else None
    started = start_build(api, job, report)
    # "Created" is not said before the first build succeeds: a failed one keeps no app.
    report.say(
        f"Building {job.name}{' (a new app)' if started['created'] else ''}, "
        f"build {started['build']}:"
    )
    build = follow_build(api, job.name, started["build"], report)
    if build["state"] == "FAILED":
        raise CLIError(
            f"build failed: {build['error']}"
            + (forget_new_app(api, job.name) if started["created"] else "")
        )
    if job.manifest is not None:
        apply_manifest(api, job, diff, report)
    if build["release"] == started.get("current_release"):
        report.tell(f"{job.name}: no change: release v{build['release']} is current")
        return
    finish(api, job.name, build["release"], wait, timeout, report)


def forget_new_app(api: Api, name: str) -> str:
    """Delete an app whose first build failed (nothing came of the push, so no husk is
    left behind); returns what to add to the error line."""
    try:
        api.request("DELETE", f"/v1/apps/{name}")
    except CLIError as e:
        return f"; the new app {name} stays, with no release ({e})"
    return f"; the new app {name} is not kept"


def watch_and_push(
    api: Api, path: Path, jobs: list[PushJob], timeout: float, report: Reporter
) -> None:
    """Push again after each burst of file changes (debounced); a failed push is reported
    and the watch goes on. Ctrl-C ends it."""
    import watchfiles

    patterns = ignore_patterns(path)
    root = path.resolve()

    def wanted(_change: watchfiles.Change, name: str) -> bool:
        rel = os.path.relpath(name, root)
        return not rel.startswith("..") and not ignored(rel, patterns)

    report.say(f"Watching {path} for changes (Ctrl-C to stop)")
    try:
        for changes in watchfiles.watch(
            root, watch_filter=wanted, debounce=400, raise_interrupt=False
        ):
            report.say(f"{len(changes)} file(s) changed; pushing again")
            for job in jobs:
                try:
                    push_app(
                        api,
                        dataclasses.replace(job, params=list(job.params)),
                        True,
                        timeout,
                        report,
                    )
                except CLIError as e:
                    report.say(f"foundry: {e}")
    except KeyboardInterrupt:
        pass


# --- manifests ----------------------------------------------------------------------
def manifest_params(app_: AppManifest) -> list[tuple[str, str | int]]:
    """Push query parameters for a manifest's app (its `web` process entry included)."""
    web = app_.process("web")
    params: list[tuple[str, str | int]] = []
    instances = web.instances if web and web.instances is not None else app_.instances
    health = web.health_check if web and web.health_check else app_.health_check
    memory = f"{app_.memory_mb}M" if app_.memory_mb is not None else None
    for key, value in (("instances", instances), ("memory", memory), ("health_check", health)):
        if value is not None:
            params.append((key, value))
    if app_.command:
        params.append(("command", f"web:{app_.command}"))
    for p in app_.processes or ():
        if p.command and not (p.type == "web" and app_.command):
            params.append(("command", f"{p.type}:{p.command}"))
    return params


def manifest_jobs(o: PushOptions, report: Reporter) -> list[PushJob] | None:
    """One job per app of the manifest (or just --name's); None when there is no manifest."""
    file = o.manifest_file or o.path / "manifest.yml"
    if o.manifest_file is None and not file.is_file():
        return None
    try:
        manifest = parse_manifest(file.read_text())
        apps = [manifest.app(o.name)] if o.name else list(manifest.applications)
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read manifest {file}: {e}") from None
    except ManifestError as e:
        raise CLIError(f"{file}: {e}") from None
    for warning in manifest.warnings:
        report.say(f"warning: {file}: {warning}")
    return [_manifest_job(file, a, o.strict) for a in apps]


def _manifest_job(file: Path, a: AppManifest, strict: bool) -> PushJob:
    if len(a.buildpacks) > 1:
        raise CLIError(f"{file}: {a.name}: several buildpacks are not supported; name one")
    directory = (file.parent / a.path) if a.path else file.parent
    if not directory.is_dir():
        raise CLIError(f"{file}: {a.name}: path {directory} is not a directory")
    bp = a.buildpacks[0] if a.buildpacks else None
    if bp and not ("://" in bp or Path(bp).is_absolute()) and (file.parent / bp).is_dir():
        bp = str(file.parent / bp)
    return PushJob(
        directory,
        a.name,
        manifest_params(a),
        bp,
        a,
        strict,
        env={str(k): str(v) for k, v in a.env.items()},
    )


def current_routes(api: Api, name: str) -> list[str]:
    rows = api.get(f"/v1/apps/{name}/routes")["routes"]
    return [r["host"] + ("" if r["path"] == "/" else r["path"]) for r in rows]


def show_strict_diff(api: Api, job: PushJob, report: Reporter) -> StrictDiff:
    """Report every difference --strict makes to an existing app (config values never
    shown) and have the user agree, on a terminal or with --yes, before changing anything."""
    assert job.manifest is not None, "--strict pushes come from a manifest"
    job.replace_env = True
    if not any(a["name"] == job.name for a in api.get("/v1/apps")["apps"]):
        return StrictDiff()
    view = api.get(f"/v1/apps/{job.name}")
    env = api.get(f"/v1/apps/{job.name}/env")["env"]
    routes = current_routes(api, job.name)
    if job.manifest.random_route:
        routes = [r for r in routes if not r.startswith(f"{job.name}-")]
    diff = strict_diff(job.manifest, env, routes, view["scale"], list(view["processes"]))
    changes = strict_changes(
        job.manifest,
        AppNow(
            env=env,
            routes=tuple(routes),
            scale=view["scale"],
            processes=view["processes"],
            memory_mb=view["memory_mb"],
            health_check=view["health_check"],
        ),
        diff,
    )
    if not changes:
        report.say(f"--strict: {job.name} already is what the manifest says")
        return diff
    report.tell(f"--strict: {job.name} changes:")
    for line in changes:
        report.tell(f"  {line}")
    if not job.yes:
        _agree(job.name, report)
    return diff


def _agree(name: str, report: Reporter) -> None:
    answer = report.confirm(f"Apply these changes to {name}?")
    if answer is None:
        raise CLIError(
            f"--strict would change {name} as shown; pass --yes to apply that without a terminal"
        )
    if not answer:
        raise CLIError(f"nothing changed: {name} is left as it was")


def apply_manifest(api: Api, job: PushJob, diff: StrictDiff | None, report: Reporter) -> None:
    """Routes, other process types' scales, and (with --strict) removals."""
    app_, name = job.manifest, job.name
    assert app_ is not None, "only pushes from a manifest apply one"
    if app_.no_route:
        return drop_routes(api, name, report)
    existing = current_routes(api, name)
    for route in app_.routes:
        if route not in existing and not route.startswith(f"{name}."):
            api.request("POST", f"/v1/apps/{name}/routes", json={"route": route})
    if app_.random_route and not any(r.startswith(f"{name}-") for r in existing):
        report.say(f"random route: {add_random_route(api, name)}")
    for p in app_.processes or ():
        if p.type != "web" and p.instances is not None:
            api.request(
                "POST", f"/v1/apps/{name}/scale", json={"process": p.type, "instances": p.instances}
            )
    for route in diff.unmap_routes if diff else ():
        api.request("DELETE", f"/v1/apps/{name}/routes", json={"route": route})
    for process in diff.scale_to_zero if diff else ():
        api.request("POST", f"/v1/apps/{name}/scale", json={"process": process, "instances": 0})


def drop_routes(api: Api, name: str, report: Reporter) -> None:
    """`no-route: true`: unmap every route (a web process keeps its default one)."""
    for route in current_routes(api, name):
        api.request("DELETE", f"/v1/apps/{name}/routes", json={"route": route})
    if "web" in api.get(f"/v1/apps/{name}")["processes"]:
        report.say(f"note: {name} has a web process, which keeps its default route")


def add_random_route(api: Api, name: str) -> str:
    """Map NAME-<random hex> under the app's own domain; returns the route."""
    host = httpx.URL(api.get(f"/v1/apps/{name}")["url"]).host
    route = f"{name}-{os.urandom(3).hex()}{host[len(name) :]}"
    api.request("POST", f"/v1/apps/{name}/routes", json={"route": route})
    return route
