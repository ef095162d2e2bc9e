"""The full-disk decisions: what counts as a full disk, the store's reserve, and when a
node says its disk is full (tables of numbers, no filesystem)."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from control.diskspace import full_message, is_disk_full, reserve_bytes, upload_refused
from node.diskstate import FAILED_WINDOW, LOW_WATER, full_error, is_full
from node.logship import markers

MIB = 1 << 20


@pytest.mark.parametrize(
    ("total", "configured", "reserve"),
    [
        (64 * MIB, None, int(64 * MIB * 0.05)),  # 5 % of a small disk is under 32 MiB
        (100 << 30, None, 32 * MIB),  # 32 MiB of a big one
        (0, None, 0),
        (64 * MIB, 10 * MIB, 10 * MIB),  # configured wins
        (64 * MIB, -1, 0),
    ],
)
def test_reserve(total: int, configured: int | None, reserve: int) -> None:
    assert reserve_bytes(total, configured) == reserve


@pytest.mark.parametrize(
    ("free", "total", "configured", "refused"),
    [
        (1 * MIB, 64 * MIB, None, True),
        (4 * MIB, 64 * MIB, None, False),
        (31 * MIB, 100 << 30, None, True),
        (33 * MIB, 100 << 30, None, False),
        (0, 64 * MIB, 0, False),  # a reserve of 0 refuses nothing up front
    ],
)
def test_upload_refused(free: int, total: int, configured: int | None, refused: bool) -> None:
    assert upload_refused(free, total, configured) is refused


def test_what_counts_as_a_full_disk() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device", "/h/blobs/x"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
    assert not is_disk_full(ValueError("no"))
    outer = RuntimeError("wrapped")
    outer.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(outer)
    assert is_disk_full(ExceptionGroup("g", [ValueError(), OSError(errno.ENOSPC, "full")]))


def test_full_message_names_where() -> None:
    home = Path("/srv/foundry")
    err = OSError(errno.ENOSPC, "No space left on device", "/srv/foundry/blobs/.incoming-1")
    assert full_message(err, home) == (
        "no space left on the control plane's disk (/srv/foundry/blobs/.incoming-1)"
    )
    assert full_message(OSError(errno.ENOSPC, "x"), home).endswith("(/srv/foundry)")
    store = sqlite3.OperationalError("database or disk is full")
    assert full_message(store, home).endswith("(the store)")


@pytest.mark.parametrize(
    ("free", "failed_at", "free_then", "now", "full"),
    [
        (LOW_WATER - 1, None, 0, 0.0, True),  # very little space: full, failure or not
        (100 * MIB, None, 0, 0.0, False),
        (5 * MIB, 10.0, 5 * MIB, 20.0, True),  # a write failed lately, nothing freed
        (50 * MIB, 10.0, 5 * MIB, 20.0, False),  # space returned: no longer full
        (5 * MIB, 10.0, 5 * MIB, 10.0 + FAILED_WINDOW, False),  # the failure is old news
    ],
)
def test_node_says_full(
    free: int, failed_at: float | None, free_then: int, now: float, full: bool
) -> None:
    assert is_full(free, failed_at, free_then, now) is full


def test_node_finds_the_full_error() -> None:
    err = OSError(errno.ENOSPC, "No space left on device", "/n/builds/b/app")
    outer = ValueError("archive")
    outer.__context__ = err
    assert full_error(outer) is err
    assert full_error(OSError(errno.EIO, "io")) is None


def test_one_marker_line_per_stream() -> None:
    lines = markers({("a", "web.0", None): 3, ("a", "build", "b-1"): 1})
    assert [(x["app"], x["source"], x.get("build")) for x in lines] == [
        ("a", "web.0", None),
        ("a", "build", "b-1"),
    ]
    assert lines[0]["line"].startswith("[foundry] 3 log line(s) dropped")
    assert markers({}) == []
