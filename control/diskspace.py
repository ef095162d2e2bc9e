"""A full disk on the control plane, told apart from other failures and said plainly.

Rules:
- an OSError with errno ENOSPC or EDQUOT, and SQLite's SQLITE_FULL ("database or disk is
  full"), mean the disk is full wherever in a request they surface; the API answers them
  with 507 and one line naming where (`full_message`), never a 500;
- uploads (source packages, droplets, buildpacks, listings) are refused before they write
  while the home's free space is under a reserve, so the store keeps room to commit the
  state changes that free space (deleting an app, a config change);
- nothing here remembers that the disk was full: every decision re-reads the free space,
  so the control plane resumes by itself once space returns.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from control.errors import InsufficientStorage

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
SQLITE_FULL = 13
DEFAULT_RESERVE = 32 << 20  # bytes; or DEFAULT_RESERVE_SHARE of the filesystem if smaller
DEFAULT_RESERVE_SHARE = 0.05
RECHECK_EVERY = 4 << 20  # bytes an upload may write between two looks at the free space


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) says the disk is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL_ERRNOS:
            return True
        if isinstance(current, BaseExceptionGroup) and any(
            is_disk_full(e) for e in current.exceptions
        ):
            return True
        if isinstance(current, sqlite3.Error) and (
            getattr(current, "sqlite_errorcode", None) == SQLITE_FULL
            or "database or disk is full" in str(current)
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def full_message(exc: BaseException, home: Path) -> str:
    """The one line a user sees for a full disk: the file it hit when the error names one,
    "the store" when SQLite hit it, else the control plane's home."""
    where: object = None
    current: BaseException | None = exc
    while current is not None and where is None:
        if isinstance(current, sqlite3.Error):
            where = "the store"
        elif isinstance(current, OSError):
            where = current.filename
        current = current.__cause__ or current.__context__
    return f"no space left on the control plane's disk ({where or home})"


def reserve_bytes(total: int, configured: int | None) -> int:
    """Bytes kept free for the store: the configured figure, else 32 MiB or 5 % of the
    filesystem, whichever is smaller (a small disk must not be all reserve)."""
    if configured is not None:
        return max(configured, 0)
    return min(DEFAULT_RESERVE, int(total * DEFAULT_RESERVE_SHARE))


def upload_refused(free: int, total: int, configured: int | None) -> bool:
    """Whether an upload must stop: the filesystem's free space is under the reserve."""
    return free < reserve_bytes(total, configured)


@dataclass(frozen=True)
class DiskGuard:
    """Looks at the free space of the filesystem holding `path` (the control plane's home)."""

    path: Path
    reserve: int | None = None  # None: the default share

    def check_room(self) -> None:
        """507 when an upload may not write now (free space is under the reserve)."""
        stat = os.statvfs(self.path)
        free, total = stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize
        if upload_refused(free, total, self.reserve):
            raise InsufficientStorage(
                f"no space left on the control plane's disk ({self.path}): "
                f"{free >> 20} MiB free, {reserve_bytes(total, self.reserve) >> 20} MiB "
                "kept for the store; free some space (delete apps or files) and retry"
            )
