"""Control groups for jails: limits, membership, OOM evidence and whole-group kills.

Two drivers, chosen once at node start by `detect()`:

* v1 (separate hierarchies): one directory per instance in each of the memory,
  pids, cpu and freezer hierarchies, nested under the node's own cgroup there.
  Kill = freeze, SIGKILL every member, thaw (a frozen group cannot fork away).
* v2 (one unified tree with memory and pids controllers): one directory with
  memory.max, memory.swap.max = 0, pids.max, cpu.weight; kill = cgroup.kill.

Invariants: a group's directories are named `foundry/<node scope>/<name>`, so a
restarted node can find and sweep what a crashed one left behind without touching
another node's groups on the same machine; a clean stop removes the node's scope
directories in every hierarchy, and a start removes empty scopes others left; a
process joins a group before it execs anything of the app (the launcher writes its
own pid into every `cgroup.procs` file listed by `Cgroup.procs_files`); memory limits
never allow swap.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

V1_CONTROLLERS = ("memory", "pids", "cpu", "freezer")
V2_CONTROLLERS = ("memory", "pids")
ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    pids: int
    cpu_shares: int  # v1 cpu.shares scale (1024 = one ordinary process group)


def limits_for(memory_mb: int, pids: int = 512) -> Limits:
    """Limits for an instance of `memory_mb`: CPU share proportional to memory."""
    return Limits(memory_bytes=memory_mb << 20, pids=pids, cpu_shares=max(2, memory_mb))


def v2_weight(shares: int) -> int:
    """cpu.shares (2..262144, default 1024) mapped onto cpu.weight (1..10000, default 100)."""
    return max(1, min(10000, 1 + ((shares - 2) * 9999) // 262142))


def own_paths(text: str) -> dict[str, str]:
    """Controller -> this process's cgroup path, from /proc/self/cgroup text ("" = v2)."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path
    return paths


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class Cgroup:
    """One jail's cgroup; the concrete driver decides how limits and kills work."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> set[int]:
        """Every process in the group now."""
        try:
            return {int(p) for p in (self.dirs[0] / "cgroup.procs").read_text().split()}
        except OSError:
            return set()

    def oom_kills(self) -> int:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def remove(self, timeout: float = 2.0) -> None:
        """Kill what is left and remove the directories (waits briefly for exits)."""
        deadline = time.monotonic() + timeout
        for d in reversed(self.dirs):
            while d.exists():
                try:
                    d.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    self.kill()
                    time.sleep(0.01)


class V1Cgroup(Cgroup):
    """dirs: memory, pids, cpu, freezer (in that order)."""

    def create(self, limits: Limits) -> None:
        memory, pids, cpu, _ = self.dirs
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
        if (memory / "memory.memsw.limit_in_bytes").exists():
            _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        with contextlib.suppress(OSError):
            _write(memory / "memory.swappiness", "0")
        _write(pids / "pids.max", str(limits.pids))
        _write(cpu / "cpu.shares", str(limits.cpu_shares))

    def oom_kills(self) -> int:
        try:
            text = (self.dirs[0] / "memory.oom_control").read_text()
        except OSError:
            return 0
        fields = dict(line.split() for line in text.splitlines() if line.strip())
        return int(fields.get("oom_kill", 0))

    def kill(self) -> None:
        freezer = self.dirs[3]
        state = freezer / "freezer.state"
        try:
            _write(state, "FROZEN")
            deadline = time.monotonic() + 1.0
            while state.read_text().strip() != "FROZEN" and time.monotonic() < deadline:
                time.sleep(0.001)
            pids = (freezer / "cgroup.procs").read_text().split()
        except OSError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(OSError):
            _write(state, "THAWED")


class V2Cgroup(Cgroup):
    """dirs: the one unified directory."""

    def create(self, limits: Limits) -> None:
        d = self.dirs[0]
        d.mkdir(parents=True, exist_ok=True)
        _write(d / "memory.max", str(limits.memory_bytes))
        if (d / "memory.swap.max").exists():
            _write(d / "memory.swap.max", "0")
        _write(d / "pids.max", str(limits.pids))
        if (d / "cpu.weight").exists():
            _write(d / "cpu.weight", str(v2_weight(limits.cpu_shares)))

    def oom_kills(self) -> int:
        try:
            text = (self.dirs[0] / "memory.events").read_text()
        except OSError:
            return 0
        fields = dict(line.split() for line in text.splitlines() if line.strip())
        return int(fields.get("oom_kill", 0))

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            _write(self.dirs[0] / "cgroup.kill", "1")


@dataclass(frozen=True)
class Driver:
    """Where this node's jail cgroups live; `version` is 1 or 2."""

    version: int
    parents: tuple[Path, ...]  # v1: one per V1_CONTROLLERS; v2: one

    def group(self, name: str) -> V1Cgroup | V2Cgroup:
        dirs = [p / name for p in self.parents]
        return V1Cgroup(dirs) if self.version == 1 else V2Cgroup(dirs)

    def scoped(self, scope: str) -> Driver:
        """The same driver with groups under `<parent>/<scope>` (one scope per node)."""
        parents = tuple(p / scope for p in self.parents)
        for p in parents:
            p.mkdir(exist_ok=True)
        return Driver(self.version, parents)

    def sweep(self) -> int:
        """Kill and remove groups a previous run of the node left behind."""
        names = {c.name for c in self.parents[0].glob("*") if c.is_dir()}
        for name in names:
            self.group(name).remove()
        return len(names)

    def close(self) -> int:
        """A clean stop: kill and remove what is left in this node's scope, then the scope's
        own directory in every hierarchy; returns how many groups were still there."""
        left = self.sweep()
        for parent in self.parents:
            with contextlib.suppress(FileNotFoundError):
                parent.rmdir()
        return left

    def sweep_empty_scopes(self) -> int:
        """Remove empty `node-*` scope directories beside this node's own (left by nodes
        that stopped without removing them). The kernel refuses to remove a cgroup that
        has members or children, so a scope in use is never touched, and a running node
        whose empty scope goes recreates it with its next group (`create` makes parents)."""
        removed = 0
        for parent in self.parents:
            for scope in parent.parent.glob("node-*"):
                if (
                    scope != parent
                    and scope.is_dir()
                    and not any(c.is_dir() for c in scope.iterdir())
                ):
                    try:
                        scope.rmdir()
                        removed += 1
                    except OSError:
                        pass  # busy, or gone already: either way not ours to force
        return removed


def _v2_mount() -> Path | None:
    for candidate in (ROOT, ROOT / "unified"):
        if (candidate / "cgroup.controllers").exists():
            return candidate
    return None


def _v2_driver(own: dict[str, str]) -> Driver | None:
    mount = _v2_mount()
    if mount is None:
        return None
    available = (mount / "cgroup.controllers").read_text().split()
    if not set(V2_CONTROLLERS) <= set(available):
        return None
    # The root is exempt from "no processes in inner nodes": hang our subtree there.
    parent = mount / "foundry"
    parent.mkdir(exist_ok=True)
    wanted = [c for c in ("memory", "pids", "cpu") if c in available]
    for d in (mount, parent):
        _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
    return Driver(2, (parent,))


def _v1_driver(own: dict[str, str]) -> Driver | None:
    parents = []
    for c in V1_CONTROLLERS:
        mount = ROOT / c
        if not (mount / "cgroup.procs").exists() or c not in own:
            return None
        parent = mount / own[c].lstrip("/") / "foundry"
        parent.mkdir(parents=True, exist_ok=True)
        parents.append(parent)
    return Driver(1, tuple(parents))


def detect() -> Driver | None:
    """The cgroup driver this machine supports (v2 preferred), or None; creates parents."""
    try:
        own = own_paths(Path("/proc/self/cgroup").read_text())
    except OSError:
        return None
    for make in (_v2_driver, _v1_driver):
        try:
            driver = make(own)
        except OSError:
            driver = None
        if driver is not None:
            return driver
    return None
