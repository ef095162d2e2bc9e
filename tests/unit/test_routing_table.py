"""The routing table the control plane serves to edges."""

from __future__ import annotations

from control.model import AppSpec, InstanceState
from control.routing import routing_table
from control.rows import InstanceRow


def row(
    iid: str,
    app: str = "web1",
    state: InstanceState = InstanceState.RUNNING,
    process: str = "web",
    stopping: int = 0,
    port: int | None = 5000,
) -> InstanceRow:
    return InstanceRow(
        id=iid,
        app=app,
        process=process,
        idx=0,
        release=1,
        node="n1",
        state=state,
        stopping=stopping,
        restarts=0,
        since=0.0,
        started_at=None,
        port=port,
        address="10.0.0.5",
        reason=None,
        memory_mb=256,
        work_seq=1,
        generation=0,
    )


APPS = [
    AppSpec("web1", True, 1, {"web": "x"}, {}),
    AppSpec("worker", True, 1, {"w": "x"}, {}),
    AppSpec("fresh", True, 0, {}, {}),
]


def test_only_running_unstopped_web_instances_are_backends() -> None:
    rows = [
        row("a"),
        row("b", state=InstanceState.STARTING),
        row("c", stopping=1),
        row("d", process="worker"),
        row("e", port=None),
    ]
    table = routing_table(APPS, rows, "example.test", None)
    web = next(r for r in table["routes"] if r["app"] == "web1")
    assert web["host"] == "web1.example.test"
    assert web["backends"] == [{"address": "10.0.0.5:5000", "instance": "a"}]


def test_apps_without_web_are_not_routed_but_unbuilt_apps_are_known() -> None:
    hosts = {r["host"] for r in routing_table(APPS, [], "d", "127.0.0.1:7070")["routes"]}
    assert hosts == {"api.d", "web1.d", "fresh.d"}


def test_etag_changes_exactly_when_the_table_does() -> None:
    one = routing_table(APPS, [row("a")], "d", None)
    assert one["etag"] == routing_table(APPS, [row("a")], "d", None)["etag"]
    assert one["etag"] != routing_table(APPS, [row("a"), row("b")], "d", None)["etag"]
