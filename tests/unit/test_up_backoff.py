"""`foundry up` restarts a role that exits for as long as it runs, backing off: pure rules."""

from __future__ import annotations

import signal

import pytest

from control.cli.supervisor import (
    MAX_DELAY,
    STABLE_AFTER,
    exit_status,
    exits_in_a_row,
    restart_delay,
)


def test_the_first_restart_is_at_once_then_the_delay_doubles_up_to_the_cap() -> None:
    delays = [restart_delay(n) for n in range(1, 11)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, MAX_DELAY, MAX_DELAY, MAX_DELAY]
    assert restart_delay(10_000) == MAX_DELAY  # never gives up, never overflows


@pytest.mark.parametrize(
    ("before", "ran", "after"),
    [(0, 1.0, 1), (4, 1.0, 5), (4, STABLE_AFTER - 0.1, 5), (9, STABLE_AFTER, 1)],
)
def test_a_role_that_stayed_up_starts_the_count_again(before: int, ran: float, after: int) -> None:
    assert exits_in_a_row(before, ran) == after


def test_exit_status_says_signal_or_code() -> None:
    assert exit_status(-signal.SIGKILL) == "killed by SIGKILL"
    assert exit_status(3) == "exit code 3"
    assert exit_status(-200) == "killed by signal 200"
