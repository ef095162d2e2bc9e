"""One-off tasks (`foundry run`) and the release phase of a deploy."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import ROOT, Platform

pytestmark = pytest.mark.slow
APP = str(ROOT / "tests" / "apps" / "migrating")


def test_release_phase_runs_before_the_rollout_and_a_failure_keeps_the_old_release(
        platform: Platform) -> None:
    first = platform.cli("push", APP, "--name", "migrating", "-e", "SCHEMA=1")
    assert "applied 0001_initial for schema 1" in first.stdout     # streamed to the pusher
    assert platform.get("migrating").text == "schema 1\n"
    failed = platform.cli("push", APP, "--name", "migrating", "-e", "SCHEMA=2",
                          "-e", "MIGRATION_FAILS=1", check=False)
    assert failed.returncode == 1
    assert "migration 0002 failed" in failed.stdout
    assert "release phase failed: exit code 2" in failed.stderr
    assert platform.get("migrating").text == "schema 1\n"           # the old release serves
    releases = json.loads(platform.cli("releases", "migrating", "--json").stdout)
    assert [r["version"] for r in releases] == [1]


def test_run_streams_output_and_returns_the_exit_code(platform: Platform) -> None:
    platform.cli("push", APP, "--name", "runner", "-e", "SCHEMA=7")
    result = platform.cli("run", "runner", "--", "python3", "-c",
                          "import os, sys; print('schema', os.environ['SCHEMA']); sys.exit(3)",
                          check=False)
    assert result.returncode == 3, result.stderr
    assert "schema 7" in result.stdout
    ok = platform.cli("run", "runner", "--", "sh", "-c", "echo fine; id -u")
    assert ok.stdout.splitlines()[0] == "fine"
    assert ok.stdout.splitlines()[1] != "0"                          # jailed, not root
    missing = platform.cli("run", "ghost", "--", "true", check=False)
    assert missing.returncode == 1 and "no app named 'ghost'" in missing.stderr
