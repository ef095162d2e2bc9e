"""One-off tasks (`foundry run`) and the release phase of a deploy."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Platform, eventually

pytestmark = pytest.mark.slow
APP = str(ROOT / "tests" / "apps" / "migrating")


def test_release_phase_runs_before_the_rollout_and_a_failure_keeps_the_old_release(
    platform: Platform,
) -> None:
    first = platform.cli("push", APP, "--name", "migrating", "-e", "SCHEMA=1")
    assert "applied 0001_initial for schema 1" in first.stdout  # streamed to the pusher
    assert platform.get("migrating").text == "schema 1\n"
    failed = platform.cli(
        "push", APP, "--name", "migrating", "-e", "SCHEMA=2", "-e", "MIGRATION_FAILS=1", check=False
    )
    assert failed.returncode == 1
    assert "migration 0002 failed" in failed.stdout
    assert "release phase failed: exit code 2" in failed.stderr
    assert platform.get("migrating").text == "schema 1\n"  # the old release serves
    releases = json.loads(platform.cli("releases", "migrating", "--json").stdout)
    assert [r["version"] for r in releases] == [1]


def test_run_streams_output_and_returns_the_exit_code(platform: Platform) -> None:
    platform.cli("push", APP, "--name", "runner", "-e", "SCHEMA=7")
    result = platform.cli(
        "run",
        "runner",
        "--",
        "python3",
        "-c",
        "import os, sys; print('schema', os.environ['SCHEMA']); sys.exit(3)",
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "schema 7" in result.stdout
    ok = platform.cli("run", "runner", "--", "sh", "-c", "echo fine; id -u")
    assert ok.stdout.splitlines()[0] == "fine"
    assert ok.stdout.splitlines()[1] != "0"  # jailed, not root
    missing = platform.cli("run", "ghost", "--", "true", check=False)
    assert missing.returncode == 1
    assert "no app named 'ghost'" in missing.stderr


def test_push_watch_puts_an_edit_live(platform: Platform, tmp_path: Path) -> None:
    work = tmp_path / "watched"
    shutil.copytree(ROOT / "tests" / "apps" / "tiny-web", work)
    proc = subprocess.Popen(
        [sys.executable, "-m", "foundry", "push", str(work), "--name", "watched", "--watch"],
        env=platform.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    stdout = proc.stdout
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    try:
        eventually(lambda: any("Watching" in line for line in out), 120, "the watch to start")
        assert platform.get("watched").status_code == 200
        server = work / "server.py"
        source = server.read_text()
        name_part = "{os.environ.get('FOUNDRY_APP_NAME')} "
        assert name_part in source, "the test app no longer starts its answer with its name"
        server.write_text(source.replace(name_part, "edited ", 1))
        eventually(
            lambda: platform.get("watched").text.startswith("edited "), 120, "the edit to go live"
        )
        eventually(
            lambda: sum("is running" in line for line in out) >= 2,
            60,
            "the watched push to report its rollout",
        )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert any("changed; pushing again" in line for line in out)
