"""The loop side of autoscaling: recent concurrency per app, wakes, and applying decisions.

Edges report each app's in-flight requests and open tunnels a few times a second
(`record`); samples live in memory only (they are stale after a minute anyway). An
edge holding a request for an app at zero calls `wake`, which is idempotent: many
concurrent first requests make one wake. `autoscale_once` asks the pure autoscaler
for each autoscaled app and writes changed counts to the store; the reconciler does
the rest. A cold start's duration (wake to first RUNNING instance) becomes an event
and the app's `last_cold_start`.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from dataclasses import dataclass, field

from control.autoscaler import Sample, Settings, desired_instances
from control.model import InstanceState
from control.rows import Autoscale
from control.store import Store

log = logging.getLogger("foundry.control")
KEEP_SECONDS = 120.0


@dataclass
class Scaling:
    store: Store
    started: float = 0.0
    samples: dict[str, deque[Sample]] = field(default_factory=lambda: defaultdict(deque))
    waking: dict[str, float] = field(default_factory=dict)
    latest: dict[str, dict[str, Sample]] = field(default_factory=lambda: defaultdict(dict))

    def __post_init__(self) -> None:
        self.started = self.store.clock()

    def record(self, app: str, in_flight: float, tunnels: int, reporter: str = "") -> None:
        """One reporter's figures; the series holds the sum over every reporter heard from
        in the last two seconds (each edge worker reports for itself)."""
        now = self.store.clock()
        mine = self.latest[app]
        mine[reporter] = Sample(now, in_flight, tunnels)
        for who, sample in list(mine.items()):
            if sample.at < now - 2.0:
                del mine[who]
        series = self.samples[app]
        series.append(
            Sample(
                now, sum(s.in_flight for s in mine.values()), sum(s.tunnels for s in mine.values())
            )
        )
        while series and series[0].at < now - KEEP_SECONDS:
            series.popleft()

    def wake(self, app: str, actor: str | None) -> bool:
        """Bring an app at zero to one instance; False when it is not scaled to zero."""
        row = self.store.get_app(app)
        settings = settings_of(row["autoscale"])
        if settings is None or settings.min > 0 or row["scale"].get("web", 1) > 0:
            return app in self.waking
        if app not in self.waking:
            self.waking[app] = self.store.clock()
            self.record(app, 1, 0)  # the held request is traffic
            self.store.update_app(app, scale={**row["scale"], "web": 1})
            self.store.add_event(app, "wake", "a request arrived while at zero", actor)
        return True

    def autoscale_once(self) -> None:
        now = self.store.clock()
        for row in self.store.list_apps():
            settings = settings_of(row["autoscale"])
            if settings is None:
                continue
            current = int(row["scale"].get("web", 1))
            first_seen = max(self.started, row["updated_at"] if current == 0 else 0)
            wanted = desired_instances(
                list(self.samples.get(row["name"], ())),
                current,
                settings,
                now,
                first_seen=first_seen,
            )
            if row["name"] in self.waking:
                wanted = max(wanted, 1)
            if wanted != current:
                self.store.update_app(row["name"], scale={**row["scale"], "web": wanted})
                what = (
                    "scaled to zero after idling"
                    if wanted == 0
                    else f"autoscaled web {current} -> {wanted}"
                )
                self.store.add_event(row["name"], "autoscale", what)
        self._finish_wakes(now)

    def _finish_wakes(self, now: float) -> None:
        for app, began in list(self.waking.items()):
            running = [
                r
                for r in self.store.instance_rows(app=app)
                if r["process"] == "web" and r["state"] == InstanceState.RUNNING
            ]
            if not self.store.app_exists(app) or now - began > 300:
                del self.waking[app]
            elif running:
                took = now - began
                del self.waking[app]
                self.store.update_app(app, last_cold_start=round(took, 3))
                self.store.add_event(app, "cold-start", f"woke in {took * 1000:.0f} ms")


def settings_of(data: Autoscale | None) -> Settings | None:
    """The autoscaler's settings from an app's stored ones (None: not autoscaled)."""
    if not data:
        return None
    window = float(data.get("window", 60.0))
    return Settings(
        min=data["min"],
        max=data["max"],
        concurrency=data["concurrency"],
        idle=data["idle"],
        stable_window=window,
        panic_window=window / 10,
    )
