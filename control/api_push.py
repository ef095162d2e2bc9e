"""API handlers for source arriving: pushes (a tarball or a resource list), builds,
buildpacks, resource matching, and git's smart HTTP (the pre-receive hook deploys).

Scope: the file store's files and uploaded buildpacks are recorded per app (the store's
file owners); a caller matches, lists and assembles only files of apps it may act on,
names only buildpacks uploaded for them, and each push makes its source's files the
app's whole set, so files no app owns any more are deleted."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any, cast

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from control import gitserve, resources
from control.auth import (
    APP_KINDS,
    READ_KINDS,
    check_scope,
    hide_unless_visible,
    require,
    scope_of,
)
from control.blobs import BlobStore
from control.bodies import (
    LISTING,
    MATCH,
    PUSH,
    PUSH_CONFIG,
    PUSH_QUERY,
    PushBody,
    PushConfig,
)
from control.context import (
    Control,
    app_call,
    check_config,
    check_length,
    control_of,
    json_body,
    json_object,
)
from control.errors import (
    BadRequest,
    Conflict,
    FoundryError,
    NotFound,
    TooLarge,
    Unauthorized,
    Unprocessable,
)
from control.model import BUILD_ENDED
from control.names import (
    app_name_problem,
    process_name_problem,
)
from control.rows import AppChanges, BuildOptions
from control.schema import query
from control.store import Token
from control.uploads import check_archive
from packs import ordered_names


async def push(request: Request) -> Response:
    """Upload a source: a gzip'd tar body, or JSON naming files the control plane has
    (resource matching). Config vars travel in the body, never in the URL: JSON's "env"
    (with "replace_env"), or a JSON prefix of `Foundry-Config-Length` bytes before the
    tarball. Creates the app if needed and queues a build."""
    ctl, name, token = app_call(request, APP_KINDS)
    q = request.query_params
    if "env" in q or "replace_env" in q:
        raise BadRequest(
            "config vars travel in the request body, not in the URL (where "
            "logs would keep them); upgrade the foundry CLI"
        )
    settings = _push_settings(q)
    options = _build_options(ctl, q, scope_of(token))
    referenced: set[str] = set()
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await json_body(
            request,
            PUSH,
            ctl.config.requests.resource_list,
            ctl.config.requests.resource_list_expanded,
        )
        env, replace = _push_config(body)
        _check_push_config(ctl, name, env, replace)
        digest = await _assemble_source(ctl, body, token, referenced)  # resource matching
    else:
        (env, replace), prefix, chunks = await _config_prefix(ctl, request, name)
        digest = await _receive_source(ctl, request, chunks, prefix)
    release_files(ctl, name, referenced)  # this push supersedes the app's older files
    created = _save_push_settings(ctl, name, settings, env, replace)
    # A build that ends on this release changed nothing: it made no new release.
    current = ctl.store.get_app(name)["release"]
    build = ctl.store.create_build(name, digest, options)
    ctl.store.add_event(name, "build-queued", f"build {build} queued", token.id)
    return JSONResponse(
        {"app": name, "build": build, "created": created, "current_release": current},
        status_code=201,
    )


def _push_settings(q: Any) -> AppChanges:
    """The app settings a push's query asks for (instances, memory, max_in_flight,
    health_check), each read as PUSH_QUERY says."""
    settings: AppChanges = {}
    found = {key: query(spec, q, key) for key, spec in PUSH_QUERY.items() if key in q}
    if "instances" in found:
        settings["scale"] = {"web": cast(int, found["instances"])}
    if "memory" in found:
        settings["memory_mb"] = cast(int, found["memory"])
    if "max_in_flight" in found:
        settings["max_in_flight"] = cast(int, found["max_in_flight"])
    if "health_check" in found:
        settings["health_check"] = cast(str, found["health_check"])
    return settings


def _push_config(body: PushConfig) -> tuple[dict[str, str], bool]:
    """A push's config vars ("env": {KEY: VALUE}) and whether they replace the app's
    ("replace_env": push --strict)."""
    return body.get("env", {}), body.get("replace_env", False)


def _check_push_config(ctl: Control, name: str, env: dict[str, str], replace: bool) -> None:
    """Refuse a push whose config would pass the cap before any of its source is stored."""
    before = ctl.store.get_app(name)["env"] if ctl.store.app_exists(name) else {}
    check_config(ctl, before, env if replace else {**before, **env})


async def _config_prefix(
    ctl: Control, request: Request, name: str
) -> tuple[tuple[dict[str, str], bool], int, AsyncGenerator[bytes, None]]:
    """The push config sent as the first `Foundry-Config-Length` bytes of a tarball body
    (checked against app `name`'s cap), its length, and the rest of the body (the
    tarball) as a stream."""
    raw_length = request.headers.get("foundry-config-length", "0").strip()
    if not raw_length.isdigit():
        raise BadRequest("Foundry-Config-Length must be a byte count")
    length, cap = int(raw_length), ctl.config.requests.json
    if length > cap:
        raise TooLarge(f"push config is {length} bytes; the limit is {cap} bytes")
    stream = request.stream()
    head = b""
    try:
        while len(head) < length:
            head += await anext(stream)
        config = (
            ({}, False)
            if not length
            else _push_config(json_object(head[:length], "push config", PUSH_CONFIG))
        )
        _check_push_config(ctl, name, *config)
    except StopAsyncIteration:
        await stream.aclose()
        raise BadRequest("the body ends inside its push config") from None
    except BaseException:
        await stream.aclose()
        raise

    async def rest() -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(stream):
            if head[length:]:
                yield head[length:]
            async for chunk in stream:
                yield chunk

    return config, length, rest()


async def _receive_source(
    ctl: Control,
    request: Request,
    chunks: AsyncGenerator[bytes, None] | None = None,
    prefix: int = 0,
) -> str:
    """Store a checked source package from the body (after a `prefix` of that many bytes,
    already taken off as `chunks` began)."""
    check_length(request, ctl.config.max_upload + prefix, "upload")
    temp = await ctl.blobs.receive(chunks or request.stream(), ctl.config.max_upload)
    try:
        await anyio.to_thread.run_sync(check_archive, temp, ctl.config.limits)
        return ctl.blobs.commit(temp)
    finally:
        temp.unlink(missing_ok=True)


RESOURCE, BUILDPACK = "resource", "buildpack"  # kinds of file the store records owners of


def _files(ctl: Control) -> BlobStore:
    """Single files of apps' sources, by sha256 (resource matching)."""
    return BlobStore(ctl.config.home / "files", ctl.config.disk_reserve)


async def _assemble_source(ctl: Control, body: PushBody, token: Token, referenced: set[str]) -> str:
    """The source package built from a resource list (or a stored listing, by digest) of
    files the store has and the caller may use; adds the files it used to `referenced`."""
    if "listing" in body:
        found = _stored_listing(ctl, body["listing"], token)
        referenced.add(body["listing"])
    else:
        found = resources.parse_resources(body, ctl.config.limits)
    digests = {r.sha256 for r in found}
    usable = ctl.store.owned_files(RESOURCE, digests, token.apps)
    ctl.blobs.guard.check_room()
    fd, name = tempfile.mkstemp(dir=ctl.blobs.root, prefix=".assembling-")
    os.close(fd)
    temp = Path(name)
    try:
        await anyio.to_thread.run_sync(resources.assemble, found, _files(ctl), temp, usable)
        referenced.update(digests)
        return ctl.blobs.commit(temp)
    finally:
        temp.unlink(missing_ok=True)


def _build_options(ctl: Control, q: Any, scope: frozenset[str] | None) -> BuildOptions:
    """What the stager is told beyond the source: buildpack, no_cache, commands."""
    options: BuildOptions = {}
    if q.get("buildpack"):
        options["buildpack"] = _buildpack(ctl, q["buildpack"], scope)
    if "no_cache" in q and query(PUSH_QUERY["no_cache"], q, "no_cache") in ("1", "true"):
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


def _buildpack(ctl: Control, text: str, scope: frozenset[str] | None) -> str:
    """An installed pack's name, `blob:<sha256>` of a pack uploaded for an app in the
    caller's scope, or a git URL."""
    names = ordered_names()
    if text in names or _GIT_URL.match(text):
        return text
    if text.startswith("blob:"):
        digest = text.removeprefix("blob:")
        ctl.blobs.path(digest)  # 400 unless a digest
        # Another app's pack, or any other blob (a source, a droplet), answers as absent.
        if (
            not ctl.store.owned_files(BUILDPACK, [digest], scope)
            or not ctl.blobs.path(digest).exists()
        ):
            raise Unprocessable(
                f"no uploaded buildpack {text}: upload the pack directory with this app's push"
            )
        return text
    raise Unprocessable(
        f"no buildpack {text!r}: use one of {', '.join(names)}, "
        "blob:<sha256> of an uploaded pack, or an http(s):// or git:// URL"
    )


def _save_push_settings(
    ctl: Control, name: str, settings: AppChanges, env: dict[str, str], replace_env: bool = False
) -> bool:
    """Create the app or update it with a push's settings; config vars merge into the
    app's (or, with `replace_env`, replace them; `_check_push_config` has passed them)."""
    if not ctl.store.app_exists(name):
        ctl.store.create_app(
            name,
            memory_mb=settings.pop("memory_mb", 256),
            scale=settings.pop("scale", None),
            env=env,
        )
        if settings:
            ctl.store.update_app(name, **settings)
        return True
    if env or replace_env:
        settings["env"] = env if replace_env else {**ctl.store.get_app(name)["env"], **env}
    if "scale" in settings:
        settings["scale"] = {**ctl.store.get_app(name)["scale"], **settings["scale"]}
    if settings:
        ctl.store.update_app(name, **settings)
    return False


async def list_buildpacks(request: Request) -> Response:
    """The installed buildpacks, in detection order."""
    require(request, control_of(request).store, READ_KINDS)
    return JSONResponse(
        {"buildpacks": [{"position": i, "name": n} for i, n in enumerate(ordered_names(), start=1)]}
    )


async def upload_buildpack(request: Request) -> Response:
    """Upload a buildpack directory (gzip'd tar) for this app's pushes: `blob:<sha256>`."""
    ctl, name, _ = app_call(request, APP_KINDS)
    digest = await _receive_source(ctl, request)
    ctl.store.own_files(name, BUILDPACK, [digest])
    return JSONResponse({"buildpack": f"blob:{digest}"}, status_code=201)


async def match_resources(request: Request) -> Response:
    """Resource matching for ?app=NAME: which of these file digests the caller must
    upload (all but large files its apps uploaded)."""
    ctl, _, token = _files_call(request)
    body = await json_body(
        request,
        MATCH,
        ctl.config.requests.resource_list,
        ctl.config.requests.resource_list_expanded,
    )
    digests = resources.parse_digests(body, ctl.config.limits)
    return JSONResponse({"missing": resources.missing(digests, _present(ctl, token, digests))})


def _files_call(request: Request) -> tuple[Control, str, Token]:
    """A file-store request names the app its files are for (?app=NAME), which the
    token must cover: uploads are recorded as that app's."""
    ctl = control_of(request)
    token = require(request, ctl.store, APP_KINDS)
    name = request.query_params.get("app", "")
    problem = app_name_problem(name)
    if problem:
        raise BadRequest(f"name the app these files are for (?app=NAME): {problem}")
    check_scope(token, name)
    return ctl, name, token


def _present(ctl: Control, token: Token, digests: list[str]) -> set[str]:
    """Those of `digests` a push by `token` need not upload."""
    return resources.matchable(ctl.store.owned_files(RESOURCE, digests, token.apps), _files(ctl))


def _stored_listing(ctl: Control, digest: str, token: Token) -> list[resources.Resource]:
    path = _files(ctl).path(digest)
    if not path.exists() or not ctl.store.owned_files(RESOURCE, [digest], token.apps):
        raise Conflict(f"no listing {digest[:12]} on the control plane; send the full list")
    return resources.parse_listing(path.read_bytes(), ctl.config.limits)


def release_files(ctl: Control, app: str, keep: set[str]) -> None:
    """Make `keep` the whole set of stored files `app` references, deleting those no app
    references any more (after the owners are gone, so nothing can match them)."""
    for digest in ctl.store.replace_owned_files(app, RESOURCE, keep):
        _files(ctl).delete(digest)


def forget_app_files(ctl: Control, app: str) -> None:
    """A deleted app owns no stored files and no uploaded buildpacks any more (a later
    app of the same name starts with none)."""
    release_files(ctl, app, set())
    ctl.store.replace_owned_files(app, BUILDPACK, set())


async def update_listing(request: Request) -> Response:
    """Store a source's resource list as the base listing plus a delta:
    {"base": digest | null, "changed": [resources], "removed": [paths]} ->
    {"listing": digest, "missing": [digests of changed files the store lacks]}."""
    ctl, app, token = _files_call(request)
    body = await json_body(
        request,
        LISTING,
        ctl.config.requests.resource_list,
        ctl.config.requests.resource_list_expanded,
    )
    changed = resources.parse_resources(body, ctl.config.limits, key="changed")
    removed = body.get("removed", [])
    base = _stored_listing(ctl, body["base"], token) if "base" in body else []
    listing = resources.apply_delta(base, changed, removed)
    if len(listing) > ctl.config.limits.max_files:
        raise Unprocessable(f"more than {ctl.config.limits.max_files} files")
    data = resources.listing_bytes(listing)
    ctl.blobs.guard.check_room()
    fd, name = tempfile.mkstemp(dir=_files(ctl).root, prefix=".listing-")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    digest = _files(ctl).commit(Path(name))
    ctl.store.own_files(app, RESOURCE, [digest])
    asked = [r.sha256 for r in changed]
    missing = resources.missing(asked, _present(ctl, token, asked))
    return JSONResponse({"listing": digest, "missing": missing})


async def upload_resources(request: Request) -> Response:
    """Store files for resource matching (?app=NAME): a gzip'd tar of files named by their
    sha256; they become that app's."""
    ctl, app, _ = _files_call(request)
    check_length(request, ctl.config.max_upload, "upload")
    temp = await ctl.blobs.receive(request.stream(), ctl.config.max_upload)
    try:
        stored = await anyio.to_thread.run_sync(
            resources.store_files, temp, _files(ctl), ctl.config.limits
        )
    finally:
        temp.unlink(missing_ok=True)
    ctl.store.own_files(app, RESOURCE, stored)
    return JSONResponse({"stored": len(stored)}, status_code=201)


async def get_build(request: Request) -> Response:
    """Show a build's state (long-polls with ?wait=N until it finishes)."""
    ctl = control_of(request)
    token = require(request, ctl.store, READ_KINDS)
    bid = request.path_params["build"]
    build = ctl.store.get_build(bid)
    hide_unless_visible(token, build["app"], NotFound(f"no build {bid}"))
    await ctl.wait(request, lambda: ctl.store.get_build(build["id"])["state"] in BUILD_ENDED)
    return JSONResponse(ctl.store.get_build(build["id"]))


def _git_root(ctl: Control) -> Path:
    return ctl.config.home / "git"


async def git_info_refs(request: Request) -> Response:
    """git smart HTTP: the ref advertisement."""
    ctl = control_of(request)
    try:
        return await gitserve.info_refs(request, ctl.store, _git_root(ctl))
    except Unauthorized as e:
        return gitserve.challenge(e.message)


async def git_rpc(request: Request) -> Response:
    """git smart HTTP: a push (deploys through the pre-receive hook) or a fetch."""
    ctl = control_of(request)
    try:
        app, service = gitserve.authorize_rpc(request, ctl.store)
    except Unauthorized as e:
        return gitserve.challenge(e.message)
    env = {
        "FOUNDRY_API": ctl.config.self_url,
        "FOUNDRY_MAX_EXPANDED": str(ctl.config.limits.max_expanded),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    on_done: Callable[[], None] = _nothing
    if service == "git-receive-pack":  # only a push runs the hook, which needs a token
        tid, env["FOUNDRY_TOKEN"] = ctl.store.create_token(
            "deploy", apps=[app], ttl=3600, label="git push hook"
        )
        on_done = functools.partial(ctl.store.revoke_token, tid)
    try:
        return await gitserve.rpc(
            request,
            app,
            service,
            _git_root(ctl),
            env,
            on_done=on_done,
            max_bytes=ctl.config.requests.git_push,
        )
    except FoundryError:
        on_done()
        raise


def _nothing() -> None:
    """What ends a fetch: it minted nothing."""
