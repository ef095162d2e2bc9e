"""Finding every process that belongs to an instance, to signal them all.

Without a cgroup (the plain tier) an instance's processes are found two ways, both
from /proc: descendants of its first process, and any process whose environment
carries the instance's marker variable (which survives setsid and double forks).
With a cgroup, the jail uses the cgroup instead (see node/jail.py). Zombies are
never counted: they are already dead and only wait for their parent.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

MARKER = "FOUNDRY_INSTANCE_ID"


def _parent(pid: int) -> int | None:
    """The parent of a live process (None for zombies and vanished pids)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    state, ppid = stat.rpartition(")")[2].split()[:2]
    return None if state in ("Z", "X") else int(ppid)


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def instance_pids(root: int | None, instance_id: str) -> set[int]:
    """Pids of `root`, its descendants and every process marked with `instance_id`."""
    marker = f"{MARKER}={instance_id}".encode()
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    parents = {pid: ppid for pid in pids if (ppid := _parent(pid)) is not None}
    found = {pid for pid in parents if pid != os.getpid() and _has_marker(pid, marker)}
    if root is not None and root in parents:
        found.add(root)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def signal_instance(root: int | None, instance_id: str, sig: signal.Signals) -> int:
    """Send `sig` to every process of the instance; returns how many were signalled."""
    count = 0
    for pid in instance_pids(root, instance_id):
        try:
            os.kill(pid, sig)
            count += 1
        except ProcessLookupError:
            pass
    return count
