"""Finding, fetching and running buildpacks (Heroku's classic API) on a build directory.

A pack is a directory with `bin/detect`, `bin/compile` and `bin/release`. Detection
tries the installed packs in order; the first whose `bin/detect BUILD_DIR` exits 0
wins. A push may name its pack instead (detection is then skipped, as on Cloud
Foundry): an installed pack's name, `blob:<sha256>` (a pack directory the CLI
uploaded as a gzip'd tar), or a git URL the node clones. Fetched packs are cached
under the node's home by digest or by URL hash. Invariants: a clone never fetches
submodules, never runs hooks and never prompts; an uploaded pack is extracted with
the same checks as a source package; a URL's credentials (`https://user:pass@host`)
never reach a log or an error (`redact_urls`). Only installed (the operator's) packs
detect, and detection is the one pack step run outside the jail: it comes before any
of the app's code has run, on a source tree whose extraction refused links out of it.
A named pack is never detected; its compile and release run in the jail (stager).
Scripts are run with an explicit interpreter when they are not executable (a wheel
install or an upload may drop the mode bits).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import trio

from node.archive import extract
from node.client import ControlClient
from packs import DEFAULT_ORDER, ordered_names

GIT_URL = re.compile(r"^(https?|git)://[^\s#]+(#[A-Za-z0-9._/-]+)?$")
BLOB = re.compile(r"^blob:([0-9a-f]{64})$")
# scheme://userinfo@ : the userinfo (RFC 3986 3.2.1) is everything up to the last @
# before the host, so it may hold ':' and '@'-free percent-escapes, never / ? # or space.
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")
CLONE_TIMEOUT = 120


class PackError(Exception):
    """A named buildpack that cannot be found or fetched; the message says why."""


def redact_urls(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by `***` (pure)."""
    return _USERINFO.sub(r"\1***@", text)


@dataclass(frozen=True)
class Pack:
    name: str
    path: Path

    def script(self, name: str) -> list[str]:
        """argv prefix that runs bin/<name>."""
        path = self.path / "bin" / name
        return [str(path)] if os.access(path, os.X_OK) else ["/bin/sh", str(path)]


def installed_packs(root: Path, order: tuple[str, ...] = DEFAULT_ORDER) -> list[Pack]:
    """Packs under `root`, in detection order (known names first, then alphabetical)."""
    return [Pack(n, root / n) for n in ordered_names(root, order)]


async def detect(packs: list[Pack], build_dir: Path, env: dict[str, str]) -> Pack | None:
    """The first pack that claims the build directory."""
    for pack in packs:
        with trio.move_on_after(30):
            result = await trio.run_process(
                [*pack.script("detect"), str(build_dir)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=env,
            )
            if result.returncode == 0:
                return pack
    return None


def _checked(path: Path, name: str) -> Pack:
    missing = [s for s in ("compile", "release") if not (path / "bin" / s).is_file()]
    if missing:
        raise PackError(f"buildpack {name} has no bin/{' or bin/'.join(missing)}")
    return Pack(name, path)


async def fetch_pack(
    spec: str, packs_dir: Path, home: Path, client: ControlClient, env: dict[str, str]
) -> Pack:
    """The pack a push named: installed, uploaded (`blob:`) or a git URL."""
    for pack in installed_packs(packs_dir):
        if pack.name == spec:
            return pack
    blob = BLOB.match(spec)
    if blob:
        return await _uploaded(blob.group(1), home / "buildpacks", client)
    if GIT_URL.match(spec):
        return await _cloned(spec, home / "buildpacks", env)
    names = ", ".join(p.name for p in installed_packs(packs_dir))
    raise PackError(
        f"no buildpack {redact_urls(spec)!r}: use one of {names}, a directory or a git URL"
    )


async def _uploaded(digest: str, cache: Path, client: ControlClient) -> Pack:
    target = cache / f"blob-{digest}"
    if not target.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f".partial-{digest}"
        shutil.rmtree(partial, ignore_errors=True)
        await client.download(digest, cache / f".{digest}.tgz")
        try:
            await trio.to_thread.run_sync(extract, cache / f".{digest}.tgz", partial)
        finally:
            (cache / f".{digest}.tgz").unlink(missing_ok=True)
        partial.rename(target)
    return _checked(target, f"upload-{digest[:12]}")


def clone_argv(url: str, dest: Path) -> list[str]:
    """`git clone` of one ref, shallow, with submodules and hooks off (pure)."""
    repo, _, ref = url.partition("#")
    return [
        "git",
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "protocol.file.allow=never",
        "-c",
        "protocol.ext.allow=never",
        "clone",
        "--quiet",
        "--depth",
        "1",
        "--no-recurse-submodules",
        *(["--branch", ref] if ref else []),
        "--",
        repo,
        str(dest),
    ]


async def _cloned(url: str, cache: Path, env: dict[str, str]) -> Pack:
    target = cache / f"git-{hashlib.sha256(url.encode()).hexdigest()[:24]}"
    if not target.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f".partial-{target.name}"
        shutil.rmtree(partial, ignore_errors=True)
        git_env = {
            **env,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
        }
        with trio.move_on_after(CLONE_TIMEOUT) as scope:
            done = await trio.run_process(
                clone_argv(url, partial),
                env=git_env,
                check=False,
                capture_stdout=True,
                capture_stderr=True,
            )
        if scope.cancelled_caught or done.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            why = (
                "timed out"
                if scope.cancelled_caught
                else done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["failed"]
            )
            raise PackError(redact_urls(f"could not clone buildpack {url}: {''.join(why)}"))
        partial.rename(target)
    base = url.partition("#")[0].rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    return _checked(target, "git-" + re.sub(r"[^A-Za-z0-9_-]", "-", base))
