"""RouteSync's retry backoff (pure)."""

from __future__ import annotations

from edge.routesync import next_delay


def test_backoff_doubles_from_half_a_second_and_caps_at_five() -> None:
    delays = []
    delay = None
    for _ in range(7):
        delay = next_delay(delay)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
