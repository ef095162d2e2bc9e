"""`DELETE /v1/nodes/{node}` through the API: who may remove which node, and a removed
node cannot come back without a join token."""

from __future__ import annotations

from typing import Any

from control.converge import converge_once
from control.reconciler import Policy
from tests.component.conftest import Control

BEAT = {"address": "127.0.0.1", "memory_mb": 1024, "instances": [], "boot": "b1"}


async def joined(control: Control, name: str) -> tuple[str, str]:
    r = await control.http.post("/v1/nodes/join", json={"name": name, "memory_mb": 1024})
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["token"]


async def beat(control: Control, nid: str, token: str, **report: Any) -> int:
    async with control.client(token) as node:
        r = await node.post(f"/v1/nodes/{nid}/heartbeat", json={**BEAT, **report})
    return r.status_code


def names(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(r["name"] for r in rows)


async def test_a_lost_node_is_removed_and_cannot_heartbeat_back(control: Control) -> None:
    nid, token = await joined(control, "gone")
    control.clock.now += 60  # silent past the TTL: lost
    converge_once(control.store, Policy())
    assert control.store.get_node(nid)["state"] == "lost"
    async with control.client(token) as node:  # only an admin may remove
        assert (await node.delete(f"/v1/nodes/{nid}")).status_code == 403
    r = await control.http.delete("/v1/nodes/gone")
    assert r.status_code == 200
    assert r.json()["removed"] is True
    assert names((await control.http.get("/v1/nodes")).json()["nodes"]) == []
    assert await beat(control, nid, token) == 401  # the old identity is dead
    async with control.client(token) as node:
        assert (await node.get(f"/v1/nodes/{nid}/work")).status_code == 401
    again, _ = await joined(control, "gone")  # back only through a new join
    assert again != nid
    said = control.store.db.execute("SELECT detail FROM events WHERE kind = 'node-removed'")
    assert [row[0] for row in said] == [f"node gone ({nid}) was removed"]


async def test_a_live_node_is_refused_unless_drained_empty_or_forced(control: Control) -> None:
    nid, token = await joined(control, "busy")
    other, _ = await joined(control, "spare")
    r = await control.http.delete("/v1/nodes/busy")
    assert r.status_code == 409
    assert r.json()["error"] == (
        "node busy is ready: drain it first (`foundry node drain busy`) or remove it with --force"
    )
    control.store.create_app("web")
    control.store.create_release(
        "web", droplet="d", env={}, processes={"web": "run"}, pack=None, description="test"
    )
    converge_once(control.store, Policy())
    placed = {r["node"] for r in control.store.instance_rows(app="web")}
    victim = placed.pop()
    name = control.store.get_node(victim)["name"]
    r = await control.http.post(f"/v1/nodes/{victim}/state", json={"state": "draining"})
    assert r.status_code == 200
    r = await control.http.delete(f"/v1/nodes/{victim}")
    assert r.status_code == 409
    assert "still has 1 instance(s)" in r.json()["error"]
    assert names((await control.http.get("/v1/nodes")).json()["nodes"]) == ["busy", "spare"]
    r = await control.http.delete(f"/v1/nodes/{victim}", params={"force": "1"})
    assert r.status_code == 200
    assert r.json()["instances"] == 1
    left = [n for n in (nid, other) if n != victim]
    assert names((await control.http.get("/v1/nodes")).json()["nodes"]) == [
        control.store.get_node(left[0])["name"]
    ]
    assert name not in names((await control.http.get("/v1/nodes")).json()["nodes"])
    converge_once(control.store, Policy())  # its instance is placed elsewhere
    assert {r["node"] for r in control.store.instance_rows(app="web")} == set(left)
    if victim == nid:
        assert await beat(control, nid, token) == 401


async def test_a_drained_empty_node_is_removed_and_unknown_is_404(control: Control) -> None:
    await joined(control, "idle")
    assert (
        await control.http.post("/v1/nodes/idle/state", json={"state": "draining"})
    ).status_code == 200
    assert (await control.http.delete("/v1/nodes/idle")).status_code == 200
    assert (await control.http.delete("/v1/nodes/idle")).status_code == 404


async def test_a_heartbeat_naming_an_unknown_instance_state_changes_nothing(
    control: Control,
) -> None:
    nid, token = await joined(control, "n")
    control.store.create_app("web")
    control.store.create_release(
        "web", droplet="d", env={}, processes={"web": "run"}, pack=None, description="test"
    )
    converge_once(control.store, Policy())
    [row] = control.store.instance_rows(app="web")
    report = [{"id": row["id"], "app": "web", "state": "EXPLODED", "port": 1}]
    async with control.client(token) as node:
        r = await node.post(f"/v1/nodes/{nid}/heartbeat", json={**BEAT, "instances": report})
    assert r.status_code == 422
    assert r.json()["error"] == (
        "instances[0].state: must be one of "
        "STARTING, RUNNING, STOPPING, STOPPED, CRASHED, got 'EXPLODED'"
    )
    [after] = control.store.instance_rows(app="web")
    assert after == row
