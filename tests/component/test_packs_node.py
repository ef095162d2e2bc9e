"""The node pack run for real: npm ci / npm install, the node_modules cache, NODE_ENV,
engines.node checks and the start command; and a compile inside the staging jail."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from node.jail import PLAIN, choose_tier, make_jailer, probe
from node.packs import Pack
from node.stager import BuildFailed, Stager
from node.wire import StageWork
from packs import PACKS_DIR

PACK = PACKS_DIR / "node"
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-node"
NODE_VERSION = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()


def app(tmp_path: Path, package: dict[str, object], lock: bool = False) -> Path:
    build = tmp_path / "build"
    build.mkdir()
    (build / "package.json").write_text(json.dumps({"name": "t", "version": "1.0.0", **package}))
    if lock:
        (build / "package-lock.json").write_text(
            json.dumps(
                {
                    "name": "t",
                    "version": "1.0.0",
                    "lockfileVersion": 3,
                    "requires": True,
                    "packages": {"": {"name": "t", "version": "1.0.0"}},
                }
            )
        )
    return build


def compile_(build: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    cache, env_dir = tmp_path / "cache", tmp_path / "env"
    cache.mkdir(exist_ok=True)
    env_dir.mkdir(exist_ok=True)
    for key, value in env.items():
        (env_dir / key).write_text(value)
    return subprocess.run(
        [str(PACK / "bin" / "compile"), str(build), str(cache), str(env_dir)],
        env={**ENV, "HOME": str(build)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def release(build: Path) -> str:
    return subprocess.run(
        [str(PACK / "bin" / "release"), str(build)],
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_without_a_lock_file_npm_install_runs(tmp_path: Path) -> None:
    done = compile_(app(tmp_path, {}), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "npm install (no lock file)" in done.stdout
    profile = (tmp_path / "build" / ".profile.d" / "node.sh").read_text()
    assert 'NODE_ENV="${NODE_ENV:-production}"' in profile
    assert "node_modules/.bin" in profile


def test_a_lock_file_means_npm_ci_and_an_unchanged_rebuild_restores_the_cache(
    tmp_path: Path,
) -> None:
    first = compile_(app(tmp_path, {}, lock=True), tmp_path)
    assert first.returncode == 0, first.stderr
    assert "npm ci (package-lock.json)" in first.stdout
    assert (tmp_path / "cache" / "node_modules.key").exists()
    assert (tmp_path / "cache" / "npm").is_dir()  # npm's cache is the app's
    (tmp_path / "build").rename(tmp_path / "old")
    again = compile_(app(tmp_path, {}, lock=True), tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Dependencies unchanged" in again.stdout
    assert "npm ci" not in again.stdout


def test_node_env_comes_from_the_apps_config_when_set(tmp_path: Path) -> None:
    done = compile_(app(tmp_path, {}), tmp_path, NODE_ENV="development")
    assert done.returncode == 0, done.stderr
    assert "NODE_ENV=development" in done.stdout
    assert "development" in (tmp_path / "build" / ".profile.d" / "node.sh").read_text()


@pytest.mark.parametrize("wanted", [">=99", "^12", "<1 || 30.x"])
def test_an_engines_node_this_node_cannot_satisfy_names_the_version_there(
    tmp_path: Path, wanted: str
) -> None:
    done = compile_(app(tmp_path, {"engines": {"node": wanted}}), tmp_path)
    assert done.returncode == 1
    assert f"asks for Node.js {wanted}" in done.stderr
    assert f"this node has {NODE_VERSION}" in done.stderr


@pytest.mark.parametrize(
    ("rng", "ok"),
    [
        (">=18", True),
        ("^20 || ^22", NODE_VERSION.startswith(("v20.", "v22."))),
        ("*", True),
        (f"{NODE_VERSION[1:].split('.')[0]}.x", True),
        (f"~{NODE_VERSION[1:]}", True),
        (f">{NODE_VERSION[1:]}", False),
        ("16 - 99", True),
        (">=14 <15", False),
    ],
)
def test_engine_ranges(rng: str, ok: bool) -> None:
    done = subprocess.run(
        ["node", str(PACK / "lib" / "pkg.js"), "satisfies", NODE_VERSION, rng], capture_output=True
    )
    assert (done.returncode == 0) is ok


def test_release_uses_the_start_script_then_server_js(tmp_path: Path) -> None:
    build = app(tmp_path, {"scripts": {"start": "node index.js --port $PORT"}})
    assert 'web: "node index.js --port $PORT"' in release(build)
    (build / "package.json").write_text("{}")
    assert "web:" not in release(build)
    (build / "server.js").write_text("")
    assert 'web: "node server.js"' in release(build)


@pytest.mark.skipif(choose_tier(probe()[0]).tier == PLAIN, reason="needs a jail tier")
async def test_hello_node_compiles_inside_the_staging_jail(tmp_path: Path) -> None:
    jail = make_jailer(None, f"test-node-pack-{os.getpid()}")
    stager = Stager(tmp_path / "home", PACKS_DIR, None, None, ENV, jail)  # type: ignore[arg-type]
    work = tmp_path / "home" / "builds" / "b-1"
    app_dir = work / "app"
    work.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(EXAMPLE), str(app_dir)], check=True)
    lines: list[str] = []
    item = StageWork(seq=1, kind="stage", build="b-1", app="hello-node", source="", env={})
    await stager._compile(Pack("node", PACK), item, app_dir, work, lines.append)
    assert any(f"Using Node.js {NODE_VERSION}" in line for line in lines), lines
    (app_dir / "package.json").write_text('{"engines": {"node": ">=99"}}')
    (work / "env").rename(work / "env-1")
    with pytest.raises(BuildFailed, match=f"this node has {NODE_VERSION}"):
        await stager._compile(Pack("node", PACK), item, app_dir, work, lines.append)
