"""Which processes an earlier `foundry up` of a home left behind: a pure decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.cli.upprocs import ProcSeen, leftovers

HOME = Path("/srv/foundry")


@pytest.mark.parametrize(
    ("seen", "expected"),
    [
        (ProcSeen(10, str(HOME), False, "/"), [10]),  # a role of this home
        (ProcSeen(11, "/srv/other", False, "/"), []),  # a role of another home
        (ProcSeen(12, None, True, f"{HOME}/node/instances/a/app"), [12]),  # a plain-tier jail
        (ProcSeen(13, None, True, "/srv/other/node/instances/a/app"), []),
        (ProcSeen(14, None, False, f"{HOME}/node/instances/a/app"), []),  # a shell cd'd there
        (ProcSeen(15, None, True, f"{HOME}/nodex/app"), []),  # a prefix is not a parent
        (ProcSeen(16, None, True, "/app"), []),  # a jail: its cgroup's job
        (ProcSeen(99, str(HOME), False, "/"), []),  # never the caller itself
    ],
)
def test_leftovers(seen: ProcSeen, expected: list[int]) -> None:
    assert leftovers([seen], HOME, me=99) == expected
