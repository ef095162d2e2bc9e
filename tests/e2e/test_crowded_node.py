"""A crowded node sits idle without false crashes, on the `full` and the `plain` tier.

Regression for the agent whose cost grew with instances x processes: every instance's
watchdog rescanned all of /proc every 0.25 s on the event loop, the health checks' 1 s
timeout was measured on that busy loop, and healthy idle apps were declared crashed and
restarted. Here each tier gets a platform of its own with INSTANCES idle instances on its
one node, left alone for IDLE_SECONDS with liveness checks every 2 s (the e2e platform's
setting): not one restart, not one crash event, and every instance the same one.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from node.jail import FULL, PLAIN, choose_tier, probe
from tests.e2e.conftest import ROOT, Platform, eventually

pytestmark = pytest.mark.slow
INSTANCES = 15
IDLE_SECONDS = 20
APP = ROOT / "tests" / "apps" / "tiny-web"


def instances(p: Platform) -> list[dict[str, Any]]:
    return list(json.loads(p.cli("app", "crowd", "--json").stdout)["instances"])


def all_running(p: Platform) -> bool:
    return [i["state"] for i in instances(p)] == ["RUNNING"] * INSTANCES


@pytest.fixture(scope="module")
def platforms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Platform]]:
    tiers = [PLAIN]
    if choose_tier(probe()[0]).tier == FULL:
        tiers.insert(0, FULL)
    elif os.environ.get("CI"):
        pytest.fail("CI runs as root with bubblewrap: the full tier must be tested")
    started: dict[str, Platform] = {}
    try:
        for tier in tiers:
            p = Platform(tmp_path_factory.mktemp(f"crowd-{tier}") / "home")
            p.env["FOUNDRY_JAIL_TIER"] = tier
            p.start()
            started[tier] = p
        yield started
    finally:
        for p in started.values():
            if p.proc is not None and p.proc.poll() is None:
                p.proc.send_signal(signal.SIGINT)
        for p in started.values():
            if p.proc is not None:
                p.proc.wait(30)


def test_a_crowded_idle_node_has_no_false_crashes(platforms: dict[str, Platform]) -> None:
    before: dict[str, set[str]] = {}
    for tier, p in platforms.items():
        p.cli("push", str(APP), "--name", "crowd", "-i", str(INSTANCES), timeout=300)
        eventually(
            functools.partial(all_running, p),
            120,
            f"{INSTANCES} running instances on the {tier} tier",
        )
        before[tier] = {i["id"] for i in instances(p)}

    # Nothing is asked of the platforms now but their own liveness checks (every 2 s).
    time.sleep(IDLE_SECONDS)

    for tier, p in platforms.items():
        now = instances(p)
        assert [(i["state"], i["restarts"]) for i in now] == [("RUNNING", 0)] * INSTANCES, (
            tier,
            now,
            p.logs(),
        )
        assert {i["id"] for i in now} == before[tier], tier
        events = json.loads(p.cli("events", "crowd", "--json").stdout)
        crashes = [e for e in events if e.get("kind") == "crash"]
        assert not crashes, (tier, crashes)
        assert p.get("crowd").status_code == 200, tier
