"""Per-app concurrency samples as tables: (what happened, when) in, samples out."""

from __future__ import annotations

import pytest

from edge.metrics import Concurrency, Samples

# Each step: (time, action, app); action is start / end / open / close / snap.
# A snap's expected samples follow it.
CASES: dict[str, list[tuple[float, str, str, Samples | None]]] = {
    "nothing happened: nothing to report": [
        (1.0, "snap", "", {}),
    ],
    "one request over half the interval averages 0.5": [
        (0.0, "start", "a", None),
        (0.5, "end", "a", None),
        (1.0, "snap", "", {"a": {"in_flight": 0.5, "tunnels": 0}}),
        (2.0, "snap", "", {"a": {"in_flight": 0.0, "tunnels": 0}}),  # the final zero
        (3.0, "snap", "", {}),  # then silence
    ],
    "a request spanning snapshots counts in both": [
        (0.5, "start", "a", None),
        (1.0, "snap", "", {"a": {"in_flight": 0.5, "tunnels": 0}}),
        (2.0, "snap", "", {"a": {"in_flight": 1.0, "tunnels": 0}}),
        (2.5, "end", "a", None),
        (3.0, "snap", "", {"a": {"in_flight": 0.5, "tunnels": 0}}),
    ],
    "two apps are reported apart": [
        (0.0, "start", "a", None),
        (0.0, "start", "a", None),
        (0.0, "start", "b", None),
        (
            1.0,
            "snap",
            "",
            {"a": {"in_flight": 2.0, "tunnels": 0}, "b": {"in_flight": 1.0, "tunnels": 0}},
        ),
    ],
    "an open tunnel keeps an app reported": [
        (0.0, "open", "a", None),
        (1.0, "snap", "", {"a": {"in_flight": 0.0, "tunnels": 1}}),
        (2.0, "snap", "", {"a": {"in_flight": 0.0, "tunnels": 1}}),
        (2.5, "close", "a", None),
        (3.0, "snap", "", {"a": {"in_flight": 0.0, "tunnels": 0}}),
        (4.0, "snap", "", {}),
    ],
}


@pytest.mark.parametrize("steps", CASES.values(), ids=CASES.keys())
def test_samples(steps: list[tuple[float, str, str, Samples | None]]) -> None:
    concurrency = Concurrency(0.0)
    for now, action, app, expected in steps:
        if action == "start":
            concurrency.started(app, now)
        elif action == "end":
            concurrency.finished(app, now)
        elif action == "open":
            concurrency.tunnel_opened(app)
        elif action == "close":
            concurrency.tunnel_closed(app)
        else:
            assert concurrency.snapshot(now) == expected, now


def test_a_clock_far_from_zero_loses_nothing() -> None:
    # trio's clock starts at a random offset of up to days; starts and ends are summed
    # as times, so the averages must not drift with it.
    start = 200_000.123
    concurrency = Concurrency(start)
    for i in range(1000):
        concurrency.started("a", start + i * 0.001)
        concurrency.finished("a", start + i * 0.001 + 0.0005)
    concurrency.started("b", start + 0.25)
    assert concurrency.snapshot(start + 1.0) == {
        "a": {"in_flight": 0.5, "tunnels": 0},
        "b": {"in_flight": 0.75, "tunnels": 0},
    }
    assert concurrency.snapshot(start + 2.0) == {
        "a": {"in_flight": 0.0, "tunnels": 0},
        "b": {"in_flight": 1.0, "tunnels": 0},
    }
