"""What operators see of nodes and apps: no URL for route-less workers, `node remove`
refusing a live node, and a node agent that leaves no zombie and no cgroup behind."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from node import cgroups
from node.jail import scope_of
from tests.e2e.conftest import EXAMPLES, Platform, eventually

pytestmark = pytest.mark.slow


def test_a_route_less_worker_shows_no_url(platform: Platform) -> None:
    platform.cli("push", str(EXAMPLES / "worker"), "--name", "quiet-worker")
    row = next(
        line
        for line in platform.cli("apps").stdout.splitlines()
        if line.startswith("quiet-worker ")
    )
    assert row.split()[-1] == "-", row
    assert "http" not in row, row
    head = platform.cli("app", "quiet-worker").stdout.splitlines()[0]
    assert "http" not in head, head
    assert head.endswith("no route (no web process)"), head


def test_removing_the_busy_only_node_is_refused(platform: Platform) -> None:
    # The shared platform may also list nodes other tests joined and lost; "local" is the
    # one `foundry up` runs, ready and busy.
    node = "local"
    before = [n["name"] for n in json.loads(platform.cli("nodes", "--json").stdout)]
    assert node in before
    out = platform.cli("node", "remove", node, check=False)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"foundry: node {node} is ready"), lines
    assert lines[0].endswith(
        f"drain it first (`foundry node drain {node}`) or remove it with --force"
    ), lines
    assert [n["name"] for n in json.loads(platform.cli("nodes", "--json").stdout)] == before


def proc_stat(pid: str) -> tuple[str, int, str]:
    """(command name, parent pid, state letter) of a process, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    name = text[text.index("(") + 1 : text.rindex(")")]
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return name, int(ppid), state


def zombies_of(parent: int) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                name, ppid, state = proc_stat(entry)
            except (OSError, ValueError, IndexError):
                continue
            if ppid == parent and state == "Z":
                found.append(f"{entry} [{name}]")
    return found


def node_agent_pid(home: Path) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"join" in cmd and str(home / "node").encode() in cmd:
                return int(entry)
    raise AssertionError("no node agent running")


def scope_dirs(home: Path) -> list[Path]:
    driver = cgroups.detect()
    assert driver is not None
    scope = scope_of(str((home / "node").resolve()))[0]
    return [parent / scope for parent in driver.parents]


def jail_processes(agent: int) -> set[int]:
    """The pids of every process in the agent's jails' trees (below its children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(proc_stat(entry)[1], []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    found, todo = set(), list(children.get(agent, []))
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


class ZombieWatch(threading.Thread):
    """Samples /proc every few ms: how long each watched pid was a zombie, and whose."""

    def __init__(self, agent: int) -> None:
        super().__init__(daemon=True)
        self.agent, self.watched = agent, jail_processes(agent)
        self.seen: dict[int, tuple[int, float, float]] = {}  # pid -> (parent, first, last)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.watched |= jail_processes(self.agent)
            for pid in self.watched:
                try:
                    _, ppid, state = proc_stat(str(pid))
                except (OSError, ValueError, IndexError):
                    continue
                if state == "Z":
                    now = time.monotonic()
                    self.seen[pid] = (ppid, self.seen.get(pid, (0, now, 0))[1], now)
            time.sleep(0.005)

    def lingering(self, longer_than: float) -> dict[int, str]:
        """Zombies left outside the platform (to init), or left by the agent longer than
        `longer_than` seconds. (A zombie whose parent is a live jail process is the app's.)"""
        return {
            pid: f"parent {ppid}, {last - first:.2f} s"
            for pid, (ppid, first, last) in self.seen.items()
            if (ppid != self.agent and ppid not in self.watched)
            or (ppid == self.agent and last - first > longer_than)
        }


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root")
def test_killed_instances_leave_no_zombie_and_a_clean_stop_no_cgroup(tmp_path: Path) -> None:
    p = Platform(tmp_path / "home")
    p.start()
    try:
        p.cli("push", str(EXAMPLES / "hello-python"), "--name", "reaped", "-i", "3")
        eventually(
            lambda: (
                sum(
                    i["state"] == "RUNNING"
                    for i in json.loads(p.cli("app", "reaped", "--json").stdout)["instances"]
                )
                == 3
            ),
            60,
            "3 instances",
        )
        agent = node_agent_pid(p.home)
        assert all(d.is_dir() for d in scope_dirs(p.home))
        watch = ZombieWatch(agent)
        watch.start()
        p.cli("scale", "reaped", "-i", "1")  # two instances stopped
        p.cli("restart", "reaped")  # one replaced
        eventually(
            lambda: (
                [
                    i["state"]
                    for i in json.loads(p.cli("app", "reaped", "--json").stdout)["instances"]
                ]
                == ["RUNNING"]
            ),
            60,
            "one new instance",
        )
        time.sleep(2)  # the watch window: a zombie left this long would be seen
        watch.done.set()
        watch.join()
        longest = max((last - first for _, first, last in watch.seen.values()), default=0)
        print(
            f"\nmeasured: {len(watch.watched)} jail processes watched, {len(watch.seen)} "
            f"were zombies; longest {longest:.3f} s"
        )
        lingering, still = watch.lingering(0.5), zombies_of(agent)
    finally:
        p.stop()
    left_dirs = [str(d) for d in scope_dirs(p.home) if d.exists()]
    assert not lingering, (lingering, still)
    assert not still, (lingering, still)
    assert not left_dirs, f"cgroup scope left after a clean stop: {left_dirs}"
