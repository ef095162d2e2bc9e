"""Autoscaling on concurrency: a pure function of recent samples, the clock passed in.

Modelled on Knative's autoscaler: a *stable* window (default 60 s) averages in-flight
requests per instance and sets the count; a *panic* window (default 6 s) reacts to
bursts: when it asks for at least twice the current count, the count jumps there and
does not shrink until the panic is over. Scale-down is gentle (at most halving per
decision). With `min == 0`, an app with no request and no open websocket for `idle`
seconds goes to zero. The result is always clamped to [min, max].
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """Concurrency seen at the edge at time `at`: in-flight requests + open tunnels."""

    at: float
    in_flight: float
    tunnels: int = 0


@dataclass(frozen=True)
class Settings:
    min: int = 1
    max: int = 10
    concurrency: float = 20.0  # target in-flight requests per instance
    idle: float = 60.0  # seconds without traffic before scaling to zero
    stable_window: float = 60.0
    panic_window: float = 6.0
    panic_threshold: float = 2.0


def _average(samples: list[Sample], since: float) -> float:
    window = [s.in_flight + s.tunnels for s in samples if s.at > since]
    return sum(window) / len(window) if window else 0.0


def desired_instances(
    samples: list[Sample],
    current: int,
    settings: Settings,
    now: float,
    first_seen: float | None = None,
) -> int:
    """How many instances the app should have now. `first_seen` is when the app could
    first have had traffic (its creation, or the autoscaler's own start): an app is
    never scaled to zero for idleness it has not been watched for."""
    recent = [s for s in samples if s.at > now - settings.stable_window]
    busy = [s for s in samples if s.in_flight > 0 or s.tunnels > 0]
    last_busy = max(
        (s.at for s in busy), default=first_seen if first_seen is not None else now - settings.idle
    )
    if settings.min == 0 and now - last_busy >= settings.idle:
        return 0
    stable = math.ceil(_average(recent, now - settings.stable_window) / settings.concurrency)
    panic = math.ceil(_average(recent, now - settings.panic_window) / settings.concurrency)
    if current > 0 and panic >= settings.panic_threshold * current:
        wanted = max(panic, current)
    else:
        wanted = max(stable, math.ceil(current / 2)) if stable < current else stable
    if any(s.tunnels for s in recent) or (wanted == 0 and current > 0):
        wanted = max(wanted, 1)  # within the idle time (or with a tunnel) keep one up
    return max(settings.min, min(settings.max, wanted))
