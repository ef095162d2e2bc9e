"""Serves each app's git repository over git's smart HTTP protocol.

`git push` talks to `/git/<app>.git/...`; the control plane runs `git receive-pack`
(or `upload-pack`) in stateless-RPC mode with the request body as its input and
streams its output back. Our own pre-receive hook (control/githook.py) turns a push
of the deploy branch into a build and refuses the push when the build fails, so the
ref only moves when the release is running. Rules:
- credentials are checked before anything else (before a repository or a hook token
  is created), and a bad or missing one is a 401 that changes nothing and says
  nothing about whether the app exists;
- a push's body is capped as sent and as it inflates, and git itself is told the cap
  (receive.maxInputSize);
- hooks come only from Foundry (`core.hooksPath`), never from the pushed repository;
  objects are fsck'd on receipt; nothing from the repository is executed here.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import tempfile
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

import anyio
from anyio.abc import Process
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from control.context import check_length
from control.errors import BadRequest, Forbidden, NotFound, TooLarge, Unauthorized
from control.names import app_name_problem
from control.store import Store, Token

SERVICES = ("git-receive-pack", "git-upload-pack")
HOOK = """#!/bin/sh
exec {python} -m control.githook
"""


def challenge(message: str) -> Response:
    """A 401 that asks git for credentials."""
    return Response(
        message + "\n",
        status_code=401,
        media_type="text/plain",
        headers={"www-authenticate": 'Basic realm="foundry"'},
    )


def git_token(request: Request, store: Store) -> Token | None:
    """The token from a Bearer header or a Basic password (git credential helpers)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    secret = value.strip()
    if scheme.lower() == "basic":
        try:
            secret = base64.b64decode(secret).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    elif scheme.lower() != "bearer":
        return None
    return store.authenticate(secret) if secret else None


def authorize(token: Token | None, app: str, service: str) -> None:
    if token is None:
        raise Unauthorized("a Foundry token is required (see `foundry git-remote`)")
    pushing = service == "git-receive-pack"
    kinds = ("admin", "deploy") if pushing else ("admin", "deploy", "read")
    if token.kind not in kinds:
        raise Forbidden(f"a {token.kind} token may not {'push' if pushing else 'fetch'}")
    if token.apps is not None and app not in token.apps:
        raise Forbidden(f"this token is not allowed to act on app {app!r}")


def ensure_repo(root: Path, app: str) -> Path:
    """The app's bare repository, created with Foundry's hook on first use."""
    repo = root / f"{app}.git"
    if not (repo / "HEAD").exists():
        repo.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "init", "--quiet", "--bare", "--initial-branch=main", str(repo)],
            check=True,
            capture_output=True,
        )
        hooks = repo / "foundry-hooks"
        hooks.mkdir(exist_ok=True)
        hook = hooks / "pre-receive"
        hook.write_text(HOOK.format(python=sys.executable))
        hook.chmod(0o700)  # the control plane's home is private (control/vault.py)
        for key, value in (
            ("core.hooksPath", str(hooks)),
            ("receive.fsckObjects", "true"),
            ("receive.denyDeletes", "true"),
            ("http.receivepack", "true"),
        ):
            subprocess.run(["git", "-C", str(repo), "config", key, value], check=True)
    return repo


def _pkt(line: str) -> bytes:
    data = line.encode()
    return f"{len(data) + 4:04x}".encode() + data


async def info_refs(request: Request, store: Store, root: Path) -> Response:
    """The ref advertisement that starts a push or fetch."""
    app = _app(request)
    service = request.query_params.get("service", "")
    if service not in SERVICES:
        raise NotFound("only smart HTTP is served (git 1.6.6 or newer)")
    authorize(git_token(request, store), app, service)
    if service == "git-upload-pack" and not (root / f"{app}.git").exists():
        raise NotFound(f"no repository for app {app!r}")
    repo = ensure_repo(root, app)
    result = await anyio.run_process(
        ["git", service[4:], "--stateless-rpc", "--advertise-refs", str(repo)]
    )
    body = _pkt(f"# service={service}\n") + b"0000" + result.stdout
    return Response(
        body,
        media_type=f"application/x-{service}-advertisement",
        headers={"cache-control": "no-cache"},
    )


def authorize_rpc(request: Request, store: Store) -> tuple[str, str]:
    """(app, service) of a receive-pack / upload-pack request whose credentials allow it;
    Unauthorized/Forbidden/NotFound otherwise. Runs before anything is created or read."""
    app = _app(request)
    service = request.path_params["service"]
    if service not in SERVICES:
        raise NotFound(f"no git service {service!r}")
    authorize(git_token(request, store), app, service)
    return app, service


async def rpc(
    request: Request,
    app: str,
    service: str,
    root: Path,
    env: dict[str, str],
    on_done: Callable[[], None],
    max_bytes: int,
) -> Response:
    """One receive-pack / upload-pack exchange (already authorized), streamed both ways."""
    repo = ensure_repo(root, app)
    hook_env = {**os.environ, **env, "FOUNDRY_APP": app}
    body = await _spool_body(request, max_bytes)
    # index-pack refuses a pack past the cap too: what git reads is capped by git itself.
    proc = await anyio.open_process(
        [
            "git",
            "-c",
            f"receive.maxInputSize={max_bytes}",
            service[4:],
            "--stateless-rpc",
            str(repo),
        ],
        env=hook_env,
        stdin=body,
        stderr=subprocess.DEVNULL,
    )
    body.close()
    return StreamingResponse(
        _pump(proc, on_done),
        media_type=f"application/x-{service}-result",
        headers={"cache-control": "no-cache"},
    )


async def _spool_body(request: Request, max_bytes: int) -> BinaryIO:
    """The whole request body (inflated if gzip'd) in a temp file, read before git starts:
    the response streams while git runs, and only one reader may take the request's
    messages. Refused (TooLarge) past `max_bytes` as sent or as inflated, never holding
    more than one chunk's worth of inflated bytes in memory."""
    check_length(request, max_bytes, "push")
    body = tempfile.TemporaryFile()  # noqa: SIM115 -- returned open; the caller closes it
    inflate = (
        zlib.decompressobj(16 + zlib.MAX_WBITS)
        if request.headers.get("content-encoding", "") == "gzip"
        else None
    )
    sent = size = 0
    try:
        async with contextlib.aclosing(request.stream()) as stream:
            async for chunk in stream:
                sent += len(chunk)
                data = chunk
                if inflate is not None:
                    data = inflate.decompress(chunk, max_bytes + 1 - size)
                    if inflate.unconsumed_tail:
                        size = max_bytes + 1
                size += len(data)
                if sent > max_bytes or size > max_bytes:
                    raise TooLarge(f"push is larger than the {max_bytes} byte limit")
                body.write(data)
    except zlib.error:
        body.close()
        raise BadRequest("push body is not valid gzip") from None
    except BaseException:
        body.close()
        raise
    body.seek(0)
    return body


async def _pump(proc: Process, on_done: Callable[[], None]) -> AsyncIterator[bytes]:
    assert proc.stdout is not None
    try:
        async for chunk in proc.stdout:
            yield chunk
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
        on_done()


def _app(request: Request) -> str:
    app: str = request.path_params["repo"]
    if not app.endswith(".git"):
        raise NotFound("git repositories are at /git/<app>.git")
    app = app[:-4]
    if app_name_problem(app):
        raise NotFound(f"no repository {app!r}")
    return app
