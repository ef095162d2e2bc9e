"""The lane's table of modes: the moves it lists are taken, any other is refused."""

from __future__ import annotations

import pytest

from edge.lanestate import MODE_MOVES, ON_EXPIRY, PHASES_IN, LaneStateError, Mode, Phase, next_mode


@pytest.mark.parametrize(
    ("current", "wanted"),
    [(current, wanted) for current in Mode for wanted in Mode if wanted in MODE_MOVES[current]],
)
def test_a_listed_move_is_taken(current: Mode, wanted: Mode) -> None:
    assert next_mode(current, wanted) is wanted


@pytest.mark.parametrize(
    ("current", "wanted"),
    [
        (Mode.FAST_EXCHANGE, Mode.GENERAL_READ),  # a fast exchange ends in the lane's own reader
        (Mode.GENERAL_READ, Mode.FAST_EXCHANGE),  # bytes the parser holds never go back
        (Mode.FAST_READ, Mode.GENERAL_EXCHANGE),  # the general path runs only on a parsed head
        (Mode.CLOSED, Mode.FAST_READ),
        (Mode.FAST_READ, Mode.FAST_READ),
    ],
)
def test_any_other_move_is_refused(current: Mode, wanted: Mode) -> None:
    with pytest.raises(LaneStateError):
        next_mode(current, wanted)


def test_every_mode_and_phase_is_in_the_tables() -> None:
    assert set(MODE_MOVES) == set(PHASES_IN) == set(Mode)
    assert set(ON_EXPIRY) == set(Phase)
    assert all(Mode.CLOSED in MODE_MOVES[mode] for mode in Mode if mode is not Mode.CLOSED)
