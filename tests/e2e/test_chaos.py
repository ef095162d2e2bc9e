"""Faults under load, through the real edge: rolling deploys, killed instances, a killed
control plane, a restarted node agent and a lost node. Each keeps a bounded stream of
loopback requests running and asserts how many failed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import EXAMPLES, ROOT, Platform, eventually
from tests.e2e.load import Load

pytestmark = pytest.mark.slow
MARKER = b"FOUNDRY_INSTANCE_ID="
PAUSE = 15  # between steps: longer than any idle-thread timeout (the quiet-node kill bug)


def pause() -> None:
    """Let the platform sit between steps, as a person's deploys do: a failure that only a
    busy node hides (a jail dying once its spawner thread retires) shows up here."""
    time.sleep(PAUSE)


def assert_no_crash(platform: Platform, app: str) -> None:
    instances = view(platform, app)["instances"]
    assert all(i["restarts"] == 0 for i in instances), instances
    assert "crash" not in platform.cli("events", app).stdout


def test_chaos_runs_on_the_full_tier_in_ci(platform: Platform) -> None:
    tiers = [n["tier"] for n in json.loads(platform.cli("nodes", "--json").stdout)]
    if os.environ.get("CI"):
        assert tiers == ["full"], tiers


def view(platform: Platform, app: str) -> dict[str, Any]:
    return dict(json.loads(platform.cli("app", app, "--json").stdout))


def running(platform: Platform, app: str) -> list[dict[str, Any]]:
    return [i for i in view(platform, app)["instances"] if i["state"] == "RUNNING"]


def marked_pids() -> dict[int, str]:
    """Every process carrying an instance marker, with its instance id."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for var in env:
            if var.startswith(MARKER):
                found[int(entry)] = var[len(MARKER) :].decode()
    return found


def role_pid(platform: Platform, needle: str) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "-m foundry" in cmd and needle in cmd and str(platform.home) in cmd:
                return int(entry)
    raise AssertionError(f"no process running {needle!r}")


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_rolling_deploys_drop_no_request(platform: Platform) -> None:
    platform.cli("push", str(EXAMPLES / "hello-python"), "--name", "rolling", "-i", "3")
    eventually(lambda: len(running(platform, "rolling")) == 3, 60, "3 instances")
    pause()
    with Load(platform.http_port, "rolling.localhost", max_seconds=180) as load:
        eventually(lambda: load.snapshot()[0] > 20, 20, "traffic flowing")
        platform.cli("set-env", "rolling", "GREETING=Rolled")  # release v2, rolling
        pause()
        platform.cli("restart", "rolling")  # same release, rolling
        pause()
        before = load.snapshot()[0]
        eventually(lambda: load.snapshot()[0] > before + 20, 20, "traffic after the deploys")
    assert load.failed == 0, dict(load.failures)
    assert_no_crash(platform, "rolling")
    greetings = {body.split(" from ")[0] for body in load.bodies}
    assert greetings == {"Hello", "Rolled"}  # the stream spanned the deploy
    assert [
        d["state"] for d in json.loads(platform.cli("deployments", "rolling", "--json").stdout)
    ][:2] == ["SUCCEEDED", "SUCCEEDED"]


def test_killed_instance_is_replaced_and_routable(platform: Platform) -> None:
    platform.cli("push", str(EXAMPLES / "hello-python"), "--name", "victim", "-i", "2")
    eventually(lambda: len(running(platform, "victim")) == 2, 60, "2 instances")
    target = next(i for i in view(platform, "victim")["instances"] if i["index"] == 0)
    pids = [pid for pid, iid in marked_pids().items() if iid == target["id"]]
    assert pids
    began = time.monotonic()
    kill_all(pids)

    def replaced() -> bool:
        fresh = [i for i in running(platform, "victim") if i["index"] == 0]
        return bool(fresh) and platform.get("victim").status_code == 200

    eventually(replaced, 60, "instance 0 running again")
    print(f"\nmeasured: killed instance replaced in {time.monotonic() - began:.2f} s")
    replacement = {i["id"]: i["restarts"] for i in running(platform, "victim")}
    pause()
    # The one crash we caused, and nothing after it: both instances lived through the pause.
    assert {i["id"]: i["restarts"] for i in running(platform, "victim")} == replacement
    events = platform.cli("events", "victim").stdout
    assert "crash" in events
    assert "killed by signal SIGKILL" in events
    assert events.count("killed by signal") == 1, events


def test_control_plane_kill_drops_no_request(platform: Platform) -> None:
    platform.cli("push", str(EXAMPLES / "hello-python"), "--name", "steady", "-i", "2")
    eventually(lambda: len(running(platform, "steady")) == 2, 60, "2 instances")
    before = {i["id"] for i in view(platform, "steady")["instances"]}
    control = role_pid(platform, "foundry control")
    pause()
    with Load(platform.http_port, "steady.localhost", max_seconds=180) as load:
        eventually(lambda: load.snapshot()[0] > 20, 20, "traffic flowing")
        os.kill(control, signal.SIGKILL)
        served = load.snapshot()[0]
        eventually(lambda: load.snapshot()[0] > served + 50, 20, "traffic while control is down")
        eventually(lambda: role_pid(platform, "foundry control") != control, 30, "new control")
        eventually(lambda: platform.api("GET", "/v1/health").status_code == 200, 30, "control back")
        pause()
    assert load.failed == 0, dict(load.failures)
    after = view(platform, "steady")
    assert after["release"] == 1
    assert {i["id"] for i in after["instances"]} == before
    assert_no_crash(platform, "steady")


def test_node_agent_restart_leaves_no_duplicate_or_orphan(platform: Platform) -> None:
    platform.cli("push", str(EXAMPLES / "hello-python"), "--name", "adopted", "-i", "2")
    eventually(lambda: len(running(platform, "adopted")) == 2, 60, "2 instances")
    agent = role_pid(platform, "node join")
    os.kill(agent, signal.SIGKILL)
    eventually(lambda: role_pid(platform, "node join") != agent, 30, "a new node agent")

    def converged() -> bool:
        # Exactly the instances the control plane knows run: none twice, none orphaned.
        known = {i["id"] for i in running(platform, "adopted")}
        mine = {iid for iid in marked_pids().values() if iid.startswith("adopted-")}
        return len(known) == 2 and mine == known and platform.get("adopted").status_code == 200

    eventually(converged, 60, "the same two instances known and running")


def test_lost_node_instances_run_elsewhere(platform: Platform, tmp_path: Path) -> None:
    token = (platform.home / "admin-token").read_text().strip()
    env = {**platform.env, "FOUNDRY_JOIN_TOKEN": token}
    with open(tmp_path / "second.log", "wb") as log:
        second = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "foundry",
                "node",
                "join",
                f"http://127.0.0.1:{platform.api_port}",
                "--home",
                str(tmp_path / "node2"),
                "--name",
                "second",
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        eventually(
            lambda: (
                sum(
                    n["state"] == "ready"
                    for n in json.loads(platform.cli("nodes", "--json").stdout)
                )
                == 2
            ),
            30,
            "two ready nodes",
        )
        platform.cli("push", str(EXAMPLES / "hello-python"), "--name", "spread", "-i", "4")
        eventually(lambda: len(running(platform, "spread")) == 4, 60, "4 instances")
        nodes = {n["name"]: n["id"] for n in json.loads(platform.cli("nodes", "--json").stdout)}
        doomed = [
            i["id"] for i in view(platform, "spread")["instances"] if i["node"] == nodes["second"]
        ]
        assert doomed, "the scheduler should spread instances over both nodes"
        # The machine dies: its agent and everything it ran.
        pids = [pid for pid, iid in marked_pids().items() if iid in doomed]
        began = time.monotonic()
        kill_all([second.pid, *pids])

        def moved() -> bool:
            up = running(platform, "spread")
            return len(up) == 4 and all(i["node"] == nodes["local"] for i in up)

        eventually(moved, 60, "every instance on the surviving node")
        print(
            f"\nmeasured: lost node's instances running elsewhere after "
            f"{time.monotonic() - began:.2f} s"
        )
        states = {n["name"]: n["state"] for n in json.loads(platform.cli("nodes", "--json").stdout)}
        assert states["second"] == "lost"
        assert eventually(lambda: platform.get("spread").status_code == 200, 10, "routable")
    finally:
        second.kill()
        second.wait()


def test_failing_http_liveness_check_restarts_the_instance(platform: Platform) -> None:
    app = ROOT / "tests" / "apps" / "flaky"
    platform.cli("push", str(app), "--name", "flaky", "--health-check", "http:/healthz")
    assert view(platform, "flaky")["health_check"] == "http:/healthz"
    assert platform.get("flaky", "/break").status_code == 200
    eventually(
        lambda: "health check failed" in platform.cli("events", "flaky").stdout,
        30,
        "the liveness check to fail",
    )
    eventually(
        lambda: (
            [(i["state"], i["restarts"]) for i in view(platform, "flaky")["instances"]]
            == [("RUNNING", 1)]
        ),
        30,
        "the instance restarted",
    )
    assert platform.get("flaky", "/healthz").status_code == 200
