"""Two app-scoped deploy tokens through the real CLI against `foundry up`: the second
cannot match the first's file, map under its host, or list nodes and other routes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Platform

pytestmark = pytest.mark.slow
SECRET = b"SECRET_KEY=alice-only\n" + b"#" * (70 * 1024)  # over the 64 KiB pool minimum


def as_token(platform: Platform, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**platform.env, "FOUNDRY_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "foundry", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def source(directory: Path) -> Path:
    directory.mkdir()
    (directory / "Procfile").write_text("web: python3 -m http.server $PORT\n")
    (directory / ".env").write_bytes(SECRET)
    return directory


def test_scoped_tokens_keep_to_their_own_apps(platform: Platform, tmp_path: Path) -> None:
    alice = platform.cli(
        "tokens", "create", "--kind", "deploy", "--apps", "sc-alice"
    ).stdout.strip()
    mallory = platform.cli(
        "tokens", "create", "--kind", "deploy", "--apps", "sc-mallory"
    ).stdout.strip()
    first = as_token(platform, alice, "push", str(source(tmp_path / "a")), "--name", "sc-alice")
    assert first.returncode == 0, first.stderr
    again = as_token(platform, alice, "push", str(tmp_path / "a"), "--name", "sc-alice")
    assert again.returncode == 0, again.stderr
    second = as_token(
        platform, mallory, "push", str(source(tmp_path / "m")), "--name", "sc-mallory"
    )
    assert second.returncode == 0, second.stderr
    assert "0 of 2 files already on the control plane; uploading 2" in second.stderr

    hijack = as_token(platform, mallory, "map-route", "sc-mallory", "sc-alice.localhost/login")
    assert hijack.returncode == 1
    assert hijack.stderr.strip().endswith("host sc-alice.localhost is reserved for another owner")
    routes = json.loads(as_token(platform, mallory, "routes", "--json").stdout)
    assert [r["app"] for r in routes] == ["sc-mallory"]
    assert all("address" not in b for r in routes for b in r["backends"])
    nodes = as_token(platform, mallory, "nodes")
    assert nodes.returncode == 1
    assert "infrastructure" in nodes.stderr
    assert platform.get("sc-alice", "/login").status_code == 404  # still alice's app
