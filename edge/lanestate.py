"""A lane's states, written down as tables: which reader holds the client's bytes, and
what each bounded wait's deadline passing means.

A lane (`edge.fastpath.Lane`) runs one client connection. Two facts describe it:

`Mode`, who is serving the connection now. Its moves are `MODE_MOVES`, and a lane
moves only through `next_mode`, which refuses any other move loudly (`LaneStateError`):

    FAST_READ ──(fast reader takes the head)──> FAST_EXCHANGE ──(kept alive)──> FAST_READ
        │  (declined: not plain, no backend, a bare LF, too big, cut short)
        v
    GENERAL_READ ──(a whole head)──> GENERAL_EXCHANGE ──(parser at rest)──> FAST_READ
         ^                                  │
         └──────(parser holds more bytes)───┘
    Any mode may move to CLOSED; CLOSED moves nowhere.

`Phase`, the bounded wait a lane is in, which the edge's watchdog ends when its
deadline passes (a lane's waits carry no trio deadline of their own). A wait always
starts from OTHER and returns to it. What an ended wait means is `ON_EXPIRY[phase]`,
and nothing else decides it. The phases each mode may wait in are `PHASES_IN`.

The lane moves twice per request, so a move is one lookup in a table derived from
`MODE_MOVES` (`ENTER[wanted][current]`), as h11 moves by indexing its transition
table; a move the table lacks raises there. The members are also module constants
(`FAST_READ`, ..., `OTHER`, ...): on Python 3.11 reading `Mode.FAST_READ` goes
through the enum metaclass's `__getattr__` hook and costs ~0.15 us, a global ~0.01 us.
"""

from __future__ import annotations

import enum
from typing import Protocol


class Mode(enum.IntEnum):
    """Who is serving a client connection.

    (An IntEnum: a lane moves twice per request, and an int's hash is C-level where a
    plain Enum member's is a Python call.)"""

    FAST_READ = 1  # the lane holds the client's bytes and reads the next head
    FAST_EXCHANGE = 2  # the lane proxies a request it read itself
    GENERAL_READ = 3  # the general parser holds the bytes, reading a head
    GENERAL_EXCHANGE = 4  # `edge.exchange.Exchange` runs a request
    CLOSED = 5  # the connection is done


MODE_MOVES: dict[Mode, frozenset[Mode]] = {
    Mode.FAST_READ: frozenset({Mode.FAST_EXCHANGE, Mode.GENERAL_READ, Mode.CLOSED}),
    Mode.FAST_EXCHANGE: frozenset({Mode.FAST_READ, Mode.CLOSED}),
    Mode.GENERAL_READ: frozenset({Mode.GENERAL_EXCHANGE, Mode.CLOSED}),
    Mode.GENERAL_EXCHANGE: frozenset({Mode.FAST_READ, Mode.GENERAL_READ, Mode.CLOSED}),
    Mode.CLOSED: frozenset(),
}


class LaneStateError(RuntimeError):
    """A lane tried a move its table does not allow: a bug in the edge, never the client's."""


class Moves(dict[Mode, Mode]):
    """The moves into one mode: current mode -> that mode; any other current mode raises
    LaneStateError (a plain dict lookup while the move is allowed)."""

    def __init__(self, wanted: Mode) -> None:
        super().__init__((current, wanted) for current in Mode if wanted in MODE_MOVES[current])
        self.wanted = wanted

    def __missing__(self, current: Mode) -> Mode:
        raise LaneStateError(f"a lane cannot go from {current.name} to {self.wanted.name}")


ENTER: dict[Mode, Moves] = {wanted: Moves(wanted) for wanted in Mode}
TO_FAST_READ = ENTER[Mode.FAST_READ]  # the two moves of every fast request
TO_FAST_EXCHANGE = ENTER[Mode.FAST_EXCHANGE]


def next_mode(current: Mode, wanted: Mode) -> Mode:
    """`wanted`, if the table lets a lane in `current` move there; else LaneStateError."""
    return ENTER[wanted][current]


FAST_READ = Mode.FAST_READ
FAST_EXCHANGE = Mode.FAST_EXCHANGE
GENERAL_READ = Mode.GENERAL_READ
GENERAL_EXCHANGE = Mode.GENERAL_EXCHANGE
CLOSED = Mode.CLOSED


class Phase(enum.Enum):
    """Which bounded wait of its own a lane is in."""

    IDLE = "idle"  # between requests
    HEAD = "head"  # a request head is arriving
    OTHER = "other"  # no bounded wait of ours
    BACKEND = "backend"  # waiting for a response head
    BODY = "body"  # relaying a response body


IDLE = Phase.IDLE
HEAD = Phase.HEAD
OTHER = Phase.OTHER
BACKEND = Phase.BACKEND
BODY = Phase.BODY


class Expiry(enum.Enum):
    """What the watchdog ending a wait means for the connection."""

    CLOSE = "close"  # close silently: keep-alive ran out, or the edge drains
    REFUSE_408 = "refuse-408"  # answer 408 and close
    ANSWER_504 = "answer-504"  # answer 504 the general path's way; the connection may go on
    ABORT = "abort"  # the status line is out: closing is the only way left to say "broken"
    NEVER = "never"  # not a bounded wait


ON_EXPIRY: dict[Phase, Expiry] = {
    Phase.IDLE: Expiry.CLOSE,
    Phase.HEAD: Expiry.REFUSE_408,
    Phase.BACKEND: Expiry.ANSWER_504,
    Phase.BODY: Expiry.ABORT,
    Phase.OTHER: Expiry.NEVER,
}

PHASES_IN: dict[Mode, frozenset[Phase]] = {
    Mode.FAST_READ: frozenset({Phase.IDLE, Phase.HEAD, Phase.OTHER}),
    Mode.GENERAL_READ: frozenset({Phase.IDLE, Phase.HEAD, Phase.OTHER}),
    Mode.FAST_EXCHANGE: frozenset({Phase.BACKEND, Phase.BODY, Phase.OTHER}),
    # `Exchange` bounds its own waits with a trio scope; the lane waits on nothing.
    Mode.GENERAL_EXCHANGE: frozenset({Phase.OTHER}),
    Mode.CLOSED: frozenset({Phase.OTHER}),
}


class Bounded(Protocol):
    """What the watchdog and a drain see of a lane."""

    phase: Phase
    deadline: float

    def expire(self) -> None:
        """End the bounded wait in progress."""
