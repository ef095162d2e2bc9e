"""What a push, a scale and a config change tell the user, as a new user meets them: a
failed build's error once and no app claimed, the scaled process type the one that
exists, a change that changes nothing a no-op that says so, and `--strict` showing every
change and asking first."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, ROOT, Platform

pytestmark = pytest.mark.slow
NO_PACK = "no pack detected this app"
TINY = ROOT / "tests" / "apps" / "tiny-web"


def instance_ids(platform: Platform, app: str) -> list[str]:
    view = json.loads(platform.cli("app", app, "--json").stdout)
    return sorted(i["id"] for i in view["instances"] if i["state"] == "RUNNING")


def release_of(platform: Platform, app: str) -> int:
    return int(json.loads(platform.cli("app", app, "--json").stdout)["release"])


def test_a_packless_push_says_its_error_once_and_claims_no_app(
    platform: Platform, tmp_path: Path
) -> None:
    (tmp_path / "README").write_text("nothing runnable here")
    result = platform.cli("push", str(tmp_path), "--name", "junk", check=False)
    said = result.stdout + result.stderr
    assert result.returncode == 1
    assert said.count(NO_PACK) == 1, said
    assert "Created" not in said, said
    assert result.stderr.strip().splitlines()[-1].endswith("the new app junk is not kept")
    assert platform.cli("app", "junk", check=False).returncode == 1


def test_a_packless_git_push_says_its_error_once(platform: Platform, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("nothing runnable here")
    git = ["git", "-C", str(repo), "-c", "user.email=dev@example.test", "-c", "user.name=dev"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "first"]):
        subprocess.run([*git, *args], check=True, env=env, capture_output=True)
    platform.cli("git-remote", "gitjunk", "--dir", str(repo))
    pushed = subprocess.run(
        [*git, "push", "foundry", "main"], env=env, capture_output=True, text=True, timeout=240
    )
    said = pushed.stdout + pushed.stderr
    assert pushed.returncode != 0
    assert said.count(NO_PACK) == 1, said
    assert "the new app gitjunk is not kept" in said
    assert platform.cli("app", "gitjunk", check=False).returncode == 1


def test_scale_means_the_only_process_type_and_refuses_unknown_ones(platform: Platform) -> None:
    platform.cli("push", str(EXAMPLES / "worker"), "--name", "lone-worker")
    scaled = platform.cli("scale", "lone-worker", "-i", "2")
    assert scaled.stdout.strip() == "lone-worker: worker scaled to 2"
    view = json.loads(platform.cli("app", "lone-worker", "--json").stdout)
    assert view["scale"]["worker"] == 2
    assert view["scale"].get("web", 1) == 1
    refused = platform.cli("scale", "lone-worker", "-i", "2", "-p", "nosuchtype", check=False)
    assert refused.returncode == 1
    assert refused.stderr == (
        "foundry: lone-worker has no process type 'nosuchtype' (it has worker)\n"
    )
    after = json.loads(platform.cli("app", "lone-worker", "--json").stdout)
    assert "nosuchtype" not in after["scale"]


def test_config_changes_that_change_nothing_are_no_ops(platform: Platform) -> None:
    platform.cli("push", str(TINY), "--name", "steady", "-e", "KEPT=1")
    release, ids = release_of(platform, "steady"), instance_ids(platform, "steady")
    nope = platform.cli("unset-env", "steady", "NOPE")
    assert nope.stdout.strip() == "steady: NOPE is not set; nothing changed"
    same = platform.cli("set-env", "steady", "KEPT=1")
    assert same.stdout.strip() == "steady: KEPT already has that value; nothing changed"
    assert release_of(platform, "steady") == release
    assert len(platform.api("GET", "/v1/apps/steady/releases").json()["releases"]) == release
    assert instance_ids(platform, "steady") == ids


def test_an_unchanged_repush_keeps_the_release_and_its_instances(
    platform: Platform, tmp_path: Path
) -> None:
    app = tmp_path / "again"
    shutil.copytree(TINY, app)
    platform.cli("push", str(app))
    release, ids = release_of(platform, "again"), instance_ids(platform, "again")
    repushed = platform.cli("push", str(app))
    assert f"again: no change: release v{release} is current" in repushed.stdout
    assert release_of(platform, "again") == release
    assert instance_ids(platform, "again") == ids


def test_an_unchanged_python_repush_keeps_the_release(platform: Platform, tmp_path: Path) -> None:
    """The python pack's virtualenv holds build times, so its droplet differs every build:
    the same source built with the same options is what says nothing changed."""
    app = tmp_path / "snake"
    shutil.copytree(EXAMPLES / "hello-python", app)
    platform.cli("push", str(app))
    release, ids = release_of(platform, "snake"), instance_ids(platform, "snake")
    repushed = platform.cli("push", str(app))
    assert f"snake: no change: release v{release} is current" in repushed.stdout
    assert (release_of(platform, "snake"), instance_ids(platform, "snake")) == (release, ids)
    (app / "app.py").write_text((app / "app.py").read_text() + "\n# changed\n")
    platform.cli("push", str(app))
    assert release_of(platform, "snake") == release + 1


def test_strict_shows_every_change_and_asks_first(platform: Platform, tmp_path: Path) -> None:
    app = tmp_path / "web"
    shutil.copytree(TINY, app)
    manifest = tmp_path / "manifest.yml"
    manifest.write_text(
        "applications:\n- name: strictly\n  path: web\n  instances: 2\n"
        "  env: {TOKEN: first-secret-value, GONE: soon}\n"
    )
    platform.cli("push", "-f", str(manifest), str(tmp_path))
    release = release_of(platform, "strictly")
    manifest.write_text(
        "applications:\n- name: strictly\n  path: web\n  instances: 1\n"
        "  memory: 128M\n  env: {TOKEN: second-secret-value}\n"
    )
    refused = platform.cli("push", "-f", str(manifest), str(tmp_path), "--strict", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "foundry: --strict would change strictly as shown; pass --yes to apply that "
        "without a terminal"
    )
    for line in (
        "instances (web): 2 -> 1",
        "memory: 256M -> 128M",
        "env TOKEN: changed",
        "env GONE: removed",
    ):
        assert line in refused.stdout, refused.stdout
    assert "secret-value" not in refused.stdout + refused.stderr
    view = json.loads(platform.cli("app", "strictly", "--json").stdout)
    assert view["scale"]["web"] == 2
    assert view["release"] == release  # nothing changed
    platform.cli("push", "-f", str(manifest), str(tmp_path), "--strict", "--yes")
    view = json.loads(platform.cli("app", "strictly", "--json").stdout)
    assert view["scale"]["web"] == 1
    assert view["memory_mb"] == 128
    assert platform.api("GET", "/v1/apps/strictly/env").json()["env"] == {
        "TOKEN": "second-secret-value"
    }
