"""The autoscaler as tables over windows of concurrency samples, clock passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.autoscaler import Sample, Settings, desired_instances

NOW = 10_000.0
S = Settings(min=0, max=10, concurrency=10, idle=60)


def steady(value: float, seconds: int = 60, start: int = 0) -> list[Sample]:
    """One sample a second of `value`, the newest `start` seconds ago."""
    return [Sample(NOW - start - i, value) for i in range(seconds)]


@pytest.mark.parametrize(
    ("samples", "current", "expected"),
    [
        (steady(25), 1, 3),  # steady 25 in flight, target 10 -> 3
        (steady(10), 1, 1),
        (steady(10), 4, 2),  # decay: at most halve per decision
        (steady(10), 2, 1),
        ([*steady(0, 54, start=6), *steady(80, 6)], 2, 8),  # a burst: panic, jump at once
        ([*steady(0, 54, start=6), *steady(30, 6)], 2, 1),  # not twice the current: no panic
        ([*steady(10, 60)], 0, 1),  # traffic at zero instances wakes one
        (steady(500), 3, 10),  # max bound
    ],
)
def test_table(samples: list[Sample], current: int, expected: int) -> None:
    assert desired_instances(samples, current, S, NOW, first_seen=0) == expected


def test_idle_for_the_idle_time_goes_to_zero() -> None:
    samples = [Sample(NOW - 61, 3), *steady(0, 60)]
    assert desired_instances(samples, 1, S, NOW, first_seen=0) == 0
    samples = [Sample(NOW - 59, 3), *steady(0, 58)]
    assert desired_instances(samples, 1, S, NOW, first_seen=0) == 1


def test_an_open_websocket_prevents_scale_to_zero() -> None:
    samples = [Sample(NOW - i, 0, tunnels=1) for i in range(120)]
    assert desired_instances(samples, 1, S, NOW, first_seen=0) == 1


def test_min_bound_keeps_instances_even_when_idle() -> None:
    assert desired_instances([], 3, Settings(min=2, max=5), NOW, first_seen=0) == 2


def test_an_app_just_watched_is_not_scaled_to_zero_yet() -> None:
    assert desired_instances([], 1, S, NOW, first_seen=NOW - 5) == 1
    assert desired_instances([], 1, S, NOW, first_seen=NOW - 60) == 0


def test_after_a_burst_the_count_comes_down_slowly() -> None:
    after = [*steady(0, 30), *steady(60, 30, start=30)]  # busy until 30 s ago
    assert desired_instances(after, 6, S, NOW, first_seen=0) == 3  # halves, not 1
    assert desired_instances(after, 3, S, NOW, first_seen=0) == 3


@given(
    st.lists(st.tuples(st.floats(0, 120), st.floats(0, 500), st.integers(0, 3)), max_size=40),
    st.integers(0, 10),
    st.integers(0, 3),
    st.integers(3, 10),
)
def test_always_within_bounds(
    raw: list[tuple[float, float, int]], current: int, lo: int, hi: int
) -> None:
    samples = [Sample(NOW - age, v, t) for age, v, t in raw]
    settings = Settings(min=lo, max=hi, concurrency=10, idle=60)
    assert lo <= desired_instances(samples, current, settings, NOW, first_seen=0) <= hi


def test_an_app_at_zero_stays_at_zero_until_traffic_comes() -> None:
    """Just scaled to zero (so not idle for long): no traffic must not bring it back."""
    assert desired_instances([], 0, S, NOW, first_seen=NOW - 1) == 0
    assert desired_instances(steady(3, 2), 0, S, NOW, first_seen=NOW - 1) == 1
