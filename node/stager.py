"""Staging: source package in, droplet out (Heroku's slug compiler, run on the node).

Steps: download and safely extract the source, detect a pack, run its compile with
the app's per-pack cache dir, read process types (Procfile over bin/release
defaults), pack the result into a droplet (sha256-addressed), upload it, and keep
the unpacked droplet in the node's cache so the first start needs no download.
Every step's output streams to the app's log as source `build`. Any failure
reports the build FAILED with one line saying why; the work dir is always removed.

The pack's compile runs the app's own build code (setup.py, npm scripts), so it
runs in a jail like an instance: the build dir read-write at /app (the path the
droplet later runs at), the cache dir read-write at /cache, the env dir and the
pack read-only, tool binaries named in TOOL_VARS read-only under /opt/foundry/bin,
with the host network (builds fetch packages). The pack's `bin/release` runs in a
jail too, built-in or not: it reads files the build wrote (package.json).

Whatever the build left is read as if an attacker wrote it: the node reads only the
Procfile itself, through `read_confined` (no link followed, regular files only,
capped), caps what `bin/release` prints, and its errors never quote either one.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from node.archive import ArchiveError, create, extract
from node.client import ControlClient, ControlError
from node.confined import ConfinedError, read_confined
from node.diskstate import DiskState, full_error
from node.jail import PLAIN, Bind, Jailed, Jailer, JailError, JailSpec, TierChoice
from node.logship import LogShipper
from node.packs import Pack, PackError, detect, fetch_pack, installed_packs, redact_urls
from node.procfile import ProcfileError, process_types
from node.wire import BuildResult, StageWork

log = logging.getLogger("foundry.node")
COMPILE_TIMEOUT = 15 * 60
STAGING_MEMORY_MB = 1024  # at least this much for a build, whatever the app's size
TOOL_VARS = ("FOUNDRY_UV",)  # build env vars naming a tool binary the jail must show
PROCFILE_MAX = 64 << 10  # bytes; a Procfile is a few lines
RELEASE_MAX = 64 << 10  # bytes of `bin/release` output kept
RELEASE_TIMEOUT = 60
Say = Callable[[str], None]


class BuildFailed(Exception):
    """A build that cannot go on; the message is shown to the pusher."""


@dataclass
class Stager:
    home: Path
    packs_dir: Path
    client: ControlClient
    logs: LogShipper
    base_env: dict[str, str]
    jail: Jailer = field(default_factory=lambda: Jailer(TierChoice(PLAIN, "not configured")))
    disk: DiskState | None = None  # told of writes that fail for want of space

    async def stage(self, item: StageWork) -> None:
        """Run one `stage` work item to completion and report its result."""
        build, app = item["build"], item["app"]
        work = self.home / "builds" / build

        def say(line: str) -> None:
            self.logs.emit(app, "build", line, build)

        result: BuildResult
        try:
            result = await self._stage(item, work, say)
        except (
            BuildFailed,
            ControlError,
            ArchiveError,
            ProcfileError,
            JailError,
            PackError,
            ConfinedError,
            OSError,
        ) as e:
            full = full_error(e)
            error = str(e) if full is None or self.disk is None else self.disk.failed(full)
            say(f"-----> Build failed: {error}")
            result = {"ok": False, "error": error}
        finally:
            await trio.to_thread.run_sync(shutil.rmtree, work, True)
        await self.logs.flush()
        try:
            await self.client.build_result(build, result)
        except ControlError as e:  # refused for good (say, the build timed out meanwhile)
            log.warning("build-result-dropped build=%s error=%s", build, e)

    async def _stage(self, item: StageWork, work: Path, say: Say) -> BuildResult:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        source = work / "source.tgz"
        await self.client.download(item["source"], source)
        app_dir = work / "app"
        count = await trio.to_thread.run_sync(extract, source, app_dir)
        say(f"-----> Received {count} files")
        pack = await self._pack(item, app_dir, say)
        await self._compile(pack, item, app_dir, work, say)
        processes = await self._process_types(pack, app_dir, work)
        processes.update(item.get("processes") or {})  # the manifest's commands win
        if not processes:
            raise BuildFailed("the app has no process types: add a Procfile")
        say(f"-----> Process types: {', '.join(sorted(processes))}")
        droplet, digest = await self._droplet(app_dir, work)
        say(f"-----> Droplet {digest[:12]} ({droplet.stat().st_size // 1024} KiB), uploading")
        await self.client.upload(digest, droplet)
        cached = self.home / "droplets" / digest
        if not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            app_dir.rename(cached)
        return {"ok": True, "droplet": digest, "processes": processes, "pack": pack.name}

    async def _pack(self, item: StageWork, app_dir: Path, say: Say) -> Pack:
        """The pack the push named (no detection), else the first installed one that
        claims the app."""
        if item.get("buildpack"):
            say(f"-----> Using buildpack {redact_urls(str(item['buildpack']))}")
            return await fetch_pack(
                str(item["buildpack"]), self.packs_dir, self.home, self.client, self.base_env
            )
        pack = await detect(installed_packs(self.packs_dir), app_dir, self.base_env)
        if pack is None:
            raise BuildFailed(
                "no pack detected this app: add a requirements.txt or "
                "pyproject.toml (python), a package.json (node), an index.html "
                "(static) or a Procfile"
            )
        say(f"-----> {pack.name} app detected")
        return pack

    async def _compile(
        self, pack: Pack, item: StageWork, app_dir: Path, work: Path, say: Say
    ) -> None:
        last: list[str] = []

        def keep(line: str) -> None:  # the last line usually says why a compile failed
            if line.strip():
                last[:] = [line.strip()]
            say(line)

        jailed = await self.jail.spawn(self._compile_spec(pack, item, app_dir, work, say))
        try:
            code = await run_streaming(jailed, keep, COMPILE_TIMEOUT)
        finally:
            with trio.CancelScope(shield=True):
                await jailed.close()
        if code != 0:
            reason = jailed.limit_reason(code) or f"exit {jailed.exit_code(code)}"
            why = f": {last[0][:300]}" if last and not jailed.limit_reason(code) else ""
            raise BuildFailed(f"{pack.name} pack compile failed ({reason}){why}")

    def _compile_spec(
        self, pack: Pack, item: StageWork, app_dir: Path, work: Path, say: Say
    ) -> JailSpec:
        """`bin/compile BUILD_DIR CACHE_DIR ENV_DIR`, in the jail's paths."""
        env_dir = work / "env"
        env_dir.mkdir()
        for key, value in (item.get("env") or {}).items():
            (env_dir / key).write_text(str(value))
        cache = self.home / "cache" / item["app"] / pack.name
        if item.get("no_cache") and cache.exists():
            say("-----> --no-cache: starting from an empty build cache")
            shutil.rmtree(cache)
        cache.mkdir(parents=True, exist_ok=True)
        binds = [
            Bind(cache, "/cache", writable=True),
            Bind(env_dir, "/env"),
            Bind(pack.path, "/pack"),
        ]
        env = dict(self.base_env)
        for var in TOOL_VARS:
            tool = Path(env.get(var, ""))
            if tool.is_absolute() and tool.is_file():
                binds.append(Bind(tool, f"/opt/foundry/bin/{tool.name}"))
        if self.jail.isolates:  # /cache and /app are separate mounts: no hard links across
            env.setdefault("UV_LINK_MODE", "copy")

        def inside(path: Path | str) -> str:
            return self.jail.inside(str(path), app_dir, binds)

        env.update({var: inside(env[var]) for var in TOOL_VARS if var in env})
        parts: list[Path | str] = [*pack.script("compile"), app_dir, cache, env_dir]
        argv = [inside(a) for a in parts]
        return JailSpec(
            f"build-{item['build']}",
            tuple(argv),
            {**env, "HOME": inside(app_dir)},
            app_dir,
            STAGING_MEMORY_MB,
            tuple(binds),
        )

    async def _process_types(self, pack: Pack, app_dir: Path, work: Path) -> dict[str, str]:
        # Even a built-in pack's release reads what the build wrote: it runs jailed.
        code, out = await self._jailed_release(pack, app_dir, work)
        if code != 0:
            raise BuildFailed(f"{pack.name} pack release failed (exit {code})")
        procfile = await trio.to_thread.run_sync(read_confined, app_dir, "Procfile", PROCFILE_MAX)
        text = procfile.decode(errors="replace") if procfile is not None else None
        return process_types(text, out.decode(errors="replace"))

    async def _jailed_release(self, pack: Pack, app_dir: Path, work: Path) -> tuple[int, bytes]:
        binds = (Bind(pack.path, "/pack"),)
        script = [self.jail.inside(a, app_dir, binds) for a in pack.script("release")]
        argv = (
            "/bin/sh",
            "-c",
            '"$@" 2>/dev/null',
            "release",
            *script,
            self.jail.inside(str(app_dir), app_dir, binds),
        )
        spec = JailSpec(
            f"release-{work.name}",
            argv,
            {**self.base_env, "HOME": self.jail.inside(str(app_dir), app_dir)},
            app_dir,
            STAGING_MEMORY_MB,
            binds,
        )
        jailed = await self.jail.spawn(spec)
        out = b""
        try:
            assert jailed.proc.stdout is not None
            code = -1
            with trio.move_on_after(RELEASE_TIMEOUT):
                async for chunk in jailed.proc.stdout:
                    out += chunk
                    if len(out) > RELEASE_MAX:
                        raise BuildFailed(
                            f"{pack.name} pack release printed more than {RELEASE_MAX} bytes"
                        )
                code = jailed.exit_code(await jailed.proc.wait())
        finally:
            with trio.CancelScope(shield=True):
                await jailed.close()
        return code, out

    async def _droplet(self, app_dir: Path, work: Path) -> tuple[Path, str]:
        droplet = work / "droplet.tgz"
        await trio.to_thread.run_sync(create, app_dir, droplet)
        return droplet, await trio.to_thread.run_sync(sha256_file, droplet)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


async def run_streaming(jailed: Jailed, say: Say, timeout: float) -> int:
    """Pass each output line of a jailed process to `say`; kill the jail after `timeout` s."""
    proc = jailed.proc
    assert proc.stdout is not None
    with trio.move_on_after(timeout) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(jailed.watch)
            buf = b""
            async for chunk in proc.stdout:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    say(line.decode(errors="replace").rstrip("\r"))
            if buf:
                say(buf.decode(errors="replace"))
            code = await proc.wait()
            nursery.cancel_scope.cancel()
        return code
    if scope.cancelled_caught:
        say(f"-----> timed out after {timeout:.0f} s")
    jailed.kill()  # the whole build, not just the pack's first process
    return await proc.wait()
