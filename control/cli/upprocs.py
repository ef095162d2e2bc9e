"""The processes of `foundry up` platforms on this machine, as read from /proc.

Rules kept here:
  * Every role `foundry up` starts carries UP_HOME_ENV (its platform's home) in its
    environment, and UP_PID_ENV (the supervisor's pid); that is how a later `foundry up`
    finds what a crashed one left, and how the CLI points a user at a running platform.
  * `leftovers` is a pure decision over what was read; it never names the caller.
  * The jail marker (an environment name the node agent sets in its jails) is passed in:
    control/ never imports node/.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

UP_PID_ENV = "FOUNDRY_UP_PID"  # given to each role `foundry up` starts: its parent's pid
UP_HOME_ENV = "FOUNDRY_UP_HOME"  # ...and the home, which marks every process of that platform
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcSeen:
    """What `foundry up` reads of one process when it looks for an earlier run's leftovers."""

    pid: int
    up_home: str | None  # its FOUNDRY_UP_HOME
    instance: bool  # it carries a jail marker (an instance, build or task)
    cwd: str | None


def leftovers(seen: list[ProcSeen], home: Path, me: int) -> list[int]:
    """The processes an earlier `foundry up` of `home` left: its roles (and their children),
    and plain-tier jails working under its node's directory. Pure; never this process."""
    node = str(home / "node") + "/"
    return sorted(
        p.pid
        for p in seen
        if p.pid != me
        and (p.up_home == str(home) or (p.instance and (p.cwd or "").startswith(node)))
    )


def processes(marker: str | None = None) -> list[ProcSeen]:
    """Every process this user may read; `instance` is set for those whose environment
    names `marker` (never, without one)."""
    seen = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            cwd: str | None = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        home = next(
            (
                v.split(b"=", 1)[1].decode(errors="replace")
                for v in env
                if v.startswith(UP_HOME_ENV.encode() + b"=")
            ),
            None,
        )
        jailed = marker is not None and any(v.startswith(marker.encode() + b"=") for v in env)
        seen.append(ProcSeen(int(entry), home, jailed, cwd))
    return seen


def running_homes() -> set[str]:
    """Homes of the `foundry up` platforms running on this machine (their roles say so in
    their environment), to point a CLI without settings at one."""
    if not sys.platform.startswith("linux"):
        return set()
    return {p.up_home for p in processes() if p.up_home}


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a live process from a reused pid)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def die_with_up() -> None:
    """In a role that `foundry up` started: get SIGKILL the moment `foundry up` dies, even
    by kill -9 (its jails then die with the node agent, by bubblewrap's die-with-parent)."""
    parent = os.environ.pop(UP_PID_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(parent):  # it died before the signal was armed
        os._exit(1)
