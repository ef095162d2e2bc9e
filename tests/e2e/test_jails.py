"""Jails seen from a real `foundry up` (run as root in CI): what a pushed app can see
and touch, its memory and process limits, and stops that leave nothing behind.
The apps pushed live in tests/apps/."""

from __future__ import annotations

import glob
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from node.jail import FULL, choose_tier, probe
from tests.e2e.conftest import Platform, eventually

APPS = Path(__file__).resolve().parents[1] / "apps"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        choose_tier(probe()[0]).tier != FULL,
        reason="needs the full jail tier (root, bubblewrap, cgroups)",
    ),
]


def instances(platform: Platform, app: str) -> list[dict[str, Any]]:
    return list(json.loads(platform.cli("app", app, "--json").stdout)["instances"])


def running_instance(platform: Platform, app: str) -> dict[str, Any]:
    return dict(
        eventually(
            lambda: next((i for i in instances(platform, app) if i["state"] == "RUNNING"), None),
            60,
            f"{app} running",
        )
    )


def host_pids_with(needle: bytes) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.add(int(entry))
            except OSError:
                pass
    return found


def test_node_reports_the_full_tier(platform: Platform) -> None:
    nodes = json.loads(platform.cli("nodes", "--json").stdout)
    assert [n["tier"] for n in nodes if n["name"] == "local"] == [FULL]
    assert "Isolation:  full" in (platform.home.parent / "up.out").read_text()


def test_nodes_show_the_seccomp_filter_and_jails_get_it(platform: Platform) -> None:
    nodes = json.loads(platform.cli("nodes", "--json").stdout)
    local = next(n for n in nodes if n["name"] == "local")
    assert local["seccomp"].startswith("default-deny-list (")
    shown = platform.cli("nodes").stdout.splitlines()
    assert "SECCOMP" in shown[0].split()
    assert any(line.startswith("local ") and local["seccomp"] in line for line in shown[1:])
    platform.cli("push", str(APPS / "inspector"), "--name", "jail-userns")
    running_instance(platform, "jail-userns")
    userns = platform.get("jail-userns", "/?userns=1").json()["userns"]
    assert userns["exit"] != 0, userns
    assert "Operation not permitted" in userns["output"], userns
    task = platform.cli("run", "jail-userns", "--", "sh", "-c", "unshare -Ur id -u; echo exit=$?")
    assert "Operation not permitted" in task.stdout, task.stdout
    assert "exit=1" in task.stdout, task.stdout


def test_an_app_sees_only_itself_and_writes_only_its_dirs(platform: Platform) -> None:
    platform.cli("push", str(APPS / "inspector"), "--name", "jail-peer")
    platform.cli("push", str(APPS / "inspector"), "--name", "jail-inspector")
    peer = running_instance(platform, "jail-peer")
    peer_dir = platform.home / "node" / "instances" / peer["id"] / "app"
    assert (peer_dir / "inspector.py").exists()  # the host path the app must not reach
    secrets = [
        "/root",
        str(platform.home),
        str(platform.home / "control" / "foundry.db"),
        str(platform.home / "admin-token"),
        str(peer_dir),
        str(peer_dir / "inspector.py"),
        str(platform.home / "node" / "droplets"),
        "/proc/1/environ",
    ]
    writes = [
        "/",
        "/usr",
        "/etc",
        "/var",
        "/opt",
        "/root",
        str(peer_dir),
        "/proc/sys/kernel",
        "/app",
        "/tmp",
        "/dev/shm",
    ]
    query = "&".join(
        [*(f"read={p}" for p in secrets), "read=/app/inspector.py", *(f"write={p}" for p in writes)]
    )
    seen = platform.get("jail-inspector", f"/?{query}").json()
    assert seen["read"] == {**{p: False for p in secrets}, "/app/inspector.py": True}
    assert seen["write"] == {
        **{p: False for p in writes[:-3]},
        "/app": True,
        "/tmp": True,
        "/dev/shm": True,
    }
    assert seen["uid"] >= 20000
    assert seen["gid"] >= 20000
    assert seen["cwd"] == seen["home"] == "/app"
    commands = [cmd for _, cmd in seen["processes"]]
    assert len(commands) <= 3, commands  # bwrap's init, the app and its shell
    assert any("inspector.py" in c for c in commands)
    assert not [
        c
        for c in commands
        if "gunicorn" in c or str(platform.home) in c or "/tmp" in c or "/root" in c
    ], commands  # no other app, no host path
    peer_uid = platform.get("jail-peer").json()["uid"]
    assert peer_uid != seen["uid"]  # a distinct uid per instance


def test_a_memory_hog_is_killed_for_out_of_memory(platform: Platform) -> None:
    platform.cli("push", str(APPS / "memhog"), "--name", "jail-hog", "-m", "64M", "--no-wait")
    crashed = eventually(
        lambda: next(
            (i for i in instances(platform, "jail-hog") if i["reason"] == "out of memory"), None
        ),
        90,
        "an out-of-memory crash",
    )
    assert crashed["state"] in ("CRASHED", "STARTING", "RUNNING")
    shown = platform.cli("app", "jail-hog").stdout
    assert "out of memory" in shown
    platform.cli("stop", "jail-hog")


def test_a_fork_bomb_hits_the_pids_limit_and_others_keep_answering(platform: Platform) -> None:
    platform.cli("push", str(APPS / "inspector"), "--name", "jail-bystander")
    platform.cli("push", str(APPS / "forkbomb"), "--name", "jail-bomb", "-m", "1G")
    bomb = running_instance(platform, "jail-bomb")
    counts = eventually(
        lambda: (c := platform.get("jail-bomb").json())["refused"] > 0 and c,
        60,
        "the bomb to be refused processes",
    )
    assert counts["started"] < 512
    (pids_dir,) = glob.glob(f"/sys/fs/cgroup/pids/foundry/*/{bomb['id']}")
    assert int(Path(pids_dir, "pids.current").read_text()) <= 512
    assert Path(pids_dir, "pids.max").read_text().strip() == "512"
    for _ in range(20):  # the rest of the machine is fine while the bomb keeps trying
        assert platform.get("jail-bystander").status_code == 200
        time.sleep(0.05)
    platform.cli("stop", "jail-bomb")
    eventually(
        lambda: not glob.glob(f"/sys/fs/cgroup/pids/foundry/*/{bomb['id']}"),
        30,
        "the bomb's cgroup to be removed",
    )
    assert platform.get("jail-bystander").status_code == 200


def test_stop_leaves_nothing_of_a_sigterm_ignorer_behind(platform: Platform) -> None:
    platform.cli("push", str(APPS / "stubborn"), "--name", "jail-stubborn")
    inst = running_instance(platform, "jail-stubborn")
    marker = b"stubborn-child-jail-stubborn"
    eventually(lambda: host_pids_with(marker), 10, "the setsid'd grandchild")
    workdir = platform.home / "node" / "instances" / inst["id"]
    assert workdir.exists()
    platform.cli("stop", "jail-stubborn")
    eventually(
        lambda: (
            all(
                i["state"] == "STOPPED" or i["state"] == "CRASHED"
                for i in instances(platform, "jail-stubborn")
            )
            or not instances(platform, "jail-stubborn")
        ),
        30,
        "the instance to stop",
    )
    eventually(lambda: not host_pids_with(marker), 15, "no process of the instance left")
    eventually(lambda: not workdir.exists(), 10, "the instance dir removed")
    assert not glob.glob(f"/sys/fs/cgroup/*/foundry/*/{inst['id']}")
    assert not glob.glob(f"/sys/fs/cgroup/memory/**/foundry/*/{inst['id']}", recursive=True)
