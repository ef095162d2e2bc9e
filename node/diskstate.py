"""The node's own disk, as its heartbeat reports it and its errors name it.

Rules:
- every heartbeat carries the free bytes of the node's home, read afresh;
- the node says its disk is full while the free space is under LOW_WATER, or for
  FAILED_WINDOW seconds after one of its own writes failed with ENOSPC/EDQUOT, and only
  while the free space has not grown since that failure: nothing stays "full" once
  space returns (no flag is kept past that);
- a build that fails on a full disk says `no space left on node N's disk (path)`.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
LOW_WATER = 1 << 20  # bytes; under this a node cannot unpack even a tiny droplet
FAILED_WINDOW = 60.0  # seconds a failed write keeps the node reported full


def full_error(exc: BaseException) -> OSError | None:
    """The OSError saying the disk is full that `exc` is, or was raised from."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def is_full(free: int, failed_at: float | None, free_then: int, now: float) -> bool:
    """Whether to report the disk full: little free space, or a recent failed write
    with no space freed since."""
    if free < LOW_WATER:
        return True
    return failed_at is not None and now - failed_at < FAILED_WINDOW and free <= free_then


@dataclass
class DiskState:
    """Free space of the node's home, and its last failed write."""

    home: Path
    node: str = "node"
    clock: Callable[[], float] = time.monotonic
    failed_at: float | None = None
    free_then: int = 0

    def free(self) -> int:
        stat = os.statvfs(self.home)
        return stat.f_bavail * stat.f_frsize

    def failed(self, exc: OSError) -> str:
        """Remember a write that failed for want of space; the line a user sees for it."""
        self.failed_at, self.free_then = self.clock(), self.free()
        return f"no space left on node {self.node}'s disk ({exc.filename or self.home})"

    def report(self) -> tuple[int, bool]:
        """(free bytes, full?) for a heartbeat, read now."""
        free = self.free()
        return free, is_full(free, self.failed_at, self.free_then, self.clock())
