"""Autoscaling through the API: settings, edge metrics, wakes, scale to zero, cold starts."""

from __future__ import annotations

from typing import Any

from control.model import InstanceState
from control.scaling import Scaling
from tests.component.conftest import Control


def scaling(control: Control) -> Scaling:
    app: Any = control.http._transport.app  # type: ignore[attr-defined]
    result: Scaling = app.state.control.scaling
    return result


async def autoscaled(control: Control, **settings: object) -> None:
    control.store.create_app("lazy")
    r = await control.http.post("/v1/apps/lazy/scale", json=settings)
    assert r.status_code == 200, r.text


async def test_settings_are_validated_and_shown(control: Control) -> None:
    await autoscaled(control, min=0, max=4, concurrency=5, idle="30s")
    view = (await control.http.get("/v1/apps/lazy")).json()
    assert view["autoscale"] == {"min": 0, "max": 4, "concurrency": 5, "idle": 30.0, "window": 60.0}
    for bad, status in (
        ({"min": 5, "max": 2}, 400),
        ({"min": 0, "idle": "soon"}, 422),
        ({"process": "worker", "min": 0}, 400),
    ):
        r = await control.http.post("/v1/apps/lazy/scale", json=bad)
        assert r.status_code == status, r.text
    routes = (await control.http.get("/v1/routes")).json()["routes"]
    assert next(r for r in routes if r["app"] == "lazy")["wakeable"] is True


async def test_idle_app_scales_to_zero_and_one_wake_brings_it_back(control: Control) -> None:
    await autoscaled(control, min=0, max=4, concurrency=5, idle=30)
    s = scaling(control)
    control.clock.now += 31
    s.autoscale_once()
    assert control.store.get_app("lazy")["scale"]["web"] == 0
    _, edge = control.store.create_token("edge")
    async with control.client(edge) as c:
        answers = [(await c.post("/v1/apps/lazy/wake")).json() for _ in range(5)]
    assert all(a["waking"] for a in answers)
    assert control.store.get_app("lazy")["scale"]["web"] == 1
    events = [e["kind"] for e in control.store.list_events("lazy")]
    assert events.count("wake") == 1  # five held requests, one wake


async def test_concurrency_reports_scale_out(control: Control) -> None:
    await autoscaled(control, min=1, max=8, concurrency=10, idle=60)
    s = scaling(control)
    _, edge = control.store.create_token("edge")
    async with control.client(edge) as c:
        for _ in range(6):
            control.clock.now += 1
            r = await c.post("/v1/metrics", json={"apps": {"lazy": {"in_flight": 45}}})
            assert r.status_code == 200
    s.autoscale_once()
    assert control.store.get_app("lazy")["scale"]["web"] == 5


async def test_cold_start_is_measured_when_the_first_instance_runs(control: Control) -> None:
    await autoscaled(control, min=0, max=2, concurrency=5, idle=30)
    s = scaling(control)
    control.clock.now += 31
    s.autoscale_once()
    s.wake("lazy", None)
    control.clock.now += 0.4
    nid = control.store.add_node("n", "127.0.0.1", 1024, "plain")
    control.store.add_instance(
        app="lazy",
        process="web",
        index=0,
        release=1,
        node=nid,
        memory_mb=256,
        restarts=0,
        work_seq=1,
        iid="lazy-web-0-x",
    )
    control.store.update_instance("lazy-web-0-x", state=InstanceState.RUNNING)
    s.autoscale_once()
    view = (await control.http.get("/v1/apps/lazy")).json()
    assert view["last_cold_start"] == 0.4
    assert any(e["kind"] == "cold-start" for e in control.store.list_events("lazy"))


async def test_reports_of_several_edge_workers_add_up(control: Control) -> None:
    await autoscaled(control, min=1, max=8, concurrency=10, idle=60)
    _, edge = control.store.create_token("edge")
    async with control.client(edge) as c:
        for _ in range(6):
            control.clock.now += 1
            for worker in ("edge-1", "edge-2"):
                await c.post(
                    "/v1/metrics", json={"reporter": worker, "apps": {"lazy": {"in_flight": 20}}}
                )
    scaling(control).autoscale_once()
    assert control.store.get_app("lazy")["scale"]["web"] == 4  # 40 in flight, not 20
