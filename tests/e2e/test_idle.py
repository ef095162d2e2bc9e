"""An instance lives as long as its node wants it, however long the node sits idle.

Regression for the quiet-node kill: jails were started with bubblewrap's die-with-parent
from a trio worker thread, and the kernel's parent-death signal followed that thread when
trio retired it (~10 s idle), so every jailed app died ten seconds after it started unless
something kept the node busy. Here each tier gets a platform of its own, and after the
push nothing at all is asked of any of them for longer than any thread-cache timeout.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from node.jail import FULL, TIERS, choose_tier, probe
from tests.e2e.conftest import EXAMPLES, ROOT, Platform, eventually

pytestmark = pytest.mark.slow
IDLE_SECONDS = 60  # trio retires worker threads after 10 s; anyio's pool similar


def instances(p: Platform, app: str) -> list[dict[str, Any]]:
    return list(json.loads(p.cli("app", app, "--json").stdout)["instances"])


def running(p: Platform, app: str, count: int) -> bool:
    return sum(1 for i in instances(p, app) if i["state"] == "RUNNING") == count


@pytest.fixture(scope="module")
def platforms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Platform]]:
    best = choose_tier(probe()[0]).tier
    tiers = TIERS[TIERS.index(best) :]  # every tier this machine can run, strongest first
    started: dict[str, Platform] = {}
    try:
        for tier in tiers:
            p = Platform(tmp_path_factory.mktemp(f"idle-{tier}") / "home")
            p.env["FOUNDRY_JAIL_TIER"] = tier
            p.start()
            started[tier] = p
        yield started
    finally:
        running = [p.proc for p in started.values() if p.proc is not None and p.proc.poll() is None]
        for proc in running:  # stop them together, as Ctrl-C would
            proc.send_signal(signal.SIGINT)
        for proc in running:
            proc.wait(30)


def test_full_tier_is_among_the_idle_platforms_in_ci(platforms: dict[str, Platform]) -> None:
    if os.environ.get("CI"):
        assert FULL in platforms, "CI runs as root with bubblewrap: the full tier must be tested"
    for tier, p in platforms.items():
        nodes = json.loads(p.cli("nodes", "--json").stdout)
        assert [n["tier"] for n in nodes] == [tier]


def test_idle_instances_are_never_restarted(platforms: dict[str, Platform]) -> None:
    started: dict[str, set[str]] = {}
    for p in platforms.values():
        p.cli("push", str(EXAMPLES / "hello-python"), "--name", "quiet", "-i", "2")
    for tier, p in platforms.items():
        eventually(
            functools.partial(running, p, "quiet", 2), 60, f"2 running instances on the {tier} tier"
        )
        started[tier] = {i["id"] for i in instances(p, "quiet")}
        assert p.get("quiet").status_code == 200

    # Leave every node really idle: no request to any app, API or agent.
    time.sleep(IDLE_SECONDS)

    for tier, p in platforms.items():
        now = instances(p, "quiet")
        assert [(i["state"], i["restarts"]) for i in now] == [("RUNNING", 0)] * 2, (tier, now)
        assert {i["id"] for i in now} == started[tier], tier
        events = p.cli("events", "quiet").stdout
        assert "crash" not in events, (tier, events)
        assert p.get("quiet").status_code == 200, tier


def test_a_task_started_on_an_idle_node_runs_to_its_end(platforms: dict[str, Platform]) -> None:
    """One-off tasks come from the same spawner: one outliving the thread timeout finishes."""
    tasks = {
        tier: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "foundry",
                "run",
                "quiet",
                "--",
                "python3",
                "-c",
                "import time; time.sleep(14); print('task-finished')",
            ],
            env=p.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for tier, p in platforms.items()
    }  # all at once: each node idles on its own
    for tier, task in tasks.items():
        out, _ = task.communicate(timeout=120)
        assert task.returncode == 0, (tier, out)
        assert "task-finished" in out, (tier, out)
