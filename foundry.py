"""The `foundry` command: every user command, `foundry up`, and the role entry points.

Commands talk to the control API over HTTP only; `up` and the role commands import
the roles to start them. Errors reach the user in one place (`main`): one line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import gzip
import hashlib
import itertools
import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Foundry: push source, get a running app at a URL.")
node_app = typer.Typer(no_args_is_help=True, help="Run a node agent.")
app.add_typer(node_app, name="node")
tokens_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API tokens.")
app.add_typer(tokens_app, name="tokens")

def foundry_version() -> str:
    """This checkout's version (its pyproject.toml), else the installed distribution's."""
    import importlib.metadata
    import tomllib

    pyproject = Path(__file__).resolve().parent / "pyproject.toml"
    with contextlib.suppress(OSError, tomllib.TOMLDecodeError, KeyError):
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    try:
        return importlib.metadata.version("foundry-paas")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"foundry {foundry_version()}")
        raise typer.Exit()


@app.callback()
def _global(version: bool = typer.Option(False, "--version", callback=_show_version,
                                         is_eager=True, help="print the version and exit")
            ) -> None:
    """Foundry: push source, get a running app at a URL."""


DEFAULT_IGNORES = (".git", ".hg", ".svn", ".DS_Store", "__pycache__", ".venv", "*.pyc")


class CLIError(Exception):
    """A failure to report to the user as one line."""


# --- talking to the control plane -----------------------------------------------------
def foundry_home(home: Path | None = None) -> Path:
    return (home or Path(os.environ.get("FOUNDRY_HOME") or Path.home() / ".foundry")).expanduser()


@dataclass
class Api:
    """The control API as the CLI sees it."""

    url: str
    token: str
    apps_url: str = "http://{app}.localhost"

    @classmethod
    def load(cls) -> Api:
        """From FOUNDRY_API/FOUNDRY_TOKEN, else from what `foundry up` wrote in the home."""
        home = foundry_home()
        saved: dict[str, Any] = {}
        cli_file = home / "cli.json"
        if cli_file.exists():
            saved = json.loads(cli_file.read_text())
        url = os.environ.get("FOUNDRY_API") or saved.get("api")
        token = os.environ.get("FOUNDRY_TOKEN")
        if not token and saved.get("token_file") and Path(saved["token_file"]).exists():
            token = Path(saved["token_file"]).read_text().strip()
        if not url or not token:
            others = sorted(_running_homes() - {str(home)})
            if others:
                raise CLIError(f"no control plane configured in {home}, but `foundry up` runs "
                               f"with home {' and '.join(others)}: export FOUNDRY_HOME="
                               + (others[0] if len(others) == 1 else "(one of them)"))
            raise CLIError(f"no control plane configured: run `foundry up` (home {home}) or set "
                           "FOUNDRY_API and FOUNDRY_TOKEN")
        return cls(url.rstrip("/"), token, saved.get("apps_url", "http://{app}.localhost"))

    def request(self, method: str, path: str, *, timeout: float = 30, **kw: Any) -> Any:
        try:
            headers = {"authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
            resp = httpx.request(method, self.url + path, timeout=timeout, headers=headers,
                                 verify=_verify(), **kw)
        except httpx.TransportError as e:
            raise CLIError(f"cannot reach the control plane at {self.url} ({e}); "
                           "is `foundry up` running?") from None
        if resp.status_code >= 400:
            try:
                reason = resp.json().get("error") or resp.text
            except ValueError:
                reason = resp.text.strip() or resp.reason_phrase
            raise CLIError(reason)
        return resp.json()

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)


def _running_homes() -> set[str]:
    """Homes of the `foundry up` platforms running on this machine (their roles say so in
    their environment), to point a CLI without settings at one."""
    if not sys.platform.startswith("linux"):
        return set()
    return {p.up_home for p in _processes() if p.up_home}


def _verify() -> ssl.SSLContext | bool:
    """Trust FOUNDRY_CA (e.g. a self-signed control plane's cert.pem) when it is set."""
    ca = os.environ.get("FOUNDRY_CA")
    return ssl.create_default_context(cafile=ca) if ca else True


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def table(rows: list[list[Any]], headers: list[str]) -> None:
    cells = [headers] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def human_duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# --- push ---------------------------------------------------------------------------
def ignore_patterns(directory: Path) -> list[str]:
    patterns = list(DEFAULT_IGNORES)
    for name in (".foundryignore", ".cfignore"):
        f = directory / name
        if f.is_file():
            patterns += [ln.strip() for ln in f.read_text().splitlines()
                         if ln.strip() and not ln.startswith("#")]
    return patterns


def ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pattern in patterns:
        p = pattern.strip("/")
        if fnmatch.fnmatch(rel, p) or any(fnmatch.fnmatch(part, p) for part in parts):
            return True
    return False


def source_files(directory: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of each file to upload, honouring ignore files, sorted."""
    patterns = ignore_patterns(directory)
    for root, dirs, files in os.walk(directory):
        rel_root = os.path.relpath(root, directory)
        dirs[:] = sorted(d for d in dirs if not ignored(
            os.path.normpath(os.path.join(rel_root, d)), patterns))
        for name in sorted(files):
            rel = os.path.normpath(os.path.join(rel_root, name))
            if not ignored(rel, patterns):
                yield rel, Path(root) / name


def pack_source(directory: Path, dest: Path) -> int:
    """Write the app directory as a gzip'd tar, honouring ignore files; returns file count."""
    count = 0
    with tarfile.open(dest, "w:gz", compresslevel=6) as tar:
        for rel, path in source_files(directory):
            tar.add(path, arcname=rel, recursive=False)
            count += 1
    return count


def upload_chunks(path: Path) -> Iterator[bytes]:
    total = path.stat().st_size
    sent = 0
    with open(path, "rb") as f:
        while block := f.read(256 * 1024):
            sent += len(block)
            typer.echo(f"\rUploading {sent / 1024:.1f} KiB / {total / 1024:.1f} KiB", err=True,
                       nl=False)
            yield block
    typer.echo("", err=True)


def default_app_name(directory: Path) -> str:
    return directory.resolve().name.lower().replace("_", "-").replace(".", "-")


# The stager's closing line of a failed build: its reason is the push's error line, so
# the CLI shows it there, once, instead of in the log as well.
BUILD_FAILED_LINE = "-----> Build failed: "


def follow_build(api: Api, name: str, build: str) -> dict[str, Any]:
    """Print the build log live until the build ends; returns the final build."""
    after: int | None = 0
    while True:
        state = api.get(f"/v1/builds/{build}")
        done = state["state"] in ("STAGED", "FAILED")
        page = api.get(f"/v1/apps/{name}/logs", params={
            "build": build, "after": after, "wait": 0 if done else 5}, timeout=40)
        for line in page["lines"]:
            if not line["line"].startswith(BUILD_FAILED_LINE):
                typer.echo(f"  {line['line']}")
        after = page["next"]
        if done and not page["lines"]:
            return dict(state)


def watch_rollout(api: Api, name: str, release: int, timeout: float) -> dict[str, Any]:
    """Follow the server's rollout of `release` until it finishes; CLIError when it cannot."""
    deadline = time.monotonic() + timeout
    revision, shown = "", ""
    while time.monotonic() < deadline:
        view = api.get(f"/v1/apps/{name}", params={"wait": 5, "revision": revision}, timeout=40)
        revision = view["revision"]
        deps = [d for d in api.get(f"/v1/apps/{name}/deployments")["deployments"]
                if d["to_release"] == release]
        dep = deps[0] if deps else None
        if dep is None or dep["state"] in ("SUPERSEDED", "CANCELED"):
            raise CLIError(f"the rollout of v{release} was replaced by a newer change")
        if dep["state"] == "SUCCEEDED":
            return dict(view)
        status = f"instances: {dep.get('updated', 0)}/{dep.get('wanted', 0)} updated and running"
        if status != shown:
            typer.echo(status, err=True)
            shown = status
        stuck = [e for e in api.get(f"/v1/apps/{name}/events")["events"]
                 if e["kind"] == "unplaced" and e["ts"] >= dep["created_at"]]
        if stuck:
            raise CLIError(f"{stuck[-1]['detail']} (see `foundry nodes`)")
        for inst in view["instances"]:
            if inst["state"] == "CRASHED" and inst["release"] == release \
                    and inst["restarts"] >= 2:
                raise CLIError(f"{inst['process']}.{inst['index']} keeps crashing: "
                               f"{inst['reason']} (see `foundry logs {name}`; "
                               f"`foundry cancel-deploy {name}` rolls back)")
    raise CLIError(f"the rollout of {name} v{release} did not finish within {timeout:.0f} s "
                   f"(see `foundry deployments {name}`)")


def finish(api: Api, name: str, release: int | None, wait: bool, timeout: float) -> None:
    """Watch a rollout to its end (unless --no-wait) and say where the app is."""
    if release is None:
        return
    if not wait:
        typer.echo(f"{name} v{release} is rolling out (`foundry deployments {name}`)")
        return
    view = watch_rollout(api, name, release, timeout)
    where = view["url"] if "web" in view["processes"] else "no web process, so no route"
    typer.echo(f"{name} v{release} is running: {where}")


def scan_resources(directory: Path) -> list[Any] | None:
    """The source as resources (path, sha256, mode, size); None when it holds something
    resource matching cannot carry (a symlink), so the whole tarball is sent instead."""
    from control.resources import Resource, sha256_of

    found = []
    for rel, path in source_files(directory):
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            return None
        found.append(Resource(rel, sha256_of(path), stat.S_IMODE(st.st_mode) & 0o777,
                              st.st_size))
    return found


def upload_files(api: Api, name: str, directory: Path, found: list[Any], missing: list[str]
                 ) -> int:
    """Resource matching: send only files the control plane lacks (recorded as app
    `name`'s); returns bytes sent."""
    from control.resources import upload_plan

    plan = upload_plan(found, missing)
    typer.echo(f"{len(plan.matched)} of {len(found)} files already on the control plane; "
               f"uploading {len(plan.upload)}", err=True)
    if not plan.upload:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tarball = Path(tmp) / "files.tgz"
        with tarfile.open(tarball, "w:gz", compresslevel=6) as tar:
            for r in plan.upload:
                tar.add(directory / r.path, arcname=r.sha256, recursive=False)
        api.request("POST", "/v1/resources", params={"app": name},
                    content=upload_chunks(tarball), timeout=600)
        return tarball.stat().st_size


def gzip_json(data: Any) -> bytes:
    return gzip.compress(json.dumps(data, separators=(",", ":")).encode(), mtime=0)


def listing_cache(api: Api, name: str) -> Path:
    """Where the CLI remembers the listing it last pushed for an app of this API."""
    tag = hashlib.sha256(api.url.encode()).hexdigest()[:12]
    return foundry_home() / "listings" / tag / f"{name}.json"


def send_listing(api: Api, name: str, found: list[Any]) -> tuple[str, list[str], int]:
    """Tell the control plane the source's resource list as a delta against the listing
    last pushed (the whole list when there is none or it is gone); returns (listing
    digest, missing file digests, bytes sent)."""
    from control.resources import listing_delta

    cache = listing_cache(api, name)
    previous: dict[str, Any] = {}
    if cache.exists():
        try:
            previous = json.loads(cache.read_text())
        except ValueError:
            previous = {}
    for base in ([previous.get("listing")] if previous.get("listing") else []) + [None]:
        entries = {p: tuple(v) for p, v in previous.get("entries", {}).items()} if base else {}
        changed, removed = listing_delta(entries, found)
        body = gzip_json({"base": base, "changed": [r.as_json() for r in changed],
                          "removed": removed})
        try:
            answer = api.request("POST", "/v1/resources/listing", content=body, timeout=120,
                                 params={"app": name},
                                 headers={"content-encoding": "gzip",
                                          "content-type": "application/json"})
        except CLIError:
            if base is None:
                raise
            continue            # the control plane lost that listing: send the whole list
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"listing": answer["listing"], "entries": {
            r.path: [r.sha256, r.mode, r.size] for r in found}}))
        return answer["listing"], answer["missing"], len(body)
    raise CLIError("the control plane refused the resource list")


def start_build(api: Api, job: PushJob) -> dict[str, Any]:
    """Send the source (resource-matched when it can be) and queue the build."""
    path = f"/v1/apps/{job.name}/builds"
    found = scan_resources(job.directory)
    if found is not None:
        listing, missing, _ = send_listing(api, job.name, found)
        upload_files(api, job.name, job.directory, found, missing)
        return dict(api.request("POST", path, params=job.params, timeout=600,
                                json={"listing": listing, **job.config()}))
    with tempfile.TemporaryDirectory() as tmp:
        tarball = Path(tmp) / "source.tgz"
        count = pack_source(job.directory, tarball)
        typer.echo(f"Packing {count} files from {job.directory}", err=True)
        # Config vars go in the body ahead of the tarball, never in the URL.
        config = json.dumps(job.config()).encode()
        return dict(api.request("POST", path, params=job.params, timeout=600,
                                headers={"foundry-config-length": str(len(config))},
                                content=itertools.chain([config], upload_chunks(tarball))))


def resolve_buildpack(api: Api, name: str, buildpack: str) -> str:
    """A local pack directory is uploaded (-> blob:<sha256>); names and URLs pass as they are."""
    if "://" in buildpack or "/" not in buildpack and not Path(buildpack).is_dir():
        return buildpack
    directory = Path(buildpack)
    if not (directory / "bin" / "compile").is_file():
        raise CLIError(f"--buildpack {buildpack}: not a buildpack directory (no bin/compile)")
    with tempfile.TemporaryDirectory() as tmp:
        tarball = Path(tmp) / "buildpack.tgz"
        # The same directory must give the same blob (its digest names the node's copy
        # and its build cache): no gzip timestamp, no owner names.
        with open(tarball, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w") as tar:
            for rel, path in source_files(directory):
                tar.add(path, arcname=rel, recursive=False, filter=_anonymous)
        typer.echo(f"Uploading buildpack {directory}", err=True)
        answer = api.request("POST", f"/v1/apps/{name}/buildpack",
                             content=upload_chunks(tarball), timeout=600)
    return str(answer["buildpack"])


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


@dataclass
class PushJob:
    """One app's push: its source, what to ask of the build, and its manifest entry."""

    directory: Path
    name: str
    params: list[tuple[str, str | int]]
    buildpack: str | None = None
    manifest: Any = None          # control.manifest.AppManifest when pushed from one
    strict: bool = False
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # sent in the body
    yes: bool = False             # --yes: apply --strict's changes without asking
    replace_env: bool = False     # --strict: the app's config vars become exactly `env`

    def config(self) -> dict[str, Any]:
        """The push's config for the request body (never the URL, which logs keep)."""
        return {"env": self.env, "replace_env": self.replace_env}


def push_app(api: Api, job: PushJob, wait: bool, timeout: float) -> None:
    """Build and roll out one app; with a manifest, then set its routes and scales."""
    if job.buildpack:
        job.params.append(("buildpack", resolve_buildpack(api, job.name, job.buildpack)))
    diff = show_strict_diff(api, job) if job.strict else None
    started = start_build(api, job)
    # "Created" is not said before the first build succeeds: a failed one keeps no app.
    typer.echo(f"Building {job.name}{' (a new app)' if started['created'] else ''}, "
               f"build {started['build']}:", err=True)
    build = follow_build(api, job.name, started["build"])
    if build["state"] == "FAILED":
        raise CLIError(f"build failed: {build['error']}"
                       + (forget_new_app(api, job.name) if started["created"] else ""))
    if job.manifest is not None:
        apply_manifest(api, job, diff)
    if build["release"] == started.get("current_release"):
        typer.echo(f"{job.name}: no change: release v{build['release']} is current")
        return
    finish(api, job.name, build["release"], wait, timeout)


def forget_new_app(api: Api, name: str) -> str:
    """Delete an app whose first build failed (nothing came of the push, so no husk is
    left behind); returns what to add to the error line."""
    try:
        api.request("DELETE", f"/v1/apps/{name}")
    except CLIError as e:
        return f"; the new app {name} stays, with no release ({e})"
    return f"; the new app {name} is not kept"


def manifest_params(app_: Any) -> list[tuple[str, str | int]]:
    """Push query parameters for a manifest's app (its `web` process entry included)."""
    web = app_.process("web")
    params: list[tuple[str, str | int]] = []
    instances = web.instances if web and web.instances is not None else app_.instances
    if instances is not None:
        params.append(("instances", instances))
    if app_.memory_mb is not None:
        params.append(("memory", f"{app_.memory_mb}M"))
    health = web.health_check if web and web.health_check else app_.health_check
    if health is not None:
        params.append(("health_check", health))
    if app_.command:
        params.append(("command", f"web:{app_.command}"))
    for p in app_.processes or ():
        if p.command and not (p.type == "web" and app_.command):
            params.append(("command", f"{p.type}:{p.command}"))
    return params


def current_routes(api: Api, name: str) -> list[str]:
    rows = api.get(f"/v1/apps/{name}/routes")["routes"]
    return [r["host"] + ("" if r["path"] == "/" else r["path"]) for r in rows]


def show_strict_diff(api: Api, job: PushJob) -> Any:
    """Print every difference --strict makes to an existing app (config values never
    shown) and have the user agree, on a terminal or with --yes, before changing anything."""
    from control.manifest import AppNow, StrictDiff, strict_changes, strict_diff

    job.replace_env = True
    if not any(a["name"] == job.name for a in api.get("/v1/apps")["apps"]):
        return StrictDiff()
    view = api.get(f"/v1/apps/{job.name}")
    env = api.get(f"/v1/apps/{job.name}/env")["env"]
    routes = current_routes(api, job.name)
    if job.manifest.random_route:
        routes = [r for r in routes if not r.startswith(f"{job.name}-")]
    diff = strict_diff(job.manifest, env, routes, view["scale"], list(view["processes"]))
    changes = strict_changes(job.manifest, AppNow(
        env=env, routes=tuple(routes), scale=view["scale"], processes=view["processes"],
        memory_mb=view["memory_mb"], health_check=view["health_check"]), diff)
    if not changes:
        typer.echo(f"--strict: {job.name} already is what the manifest says", err=True)
        return diff
    typer.echo(f"--strict: {job.name} changes:")
    for line in changes:
        typer.echo(f"  {line}")
    if job.yes:
        return diff
    if not sys.stdin.isatty():
        raise CLIError(f"--strict would change {job.name} as shown; pass --yes to apply "
                       "that without a terminal")
    if not typer.confirm(f"Apply these changes to {job.name}?", err=True):
        raise CLIError(f"nothing changed: {job.name} is left as it was")
    return diff


def apply_manifest(api: Api, job: PushJob, diff: Any) -> None:
    """Routes, other process types' scales, and (with --strict) removals."""
    app_ = job.manifest
    name = job.name
    existing = current_routes(api, name)
    if app_.no_route:
        for route in existing:
            api.request("DELETE", f"/v1/apps/{name}/routes", json={"route": route})
        if "web" in api.get(f"/v1/apps/{name}")["processes"]:
            typer.echo(f"note: {name} has a web process, which keeps its default route", err=True)
        return
    for route in app_.routes:
        if route not in existing and not route.startswith(f"{name}."):
            api.request("POST", f"/v1/apps/{name}/routes", json={"route": route})
    if app_.random_route and not any(r.startswith(f"{name}-") for r in existing):
        host = httpx.URL(api.get(f"/v1/apps/{name}")["url"]).host
        route = f"{name}-{os.urandom(3).hex()}{host[len(name):]}"
        api.request("POST", f"/v1/apps/{name}/routes", json={"route": route})
        typer.echo(f"random route: {route}", err=True)
    for p in app_.processes or ():
        if p.type != "web" and p.instances is not None:
            api.request("POST", f"/v1/apps/{name}/scale",
                        json={"process": p.type, "instances": p.instances})
    for route in diff.unmap_routes if diff else ():
        api.request("DELETE", f"/v1/apps/{name}/routes", json={"route": route})
    for process in diff.scale_to_zero if diff else ():
        api.request("POST", f"/v1/apps/{name}/scale", json={"process": process, "instances": 0})


def manifest_jobs(path: Path, manifest_file: Path | None, only: str | None,
                  strict: bool) -> list[PushJob] | None:
    """One job per app of the manifest (or just `only`); None when there is no manifest."""
    from control.manifest import ManifestError, parse_manifest

    file = manifest_file or path / "manifest.yml"
    if manifest_file is None and not file.is_file():
        return None
    try:
        manifest = parse_manifest(file.read_text())
        apps = [manifest.app(only)] if only else list(manifest.applications)
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read manifest {file}: {e}") from None
    except ManifestError as e:
        raise CLIError(f"{file}: {e}") from None
    for warning in manifest.warnings:
        typer.echo(f"warning: {file}: {warning}", err=True)
    jobs = []
    for a in apps:
        if len(a.buildpacks) > 1:
            raise CLIError(f"{file}: {a.name}: several buildpacks are not supported; name one")
        directory = (file.parent / a.path) if a.path else file.parent
        if not directory.is_dir():
            raise CLIError(f"{file}: {a.name}: path {directory} is not a directory")
        bp = a.buildpacks[0] if a.buildpacks else None
        if bp and not ("://" in bp or Path(bp).is_absolute()) and (file.parent / bp).is_dir():
            bp = str(file.parent / bp)
        jobs.append(PushJob(directory, a.name, manifest_params(a), bp, a, strict,
                            env={str(k): str(v) for k, v in a.env.items()}))
    return jobs


WAIT = typer.Option(True, "--wait/--no-wait", help="watch the rollout until it finishes")


@app.command()
def push(path: Path = typer.Argument(Path("."), help="app directory"),
         name: str = typer.Option(None, "--name", "-n", help="app name (default: dir name)"),
         instances: int = typer.Option(None, "--instances", "-i", min=0, max=100),
         memory: str = typer.Option(None, "--memory", "-m", help="e.g. 256M, 1G"),
         env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE, repeatable"),
         health_check: str = typer.Option(None, help="port, process or http:/PATH"),
         max_in_flight: int = typer.Option(None, min=1, max=100,
                                           help="instances replaced at once (default 1)"),
         buildpack: str = typer.Option(None, "--buildpack", "-b",
                                       help="an installed pack's name, a directory or a git URL"),
         no_cache: bool = typer.Option(False, "--no-cache", help="build from an empty cache"),
         manifest_file: Path = typer.Option(None, "--manifest", "-f",
                                            help="manifest (default DIR/manifest.yml)"),
         no_manifest: bool = typer.Option(False, "--no-manifest", help="ignore manifest.yml"),
         strict: bool = typer.Option(False, "--strict", help="make each app exactly what the "
                                     "manifest says (shows every change and asks first)"),
         yes: bool = typer.Option(False, "--yes", "-y", help="apply --strict's changes "
                                  "without asking"),
         wait: bool = WAIT,
         timeout: float = typer.Option(180, help="seconds to wait for the rollout"),
         watch: bool = typer.Option(False, "--watch", help="stay running and push again "
                                    "whenever a file changes"),
         ) -> None:
    """Build DIR and run it; prints the app's URL once every instance runs."""
    from control.names import app_name_problem, parse_memory

    if memory is not None:
        try:
            parse_memory(memory)
        except ValueError as e:
            raise CLIError(str(e)) from None
    if not path.is_dir():
        raise CLIError(f"{path}: no such directory")
    jobs = None if no_manifest else manifest_jobs(path, manifest_file, name, strict)
    if jobs is None:
        if strict:
            raise CLIError("--strict needs a manifest (manifest.yml or -f FILE)")
        jobs = [PushJob(path, name or default_app_name(path), [])]
    flags: list[tuple[str, str | int]] = []
    env_flags: dict[str, str] = {}
    for pair in env:
        var, sep, text = pair.partition("=")
        if not sep or not var:
            raise CLIError(f"--env {pair!r} must look like KEY=VALUE")
        env_flags[var] = text
    for key, value in (("instances", instances), ("memory", memory),
                       ("health_check", health_check), ("max_in_flight", max_in_flight)):
        if value is not None:
            flags.append((key, value))
    if no_cache:
        flags.append(("no_cache", 1))
    api = Api.load()
    for number, job in enumerate(jobs, start=1):
        problem = app_name_problem(job.name)
        if problem:
            raise CLIError(f"{problem} (choose one with --name)")
        job.params += flags
        job.env = {**job.env, **env_flags}
        job.buildpack = buildpack or job.buildpack
        job.yes = yes
        if len(jobs) > 1:
            typer.echo(f"==> {job.name} ({number} of {len(jobs)})", err=True)
        push_app(api, dataclasses.replace(job, params=list(job.params)), wait, timeout)
    if watch:
        watch_and_push(api, path, jobs, timeout)


def watch_and_push(api: Api, path: Path, jobs: list[PushJob], timeout: float) -> None:
    """Push again after each burst of file changes (debounced); a failed push is reported
    and the watch goes on. Ctrl-C ends it."""
    import watchfiles

    patterns = ignore_patterns(path)
    root = path.resolve()

    def wanted(_change: watchfiles.Change, name: str) -> bool:
        rel = os.path.relpath(name, root)
        return not rel.startswith("..") and not ignored(rel, patterns)

    typer.echo(f"Watching {path} for changes (Ctrl-C to stop)", err=True)
    try:
        for changes in watchfiles.watch(root, watch_filter=wanted, debounce=400,
                                        raise_interrupt=False):
            typer.echo(f"{len(changes)} file(s) changed; pushing again", err=True)
            for job in jobs:
                try:
                    push_app(api, dataclasses.replace(job, params=list(job.params)), True,
                             timeout)
                except CLIError as e:
                    typer.echo(f"foundry: {e}", err=True)
    except KeyboardInterrupt:
        pass


@app.command()
def buildpacks(as_json: bool = typer.Option(False, "--json", help="machine-readable output")
               ) -> None:
    """List the installed buildpacks in detection order."""
    rows = Api.load().get("/v1/buildpacks")["buildpacks"]
    if as_json:
        return emit_json(rows)
    table([[r["position"], r["name"]] for r in rows], ["POSITION", "NAME"])


# --- app commands -------------------------------------------------------------------
JSON = typer.Option(False, "--json", help="machine-readable output")


def shown_url(view: dict[str, Any]) -> str:
    """An app's URL as listings show it: "-" for an app the edge has no route for (a
    release without a web process, as control/routing.py decides)."""
    return view["url"] if view["release"] == 0 or "web" in view["processes"] else "-"


@app.command("apps")
def list_apps(as_json: bool = JSON) -> None:
    """List apps."""
    apps = Api.load().get("/v1/apps")["apps"]
    if as_json:
        return emit_json(apps)
    rows = []
    for a in apps:
        running = sum(1 for i in a["instances"] if i["state"] == "RUNNING")
        wanted = sum(a["scale"].get(p, 1) for p in a["processes"] if p != "release")
        rows.append([a["name"], a["state"], f"v{a['release']}" if a["release"] else "-",
                     f"{running}/{wanted}", shown_url(a)])
    table(rows, ["NAME", "STATE", "RELEASE", "RUNNING", "URL"])


@app.command("app")
def show_app(name: str, as_json: bool = JSON) -> None:
    """Show an app: release and each instance."""
    view = Api.load().get(f"/v1/apps/{name}")
    if as_json:
        return emit_json(view)
    typer.echo(f"{view['name']}  {view['state']}  release "
               f"{'v' + str(view['release']) if view['release'] else 'none'}  "
               f"memory {view['memory_mb']}M  "
               + (shown_url(view) if shown_url(view) != "-" else "no route (no web process)"))
    typer.echo("scale: " + (", ".join(f"{p}={view['scale'].get(p, 1)}"
                                       for p in view["processes"]) or "no processes"))
    if view.get("autoscale"):
        a = view["autoscale"]
        cold = view.get("last_cold_start")
        typer.echo(f"autoscale: web {a['min']}..{a['max']}, {a['concurrency']} in flight per "
                   f"instance, idle {a['idle']:.0f} s; last cold start: "
                   + (f"{cold * 1000:.0f} ms" if cold is not None else "none yet"))
    table([[f"{i['process']}.{i['index']}", i["state"], f"v{i['release']}", i["node"], i["port"],
            human_duration(i["uptime"]), i["restarts"], i["reason"]]
           for i in view["instances"]],
          ["INSTANCE", "STATE", "RELEASE", "NODE", "PORT", "UPTIME", "RESTARTS", "REASON"])


@app.command()
def scale(name: str,
          instances: int = typer.Option(None, "--instances", "-i", min=0, max=100),
          process: str = typer.Option(None, "--process", "-p", help="process type (default: "
                                      "web, or the app's only type)"),
          memory: str = typer.Option(None, "--memory", "-m"),
          min_: int = typer.Option(None, "--min", min=0, max=100, help="autoscale: fewest "
                                   "instances (0 scales to zero when idle)"),
          max_: int = typer.Option(None, "--max", min=1, max=100, help="autoscale: most"),
          concurrency: int = typer.Option(None, min=1, help="autoscale: in-flight requests "
                                          "per instance to aim for"),
          idle: str = typer.Option(None, help="autoscale: idle time before zero, e.g. 60s"),
          window: str = typer.Option(None, help="autoscale: averaging window, e.g. 60s "
                                     "(bursts are judged over a tenth of it)"),
          ) -> None:
    """Set how many instances of a process type run, or autoscale web on concurrency."""
    auto = {"min": min_, "max": max_, "concurrency": concurrency, "idle": idle,
            "window": window}
    autoscaling = any(v is not None for v in auto.values())
    if autoscaling == (instances is not None):
        raise CLIError("give either -i N, or autoscaling with --min/--max/--concurrency/--idle")
    body: dict[str, Any] = {"process": process, "instances": instances, **auto}
    if memory:
        body["memory"] = memory
    view = Api.load().request("POST", f"/v1/apps/{name}/scale",
                              json={k: v for k, v in body.items() if v is not None})
    if autoscaling:
        a = view["autoscale"]
        typer.echo(f"{name}: web autoscales between {a['min']} and {a['max']} at "
                   f"{a['concurrency']} in flight per instance (idle {a['idle']:.0f} s)")
    else:
        typer.echo(f"{name}: {view.get('scaled', process)} scaled to {instances}")


def _action(name: str, action: str) -> None:
    Api.load().request("POST", f"/v1/apps/{name}/actions/{action}")
    typer.echo(f"{name}: {action} requested")


@app.command("open")
def open_app(name: str) -> None:
    """Print an app's URL, and open it in a browser when there is a display."""
    view = Api.load().get(f"/v1/apps/{name}")
    if "web" not in view["processes"]:
        raise CLIError(f"{name} has no web process, so no URL")
    typer.echo(view["url"])
    if _has_display():
        import webbrowser

        webbrowser.open(view["url"])


def _has_display() -> bool:
    """A graphical session to open a browser in (never under FOUNDRY_NO_BROWSER)."""
    if os.environ.get("FOUNDRY_NO_BROWSER"):
        return False
    if sys.platform in ("darwin", "win32"):
        return sys.stdout.isatty()
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@app.command()
def stop(name: str) -> None:
    """Stop every instance of an app (its route answers 503)."""
    _action(name, "stop")


@app.command()
def start(name: str) -> None:
    """Start a stopped app."""
    _action(name, "start")


@app.command()
def restart(name: str, wait: bool = WAIT,
            instance: int = typer.Option(None, "--instance", "-i", min=0,
                                         help="restart only this instance index"),
            process: str = typer.Option("web", "--process", "-p",
                                        help="with -i: the instance's process type")) -> None:
    """Replace every instance of an app, one at a time (or, with -i N, just instance N)."""
    api = Api.load()
    if instance is not None:
        api.request("POST", f"/v1/apps/{name}/actions/restart",
                    json={"process": process, "index": instance})
        typer.echo(f"{name}: {process}.{instance} restarting (stopped, then started again)")
        return
    view = api.request("POST", f"/v1/apps/{name}/actions/restart")
    typer.echo(f"{name}: restarting")
    if wait and view["release"]:
        watch_rollout(api, name, view["release"], 180)
        typer.echo(f"{name}: every instance replaced")


@app.command()
def delete(name: str, force: bool = typer.Option(False, "--force", "-f",
                                                 help="do not ask for confirmation")) -> None:
    """Delete an app, its releases and its logs (asks first unless -f)."""
    api = Api.load()
    api.get(f"/v1/apps/{name}")             # a missing app is an error before any question
    if not force:
        if not sys.stdin.isatty():
            raise CLIError(f"not deleting {name}: no terminal to confirm on; pass -f")
        if not typer.confirm(f"Delete {name}, its releases and its logs?", err=True):
            raise CLIError(f"{name} not deleted")
    api.request("DELETE", f"/v1/apps/{name}")
    typer.echo(f"{name} deleted")


def _print_line(line: dict[str, Any]) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(line["ts"]))
    typer.echo(f"{stamp} [{line['source']}] {line['line']}")


def _print_json_line(line: dict[str, Any]) -> None:
    typer.echo(json.dumps(line, sort_keys=True))


@app.command()
def logs(name: str, follow: bool = typer.Option(False, "--follow", "-f", "--tail",
                                                help="keep printing new lines"),
         recent: bool = typer.Option(False, "--recent", help="print recent lines and exit"),
         lines: int = typer.Option(100, "--lines", "-n", min=1, max=5000),
         as_json: bool = typer.Option(False, "--json", help="one JSON object per line")
         ) -> None:
    """Show an app's build and app log lines; -f (or --tail) follows with no gap."""
    del recent  # recent lines are what is shown without --follow
    show = _print_json_line if as_json else _print_line
    api = Api.load()
    page = api.get(f"/v1/apps/{name}/logs", params={"limit": lines})
    for line in page["lines"]:
        show(line)
    after = page["next"] or 0
    while follow:
        page = api.get(f"/v1/apps/{name}/logs", params={"after": after, "wait": 25}, timeout=40)
        for line in page["lines"]:
            show(line)
        after = page["next"] if page["next"] is not None else after


@app.command("env")
def show_env(name: str, as_json: bool = JSON) -> None:
    """Show an app's config vars."""
    env = Api.load().get(f"/v1/apps/{name}/env")["env"]
    if as_json:
        return emit_json(env)
    for key in sorted(env):
        typer.echo(f"{key}={env[key]}")


@app.command("set-env")
def set_env(name: str, pairs: list[str] = typer.Argument(..., help="KEY=VALUE ..."),
            wait: bool = WAIT) -> None:
    """Set config vars (a new release, instances replaced; values already set change nothing)."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CLIError(f"{pair!r} is not KEY=VALUE")
        values[key] = value
    api = Api.load()
    answer = api.request("PATCH", f"/v1/apps/{name}/env", json={"set": values})
    typer.echo(env_change_line(name, "set", list(values), answer.get("unchanged", []),
                               "already has that value", "already have those values"))
    finish(api, name, answer["release"], wait, 180)


@app.command("unset-env")
def unset_env(name: str, keys: list[str] = typer.Argument(...), wait: bool = WAIT) -> None:
    """Remove config vars (a new release, instances replaced; unset ones change nothing)."""
    api = Api.load()
    answer = api.request("PATCH", f"/v1/apps/{name}/env", json={"unset": keys})
    typer.echo(env_change_line(name, "unset", keys, answer.get("unchanged", []),
                               "is not set", "are not set"))
    finish(api, name, answer["release"], wait, 180)


def env_change_line(name: str, verb: str, keys: list[str], unchanged: list[str],
                    why_one: str, why_many: str) -> str:
    """What a config change did: the keys it changed, and those it left as they were."""
    idle = [k for k in dict.fromkeys(keys) if k in unchanged]
    changed = [k for k in dict.fromkeys(keys) if k not in unchanged]
    why = f"{', '.join(idle)} {why_one if len(idle) == 1 else why_many}"
    if not changed:
        return f"{name}: {why}; nothing changed"
    return f"{name}: {verb} {', '.join(changed)}" + (f" ({why})" if idle else "")


@app.command()
def rollback(name: str, version: str = typer.Argument(..., help="release to return to, e.g. v3"),
             wait: bool = WAIT) -> None:
    """Make a new release from an earlier release's droplet and config vars."""
    number = version.lower().lstrip("v")
    if not number.isdigit():
        raise CLIError(f"{version!r} is not a release like v3")
    api = Api.load()
    answer = api.request("POST", f"/v1/apps/{name}/rollback", json={"version": int(number)})
    typer.echo(f"{name}: rolling back to v{number} as v{answer['release']}")
    finish(api, name, answer["release"], wait, 180)


@app.command()
def deployments(name: str, as_json: bool = JSON) -> None:
    """Show an app's rollouts, newest first."""
    rows = Api.load().get(f"/v1/apps/{name}/deployments")["deployments"]
    if as_json:
        return emit_json(rows)
    table([[r["id"], r["kind"], f"v{r['from_release']} -> v{r['to_release']}", r["state"],
            f"{r['updated']}/{r['wanted']}" if "updated" in r else None,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"]))] for r in rows],
          ["ID", "KIND", "RELEASES", "STATE", "PROGRESS", "STARTED"])


@app.command("cancel-deploy")
def cancel_deploy(name: str, wait: bool = WAIT) -> None:
    """Stop a rollout and go back to the release it started from."""
    api = Api.load()
    answer = api.request("POST", f"/v1/apps/{name}/deployments/cancel")
    typer.echo(f"{name}: deployment {answer['canceled']} canceled; rolling back as "
               f"v{answer['release']}")
    finish(api, name, answer["release"], wait, 180)


@app.command()
def releases(name: str, as_json: bool = JSON) -> None:
    """List an app's releases, newest first."""
    rows = Api.load().get(f"/v1/apps/{name}/releases")["releases"]
    if as_json:
        return emit_json(rows)
    table([[f"v{r['version']}", r["pack"], r["droplet"][:12], r["description"],
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"]))] for r in rows],
          ["RELEASE", "PACK", "DROPLET", "DESCRIPTION", "CREATED"])


@app.command()
def events(name: str, as_json: bool = JSON,
           limit: int = typer.Option(100, "--limit", "-n", min=1, max=10000,
                                     help="show the newest N")) -> None:
    """List what happened to an app (the newest 100 unless --limit), oldest first."""
    rows = Api.load().get(f"/v1/apps/{name}/events", params={"limit": limit})["events"]
    if as_json:
        return emit_json(rows)
    table([[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts"])), r["kind"], r["actor"],
            r["detail"]] for r in rows], ["TIME", "EVENT", "BY", "DETAIL"])


@app.command()
def nodes(as_json: bool = JSON) -> None:
    """List nodes with state, isolation tier, seccomp filter, capacity and instances."""
    rows = Api.load().get("/v1/nodes")["nodes"]
    if as_json:
        return emit_json(rows)
    now = time.time()
    table([[n["name"], n["id"], n["state"], n["tier"], n.get("seccomp"),
            n["address"], f"{n['used_mb']}/{n['memory_mb']}M", n["instances"],
            f"{now - n['last_heartbeat']:.0f}s ago"] for n in rows],
          ["NAME", "ID", "STATE", "TIER", "SECCOMP", "ADDRESS", "MEMORY", "INSTANCES",
           "HEARTBEAT"])


@app.command()
def routes(as_json: bool = JSON) -> None:
    """List every route the edge serves, with its running backends."""
    table_ = Api.load().get("/v1/routes")["routes"]
    if as_json:
        return emit_json(table_)
    table([[r["host"], r["path"], r["app"], len(r["backends"]),
            ",".join(f"{k}={v}" for k, v in sorted(r.get("options", {}).items())) or None]
           for r in table_], ["HOST", "PATH", "APP", "BACKENDS", "OPTIONS"])


@app.command("map-route")
def map_route(name: str, route: str = typer.Argument(..., help="HOST[/PATH]"),
              balance: str = typer.Option(None, help="round-robin or least-in-flight"),
              timeout: int = typer.Option(None, help="backend response timeout, seconds"),
              sticky: bool = typer.Option(None, "--sticky/--no-sticky",
                                          help="pin a client to its instance")) -> None:
    """Route another host (and optional path prefix) to an app."""
    body = {"route": route, "balance": balance, "timeout": timeout, "sticky": sticky}
    Api.load().request("POST", f"/v1/apps/{name}/routes", json=body)
    typer.echo(f"{route} -> {name}")


@app.command("unmap-route")
def unmap_route(name: str, route: str = typer.Argument(..., help="HOST[/PATH]")) -> None:
    """Remove a route added with map-route."""
    Api.load().request("DELETE", f"/v1/apps/{name}/routes", json={"route": route})
    typer.echo(f"{route} no longer routed to {name}")


@app.command(context_settings={"allow_interspersed_args": False})
def run(name: str, command: list[str] = typer.Argument(..., help="the command, after --"),
        wait: bool = WAIT) -> None:
    """Run a one-off command with the app's droplet and config on a node; exits with its
    exit code (`foundry run NAME -- python manage.py migrate`)."""
    import shlex

    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CLIError("give the command after --, e.g. foundry run NAME -- ls -la")
    api = Api.load()
    task = api.request("POST", f"/v1/apps/{name}/tasks",
                       json={"command": shlex.join(command)})["task"]
    typer.echo(f"Running task {task} of {name}", err=True)
    if not wait:
        return
    after: int | None = 0
    while True:
        state = api.get(f"/v1/tasks/{task}")
        done = state["state"] != "RUNNING"
        page = api.get(f"/v1/apps/{name}/logs", params={"build": task, "after": after,
                                                         "wait": 0 if done else 10}, timeout=40)
        for line in page["lines"]:
            if not line["line"].startswith("[foundry] task "):
                typer.echo(line["line"])
        after = page["next"] or after
        if done and not page["lines"]:
            break
    if state["exit_code"] is None:
        raise CLIError(f"task {task} did not finish: {state['reason']}")
    raise typer.Exit(state["exit_code"])


@app.command("git-remote")
def git_remote(name: str, remote: str = typer.Option("foundry", help="remote name"),
               directory: Path = typer.Option(Path("."), "--dir", help="the git work tree")
               ) -> None:
    """Add (or update) a git remote that deploys NAME on `git push REMOTE main`, with a
    deploy token limited to NAME (re-running replaces it and revokes the old one)."""
    import socket

    from control.names import app_name_problem

    problem = app_name_problem(name)
    if problem:
        raise CLIError(problem)
    api = Api.load()
    url = f"{api.url}/git/{name}.git"

    def git(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                                text=True)
        if check and result.returncode != 0:
            raise CLIError(f"git {' '.join(args[:2])}: {result.stderr.strip()}")
        return result

    git("rev-parse", "--git-dir")
    # The remote gets a deploy token of its own, limited to this app (revocable, listed by
    # `foundry tokens list`), never the caller's token, which may be the admin's.
    label = f"git-remote {name} ({socket.gethostname()})"[:80]
    try:
        minted = api.request("POST", "/v1/tokens", json={"kind": "deploy", "apps": [name],
                                                          "label": label})
    except CLIError as e:
        raise CLIError(f"cannot mint a deploy token for the remote ({e}); an admin can run "
                       "`foundry git-remote`, or add the header with a deploy token by hand"
                       ) from None
    previous = git("config", "--get", f"remote.{remote}.foundryTokenId", check=False).stdout
    if git("remote", "get-url", remote, check=False).returncode == 0:
        git("remote", "set-url", remote, url)
    else:
        git("remote", "add", remote, url)
    # The token goes in a header scoped to this URL, not in the remote's URL.
    git("config", f"http.{url}.extraHeader", f"Authorization: Bearer {minted['token']}")
    git("config", f"remote.{remote}.foundryTokenId", minted["id"])
    if previous.strip() and previous.strip() != minted["id"]:
        with contextlib.suppress(CLIError):    # already revoked, or not ours to revoke
            api.request("DELETE", f"/v1/tokens/{previous.strip()}")
    typer.echo(f"remote {remote} -> {url}; deploy with: git push {remote} main")
    typer.echo(f"the remote uses deploy token {minted['id']} ({label}); "
               f"`foundry tokens revoke {minted['id']}` withdraws it", err=True)


# --- tokens -------------------------------------------------------------------------
@tokens_app.command("create")
def tokens_create(kind: str = typer.Option(..., help="join, deploy, read, edge or admin"),
                  apps: str = typer.Option(None, help="limit to these apps: a,b"),
                  ttl: str = typer.Option(None, help="expire after e.g. 1h, 7d"),
                  uses: int = typer.Option(None, min=1, help="usable for this many requests"),
                  label: str = typer.Option(None, help="a note to recognise it by"),
                  as_json: bool = JSON) -> None:
    """Mint a token; its secret is printed once and never again."""
    body: dict[str, Any] = {"kind": kind, "ttl": ttl, "uses": uses, "label": label}
    if apps:
        body["apps"] = [a.strip() for a in apps.split(",") if a.strip()]
    answer = Api.load().request("POST", "/v1/tokens", json=body)
    if as_json:
        return emit_json(answer)
    typer.echo(answer["token"])
    typer.echo(f"{kind} token {answer['id']} created; the secret above is not shown again",
               err=True)


@tokens_app.command("list")
def tokens_list(as_json: bool = JSON) -> None:
    """List tokens (never their secrets)."""
    rows = Api.load().get("/v1/tokens")["tokens"]
    if as_json:
        return emit_json(rows)
    now = time.time()
    table([[t["id"], t["kind"], ",".join(t["apps"]) if t["apps"] else "all",
            "revoked" if t["revoked"] else "expired" if t["expires_at"] and t["expires_at"] < now
            else "active", human_duration(t["expires_at"] - now) if t["expires_at"] and
            t["expires_at"] > now else None, t["uses_left"], t["node"], t["label"]]
           for t in rows], ["ID", "KIND", "APPS", "STATE", "EXPIRES IN", "USES LEFT", "NODE",
                            "LABEL"])


@tokens_app.command("revoke")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token: it stops working at once."""
    Api.load().request("DELETE", f"/v1/tokens/{token_id}")
    typer.echo(f"token {token_id} revoked")


# --- roles --------------------------------------------------------------------------
def machine_memory_mb() -> int:
    """Total memory of this machine in MiB (4 GiB where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 4096


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise CLIError(f"--listen {listen!r} must look like HOST:PORT")
    return host or "127.0.0.1", int(port)


KEYRING = typer.Option(None, envvar="FOUNDRY_KEYRING",
                       help="file of the keys that seal config vars (default: keyring.json "
                       "in the home, made on first start)")


@app.command()
def control(home: Path = typer.Option(None, help="state directory"),
            listen: str = typer.Option("127.0.0.1:7070"),
            domain: str = typer.Option("localhost"),
            api_address: str = typer.Option(None, help="HOST:PORT the edge routes api.<domain> to"),
            apps_url: str = typer.Option(None, help="URL pattern of apps, with {app} "
                                         "(default http://{app}.DOMAIN:EDGE_PORT)"),
            edge_port: int = typer.Option(8080, min=1, max=65535, help="the port the edge "
                                          "listens on, for app URLs (80: none shown)"),
            tls: bool = typer.Option(False, "--tls", help="serve HTTPS with a self-signed "
                                     "certificate made on first start"),
            tls_cert: Path = typer.Option(None, help="serve HTTPS with this certificate"),
            tls_key: Path = typer.Option(None, help="...and this private key"),
            node_ttl: float = typer.Option(15.0, min=1, help="seconds of silence before a "
                                           "node is lost and its instances move"),
            immediate_restarts: int = typer.Option(3, min=0, help="crashes restarted at once"),
            backoff: float = typer.Option(30.0, min=0, help="first restart delay after those, "
                                          "seconds (doubling)"),
            backoff_max: float = typer.Option(960.0, min=0, help="longest restart delay"),
            give_up_after: int = typer.Option(200, min=1, help="restarts before giving up"),
            healthy_reset: float = typer.Option(300.0, min=1, help="seconds of healthy "
                                                "running that reset the crash count"),
            keyring: Path = KEYRING) -> None:
    """Run the control plane; its first start writes an admin token into its home."""
    _die_with_up()
    import socket

    from control.config import ControlConfig
    from control.main import run
    from control.reconciler import Policy
    from control.tls import TLS, default_names, self_signed

    host, port = split_listen(listen)
    home = foundry_home(home) / "control" if home is None else home
    os.umask(0o077)     # the home is private from its first file on (the TLS key included)
    cert = None
    if tls_cert or tls_key:
        if not (tls_cert and tls_key and tls_cert.is_file() and tls_key.is_file()):
            raise CLIError("--tls-cert and --tls-key must both name readable files")
        cert = TLS(tls_cert, tls_key)
    elif tls:
        cert = self_signed(home / "tls", default_names(host))
    scheme = "https" if cert else "http"
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host

    def announce(created: Path | None) -> None:
        typer.echo(f"Foundry control plane (home {home})")
        typer.echo(f"  API:         {scheme}://{shown}:{port}  (listening on {host}:{port})")
        typer.echo(f"  Apps:        {apps_url or default_apps_url(domain, edge_port)}")
        if cert:
            typer.echo(f"  Certificate: {cert.cert}  fingerprint {cert.fingerprint}")
        if created:
            typer.echo(f"  Admin token: {created}  (made now, readable only by you; "
                       "mint other tokens with it, then keep it safe)")
        elif (home / "admin-token").exists():
            typer.echo(f"  Admin token: {home / 'admin-token'}")
        sys.stdout.flush()

    run(ControlConfig(home=home, domain=domain, host=host, port=port,
                      api_address=api_address or f"{host}:{port}",
                      apps_url=apps_url or default_apps_url(domain, edge_port),
                      tls_cert=cert.cert if cert else None, tls_key=cert.key if cert else None,
                      tls_fingerprint=cert.fingerprint if cert else None, keyring=keyring,
                      policy=Policy(immediate_restarts=immediate_restarts, backoff_base=backoff,
                                    backoff_max=backoff_max, give_up_after=give_up_after,
                                    reset_after=healthy_reset, node_ttl=node_ttl)),
        announce)


def default_apps_url(domain: str, edge_port: int) -> str:
    """Where users reach apps: the edge's port in the URL unless it is HTTP's own."""
    return f"http://{{app}}.{domain}" + ("" if edge_port == 80 else f":{edge_port}")


@app.command("rotate-key")
def rotate_key(home: Path = typer.Option(None, help="the control plane's state directory"),
               keyring: Path = KEYRING,
               new_key: bool = typer.Option(True, "--new-key/--no-new-key",
                                            help="add a new current key first (--no-new-key: "
                                            "reseal under the current key of a keyring you "
                                            "edited yourself)")) -> None:
    """Reseal every config var under a new key, then drop the keys nothing uses.

    Safe to interrupt and run again, and to run while the control plane serves: each value
    is rewritten in its own transaction, and an old key stays until no value names it.
    """
    from control.store import Store

    home = foundry_home(home) / "control" if home is None else home
    if not (home / "foundry.db").is_file():
        raise CLIError(f"no control plane database in {home} (give --home)")
    store = Store(home / "foundry.db", keyring=keyring)
    try:
        label = store.keyring.add_current() if new_key else store.keyring.keys.current
        store.reseal()
        dropped = store.drop_unused_keys()
        sealed = store.sealed_labels()
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
    others = sorted(set(sealed) - {label})
    if others:      # written meanwhile by a control plane that had not seen the new key yet
        raise CLIError(f"values under key(s) {', '.join(others)} remain; run rotate-key "
                       "--no-new-key again")
    typer.echo(f"{len(sealed.get(label, []))} value(s) sealed with key {label}; dropped "
               f"key(s): {', '.join(dropped) or 'none'} ({store.keyring.path})")


@app.command()
def edge(listen: str = typer.Option("127.0.0.1:8080"),
         control_url: str = typer.Option(..., "--control"),
         token: str = typer.Option(..., envvar="FOUNDRY_EDGE_TOKEN"),
         workers: int = typer.Option(0, min=0, max=64, help="worker processes; 0: one per core"),
         admin: str = typer.Option(None, help="HOST:PORT serving GET /healthz"),
         trusted_proxy: list[str] = typer.Option([], help="CIDR whose X-Forwarded-* headers "
                                                 "are believed; repeatable"),
         access_logs: bool = typer.Option(True, "--access-logs/--no-access-logs",
                                          help="ship access lines to `foundry logs` (router)")
         ) -> None:
    """Run the edge proxy."""
    _die_with_up()
    import ipaddress

    from edge.listen import PortInUse
    from edge.main import WorkerDied, run
    from edge.proxy import EdgeConfig

    host, port = split_listen(listen)
    admin_host, admin_port = split_listen(admin) if admin else ("127.0.0.1", None)
    for cidr in trusted_proxy:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise CLIError(f"--trusted-proxy {cidr!r} is not a network like 10.0.0.0/8") from None
    try:
        run(EdgeConfig(host=host, port=port, control_url=control_url.rstrip("/"), token=token,
                       workers=workers, admin_host=admin_host, admin_port=admin_port,
                       trusted_proxies=tuple(trusted_proxy), ship_access_logs=access_logs))
    except (WorkerDied, PortInUse) as e:
        raise CLIError(str(e)) from None


def join_token(flag: str | None, file: str | None, env: str | None) -> str | None:
    """The join token from --token-file (a path, or - for stdin), FOUNDRY_JOIN_TOKEN or
    --token, in that order; --token is shown by `ps` to every user, so it draws a warning."""
    given = [what for what, v in (("--token", flag), ("--token-file", file)) if v]
    if len(given) > 1:
        raise CLIError("give the join token once: --token or --token-file")
    if file is not None:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise CLIError(f"--token-file {file}: {e}") from None
        if not text.strip():
            raise CLIError(f"--token-file {file}: no token in it")
        return text.strip()
    if flag is not None:
        typer.echo("warning: --token is visible to every user in `ps`; use --token-file FILE, "
                   "--token-file - (stdin) or FOUNDRY_JOIN_TOKEN", err=True)
        return flag
    return env or None


@node_app.command("join")
def node_join(control_url: str = typer.Argument(..., help="control plane URL"),
              token: str | None = typer.Option(None, help="join token (only needed the first "
                                        "time; visible in `ps`: prefer --token-file or "
                                        "FOUNDRY_JOIN_TOKEN)"),
              token_file: str = typer.Option(None, help="read the join token from this file, "
                                             "or from stdin with -"),
              home: Path = typer.Option(None), name: str = typer.Option(None),
              advertise: str = typer.Option("127.0.0.1", help="address instances are reached at"),
              memory: str = typer.Option("auto", help="memory offered to instances, e.g. "
                                         "8G (auto: 90% of this machine's)"),
              grace: float = typer.Option(10.0, help="seconds between SIGTERM and SIGKILL"),
              tier: str = typer.Option(None, envvar="FOUNDRY_JAIL_TIER",
                                       help="force a weaker jail tier: rootless or plain"),
              start_timeout: float = typer.Option(
                  60.0, envvar="FOUNDRY_START_TIMEOUT", help="seconds to become healthy"),
              liveness_interval: float = typer.Option(
                  30.0, envvar="FOUNDRY_LIVENESS_INTERVAL", help="seconds between checks"),
              staging_env: Path = typer.Option(
                  None, envvar="FOUNDRY_STAGING_ENV_FILE",
                  help="KEY=VALUE file of variables every build gets (proxies, package "
                       "indexes); default: staging.env in the node's home, if present"),
              ) -> None:
    """Join a control plane (or rejoin with the saved identity) and run instances."""
    _die_with_up()
    import socket

    import uv

    from control.names import parse_memory
    from node.agent import JoinError, NodeConfig
    from node.main import run
    from node.staging import BASE, ENV_FILE, StagingEnvError, load_staging_env
    from packs import PACKS_DIR

    token = join_token(token, token_file, os.environ.get("FOUNDRY_JOIN_TOKEN"))
    try:
        memory_mb = machine_memory_mb() * 9 // 10 if memory == "auto" else parse_memory(memory)
    except ValueError as e:
        raise CLIError(str(e)) from None
    home = home or foundry_home() / "node"
    # Builds run tenant code: they get the admin's staging env, never this process's own.
    staging_file = staging_env or home / ENV_FILE
    try:
        staging = load_staging_env(staging_file) if staging_env or staging_file.exists() else {}
    except StagingEnvError as e:
        raise CLIError(str(e)) from None
    try:
        run(NodeConfig(home=home, control_url=control_url.rstrip("/"),
                       packs_dir=PACKS_DIR, join_token=token, name=name or socket.gethostname(),
                       address=advertise, memory_mb=memory_mb, base_env=dict(BASE), grace=grace,
                       build_env={**staging, "FOUNDRY_UV": uv.find_uv_bin()}, tier=tier,
                       start_timeout=start_timeout, liveness_interval=liveness_interval))
    except JoinError as e:
        raise CLIError(str(e)) from None


@node_app.command("drain")
def node_drain(name: str) -> None:
    """Move a node's instances elsewhere (started there first, then stopped here)."""
    Api.load().request("POST", f"/v1/nodes/{name}/state", json={"state": "draining"})
    typer.echo(f"node {name} is draining; `foundry nodes` shows its instances leave")


@node_app.command("ready")
def node_ready(name: str) -> None:
    """Let a drained node receive instances again."""
    Api.load().request("POST", f"/v1/nodes/{name}/state", json={"state": "ready"})
    typer.echo(f"node {name} is ready")


@node_app.command("remove")
def node_remove(name: str, force: bool = typer.Option(
        False, "--force", help="remove a node that is not lost or drained; what still runs "
        "on it is placed elsewhere and that node can no longer reach the control plane")
                ) -> None:
    """Forget a lost or drained node; it must join again with a join token to come back."""
    done = Api.load().request("DELETE", f"/v1/nodes/{name}",
                              params={"force": "1"} if force else None)
    typer.echo(f"node {name} removed" + (f"; {done['instances']} instance(s) on it are placed "
                                         "elsewhere" if done["instances"] else ""))


# --- up -----------------------------------------------------------------------------
@app.command()
def up(home: Path = typer.Option(None, help="state directory (default $FOUNDRY_HOME or "
                                             "~/.foundry)"),
       http_port: int = typer.Option(8080, min=1, max=65535, help="the edge's port"),
       api_port: int = typer.Option(7070, min=1, max=65535, help="the control API's port"),
       domain: str = typer.Option("localhost", help="apps are <app>.<domain>")) -> None:
    """Run control plane, edge and one node on this machine, in the foreground."""
    Up(foundry_home(home), http_port, api_port, domain).run()


def _write_secret(path: Path, secret: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


def _isolation() -> str:
    """The jail tier the local node will pick, for `foundry up`'s banner."""
    from node.jail import PLAIN, JailError, choose_tier, probe

    try:
        choice = choose_tier(probe()[0], os.environ.get("FOUNDRY_JAIL_TIER"))
    except JailError as e:
        return f"unknown ({e})"
    if choice.tier == PLAIN:
        return f"plain - WARNING: not a security boundary ({choice.reason})"
    return f"{choice.tier} ({choice.reason})"


UP_PID_ENV = "FOUNDRY_UP_PID"    # given to each role `foundry up` starts: its parent's pid
UP_HOME_ENV = "FOUNDRY_UP_HOME"  # ...and the home, which marks every process of that platform
PR_SET_PDEATHSIG = 1


def _die_with_up() -> None:
    """In a role that `foundry up` started: get SIGKILL the moment `foundry up` dies, even
    by kill -9 (its jails then die with the node agent, by bubblewrap's die-with-parent)."""
    parent = os.environ.pop(UP_PID_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(parent):   # it died before the signal was armed
        os._exit(1)


@dataclass(frozen=True)
class ProcSeen:
    """What `foundry up` reads of one process when it looks for an earlier run's leftovers."""

    pid: int
    up_home: str | None        # its FOUNDRY_UP_HOME
    instance: bool             # it carries a jail marker (an instance, build or task)
    cwd: str | None


def leftovers(seen: list[ProcSeen], home: Path, me: int) -> list[int]:
    """The processes an earlier `foundry up` of `home` left: its roles (and their children),
    and plain-tier jails working under its node's directory. Pure; never this process."""
    node = str(home / "node") + "/"
    return sorted(p.pid for p in seen if p.pid != me and (
        p.up_home == str(home) or (p.instance and (p.cwd or "").startswith(node))))


def _processes() -> list[ProcSeen]:
    from node.proctree import MARKER

    seen = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            cwd: str | None = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        home = next((v.split(b"=", 1)[1].decode(errors="replace") for v in env
                     if v.startswith(UP_HOME_ENV.encode() + b"=")), None)
        seen.append(ProcSeen(int(entry), home, any(v.startswith(MARKER.encode() + b"=")
                                                   for v in env), cwd))
    return seen


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a live process from a reused pid)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class Up:
    """`foundry up`: the three roles as supervised child processes of this one.

    Children run in their own sessions, so a Ctrl-C reaches only this process, which
    then stops them in order: edge and node first (the node stops its apps), then the
    control plane, all within 10 s. A child that dies on its own is restarted. SIGHUP (a
    closed terminal) stops the platform as Ctrl-C does; if this process dies without
    stopping (kill -9), the kernel kills each role with it (`_die_with_up`), and the next
    `foundry up` on the home removes whatever an older crash still left.
    """

    NODE_GRACE = 6.0

    def __init__(self, home: Path, http_port: int, api_port: int, domain: str) -> None:
        self.home = home
        self.http_port = http_port
        self.api_port = api_port
        self.domain = domain
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.env: dict[str, dict[str, str]] = {}

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _token(self, store: Any, path: Path, kind: str) -> str:
        if path.exists():
            secret = path.read_text().strip()
            token = store.authenticate(secret)
            if token is not None and token.kind == kind:
                return secret
        _, secret = store.create_token(kind, label=f"foundry up ({kind})")
        _write_secret(path, secret)
        return str(secret)

    @property
    def pid_file(self) -> Path:
        return self.home / "up.pid"

    def claim_home(self) -> None:
        """Refuse a home another live `foundry up` runs; clear what a crashed one left."""
        try:
            pid, started = self.pid_file.read_text().split()
        except (OSError, ValueError):
            pid, started = "0", ""
        if pid.isdigit() and int(pid) != os.getpid() and _start_time(int(pid)) == started:
            raise CLIError(f"foundry up is already running for {self.home} (pid {pid})")
        killed = self._kill_leftovers() if sys.platform.startswith("linux") else 0
        groups = self._sweep_cgroups()
        if killed or groups or self.pid_file.exists():
            typer.echo(f"Cleaned up after an earlier run that did not stop: {killed} "
                       f"processes killed, {groups} jail cgroups removed")
        _write_secret(self.pid_file, f"{os.getpid()} {_start_time(os.getpid())}")

    def _kill_leftovers(self) -> int:
        pids = leftovers(_processes(), self.home, os.getpid())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.05)   # (a zombie whose parent is gone is reaped by init at once)
        return len(pids)

    def _sweep_cgroups(self) -> int:
        """Jail cgroups of this home's node that a killed node agent could not remove."""
        if not sys.platform.startswith("linux") or os.geteuid() != 0:
            return 0
        from node import cgroups
        from node.jail import scope_of

        driver = cgroups.detect()
        if driver is None:
            return 0
        return driver.scoped(scope_of(str((self.home / "node").resolve()))[0]).sweep()

    def prepare(self) -> None:
        """Create the home, the tokens the roles need, and the CLI's settings."""
        from control.store import Store
        from control.vault import secure_home

        for sub in ("control", "node", "logs"):
            (self.home / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        self.claim_home()
        try:
            self.check_ports()   # after claim_home: a crashed run of this home held them
        except CLIError:
            self.pid_file.unlink(missing_ok=True)
            raise
        tightened = secure_home(self.home / "control")
        if tightened:
            typer.echo(f"tightened {tightened} path(s) under {self.home / 'control'}: "
                       "group/other access removed", err=True)
        store = Store(self.home / "control" / "foundry.db")
        try:
            self._token(store, self.home / "admin-token", "admin")
            edge_token = self._token(store, self.home / "edge-token", "edge")
            node_env = {}
            if not (self.home / "node" / "identity.json").exists():
                _, node_env["FOUNDRY_JOIN_TOKEN"] = store.create_token(
                    "join", uses=1, ttl=3600, label="foundry up (local node)")
        finally:
            store.close()
        self.env = {"control": {}, "node": node_env, "edge": {"FOUNDRY_EDGE_TOKEN": edge_token}}
        (self.home / "cli.json").write_text(json.dumps({
            "api": self.api_url, "token_file": str(self.home / "admin-token"),
            "apps_url": self.apps_url()}, indent=2))

    def apps_url(self) -> str:
        return f"http://{{app}}.{self.domain}:{self.http_port}"

    def argv(self, role: str) -> list[str]:
        me = [sys.executable, "-m", "foundry"]
        if role == "control":
            return [*me, "control", "--home", str(self.home / "control"),
                    "--listen", f"127.0.0.1:{self.api_port}", "--domain", self.domain,
                    "--apps-url", self.apps_url()]
        if role == "node":
            return [*me, "node", "join", self.api_url, "--home", str(self.home / "node"),
                    "--name", "local", "--grace", str(self.NODE_GRACE)]
        return [*me, "edge", "--listen", f"0.0.0.0:{self.http_port}", "--control", self.api_url]

    def spawn(self, role: str) -> None:
        log = open(self.home / "logs" / f"{role}.log", "ab")  # noqa: SIM115 (child keeps it)
        here = str(Path(__file__).resolve().parent)
        env = {**os.environ, **self.env[role],
               "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
               UP_PID_ENV: str(os.getpid()), UP_HOME_ENV: str(self.home)}
        self.procs[role] = subprocess.Popen(self.argv(role), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True)
        log.close()

    def wait_ready(self, role: str, check: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            if self.procs[role].poll() is not None:
                break
            if check():
                return
            time.sleep(0.05)
        log = self.home / "logs" / (role + ".log")
        reason = _last_line(log) if self.procs[role].poll() is not None else ""
        raise CLIError(f"{role} did not start{': ' + reason if reason else ''}; see {log}")

    def run(self) -> None:
        self.prepare()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: setattr(self, "stopping", True))
        try:
            self.spawn("control")
            self.wait_ready("control", lambda: _http_ok(self.api_url + "/v1/health"))
            self.spawn("node")
            self.spawn("edge")
            self.wait_ready("edge", lambda: _port_open(self.http_port))
            self.banner()
            self.supervise()
        finally:
            self.shutdown()

    def check_ports(self) -> None:
        """Refuse to start beside another program on our ports, before writing anything
        but the pid file. The roles refuse too, but the readiness checks would take the
        other program's answers for theirs (another platform's health, another edge's open
        port) and report a platform that is not ours."""
        from edge.listen import PortInUse, check_port_free

        for host, port, option in (("127.0.0.1", self.api_port, "--api-port"),
                                   ("0.0.0.0", self.http_port, "--http-port")):
            try:
                check_port_free(host, port)
            except PortInUse as e:
                raise CLIError(f"{e} (pick another with {option})") from None

    def banner(self) -> None:
        typer.echo(f"Foundry is up (home {self.home})")
        typer.echo(f"  API:        {self.api_url}  (also http://api.{self.domain}:{self.http_port})")
        typer.echo(f"  Apps:       {self.apps_url().replace('{app}', '<app>')}")
        typer.echo(f"  Admin token: {self.home / 'admin-token'}")
        typer.echo(f"  Logs:       {self.home / 'logs'}")
        typer.echo(f"  Isolation:  {_isolation()}")
        if self.home != Path.home() / ".foundry":
            typer.echo(f"In another terminal, first: export FOUNDRY_HOME={self.home.resolve()}")
        typer.echo("Press Ctrl-C to stop.", err=False)
        sys.stdout.flush()

    def supervise(self) -> None:
        restarts: dict[str, list[float]] = {}
        while not self.stopping:
            time.sleep(0.2)
            for role, proc in list(self.procs.items()):
                if proc.poll() is None or self.stopping:
                    continue
                recent = [t for t in restarts.get(role, []) if time.monotonic() - t < 60]
                if len(recent) >= 5:
                    raise CLIError(f"{role} keeps exiting (code {proc.returncode}); see "
                                   f"{self.home / 'logs' / (role + '.log')}")
                typer.echo(f"{role} exited with code {proc.returncode}; restarting", err=True)
                restarts[role] = [*recent, time.monotonic()]
                self.spawn(role)

    def shutdown(self) -> None:
        """Stop edge and node, then the control plane; kill whatever outlives 10 s."""
        deadline = time.monotonic() + 9.5
        for group in (("edge", "node"), ("control",)):
            for role in group:
                if role in self.procs and self.procs[role].poll() is None:
                    self.procs[role].send_signal(signal.SIGTERM)
            for role in group:
                if role in self.procs:
                    try:
                        self.procs[role].wait(max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        self.procs[role].kill()
                        self.procs[role].wait()
        self.pid_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):   # after SIGHUP the terminal may be gone
            typer.echo("Foundry stopped.")


def _last_line(path: Path) -> str:
    """The last non-empty line of a role's log: why it exited, when it said so."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return last.removeprefix("foundry: ")


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def usage_errors() -> tuple[type[Exception], type[Exception], tuple[type[Exception], ...]]:
    """(UsageError, ClickException, NoArgsIsHelpError or ()) as the installed typer raises them.

    typer 0.29 vendors click as `typer._click` and raises its own copies of click's
    exceptions, which `click.UsageError` does not catch; older typer raises click's own.
    Its public `BadParameter` is a UsageError either way, so the classes are taken from its
    ancestry instead of from a module path that changes between versions.
    """
    ancestry = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
    usage, base = ancestry["UsageError"], ancestry["ClickException"]
    no_args = getattr(sys.modules[usage.__module__], "NoArgsIsHelpError", None)
    return usage, base, (no_args,) if no_args else ()


def one_line(error: Exception) -> str:
    """A click error's message as one stderr line: its hints may span lines ("Choose from:")."""
    return " ".join(getattr(error, "format_message", error.__str__)().split())


def main() -> None:
    """Entry point: run a command; report any failure as one line on stderr."""
    from control.errors import FoundryError

    usage_error, click_error, no_args_error = usage_errors()
    try:
        code = app(standalone_mode=False)
    except (CLIError, FoundryError) as e:
        typer.echo(f"foundry: {e}", err=True)
        sys.exit(1)
    except no_args_error as e:
        # `foundry` or `foundry node` alone: the help is what was asked for, on stdout;
        # the missing command is still a usage error (click's own exit code for it)
        typer.echo(getattr(e, "format_message", e.__str__)())
        typer.echo("foundry: missing command (listed above)", err=True)
        sys.exit(2)
    except usage_error as e:
        typer.echo(f"foundry: {one_line(e)}", err=True)
        sys.exit(2)
    except click_error as e:
        typer.echo(f"foundry: {one_line(e)}", err=True)
        sys.exit(getattr(e, "exit_code", 1))
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)

if __name__ == "__main__":
    main()
