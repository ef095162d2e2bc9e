"""Per-app concurrency, measured by the edge and reported to the control plane's autoscaler.

`Concurrency` is pure bookkeeping with the clock passed in: the proxy calls
`started`/`finished` around every request routed to an app (held requests
included: a request waiting for a wake is demand) and `tunnel_opened`/`tunnel_closed`
around websocket tunnels (a tunnel is not an in-flight request). `snapshot(now)`
turns an interval into samples; `report` posts them.

Rules kept here:
  * `in_flight` is the time-weighted average of requests in flight over the
    interval (request-seconds / seconds), so short bursts between two snapshots
    still count; `tunnels` is the number open at the snapshot. The request-seconds
    are kept as the sum of (end - start) over requests, each end and start added
    as it happens (`area`), with the ones still in flight closed at the snapshot:
    two additions per request on the hot path, no multiplication.
  * An app is reported for every interval with traffic or open tunnels, then once
    more with zeros after activity stops, then no more until it has traffic again.
  * Reporting never blocks a request: samples are computed in the reporting task;
    a failed post is logged and its samples dropped (they are stale by the next one).
  * Each worker process reports its own numbers; the control plane records each
    sample as it comes (it does not sum workers).
"""

from __future__ import annotations

import logging
import os
import socket

import httpx
import trio

log = logging.getLogger(__name__)

Samples = dict[str, dict[str, float | int]]


# Who is reporting: the control plane adds up the latest figures of every worker of
# every edge, so each names itself.
def reporter() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"  # per worker: read after the fork


class _Load:
    __slots__ = ("active", "area", "in_flight", "reported", "tunnels")

    def __init__(self) -> None:
        self.in_flight = 0
        # Request-seconds this interval, less `in_flight` * now: each start subtracts
        # its time and each end adds its time (the snapshot adds now per request left).
        self.area = 0.0
        self.tunnels = 0
        self.active = False  # anything started or ended in this interval
        self.reported = False  # the last snapshot included this app


class Concurrency:
    """In-flight requests and open tunnels per app for one worker."""

    def __init__(self, now: float) -> None:
        self._apps: dict[str, _Load] = {}
        self._interval_start = now

    def started(self, app: str, now: float) -> None:
        """A request for `app` began (or was held)."""
        load = self._apps.get(app)
        if load is None:
            load = self._apps[app] = _Load()
        load.area -= now
        load.in_flight += 1
        load.active = True

    def finished(self, app: str, now: float) -> None:
        """A request for `app` ended (or became a tunnel)."""
        load = self._apps.get(app)
        if load is None:
            return
        load.area += now
        load.in_flight -= 1
        load.active = True

    def tunnel_opened(self, app: str) -> None:
        """A websocket tunnel to `app` opened."""
        load = self._apps.get(app)
        if load is None:
            load = self._apps[app] = _Load()
        load.tunnels += 1
        load.active = True

    def tunnel_closed(self, app: str) -> None:
        """A websocket tunnel to `app` closed."""
        load = self._apps.get(app)
        if load is not None:
            load.tunnels -= 1

    def in_flight(self, app: str) -> int:
        """Requests for `app` in flight now."""
        load = self._apps.get(app)
        return load.in_flight if load is not None else 0

    def snapshot(self, now: float) -> Samples:
        """Samples for the interval that ends at `now`; starts the next interval."""
        seconds = max(now - self._interval_start, 1e-9)
        self._interval_start = now
        samples: Samples = {}
        for app, load in list(self._apps.items()):
            area = load.area + load.in_flight * now
            load.area = -load.in_flight * now
            busy = load.active or load.in_flight > 0 or load.tunnels > 0
            load.active = False
            if busy:
                samples[app] = {"in_flight": round(area / seconds, 3), "tunnels": load.tunnels}
                load.reported = True
            else:
                if load.reported:  # the one zero sample after activity stopped
                    samples[app] = {"in_flight": 0.0, "tunnels": 0}
                del self._apps[app]
        return samples


async def report(
    concurrency: Concurrency,
    client: httpx.AsyncClient,
    control_url: str,
    token: str | None,
    *,
    interval: float = 0.5,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Post `concurrency`'s samples to `POST {control_url}/v1/metrics` every `interval`."""
    url = control_url.rstrip("/") + "/v1/metrics"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    failing = False
    task_status.started()
    while True:
        await trio.sleep(interval)
        samples = concurrency.snapshot(trio.current_time())
        if not samples:
            continue
        try:
            response = await client.post(
                url,
                json={"apps": samples, "reporter": reporter()},
                headers=headers,
                timeout=max(2.0, interval * 4),
            )
            response.raise_for_status()
        except httpx.HTTPError as error:
            # Logged when reporting starts failing, not twice a second while it does.
            level = logging.DEBUG if failing else logging.WARNING
            log.log(level, "edge-metrics-failed apps=%d error=%r", len(samples), error)
            failing = True
            continue
        if failing:
            log.info("edge-metrics-recovered apps=%d", len(samples))
        failing = False
