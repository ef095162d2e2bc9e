"""Reports from nodes reach the real control app twice, as they do when a node retries one
whose answer was lost: each is acted on once and acknowledged again; a result for a build
that was failed meanwhile is refused with the reason; a build no node reports on fails
when its timeout passes. Last, the node's real client against a transport that loses
answers and resets requests: it retries until acknowledged, and drops what is refused."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from control import converge, tasks
from control.blobs import BlobStore
from control.reconciler import Policy
from node.client import ControlClient, ControlError
from tests.component.conftest import Control, tarball

DROPLET = tarball({"Procfile": b"web: serve\n"})
DIGEST = hashlib.sha256(DROPLET).hexdigest()
POLICY = Policy()


@dataclass
class Staging:
    node: httpx.AsyncClient  # authenticated as the node the build went to
    build: str
    token: str
    nid: str


async def staging(control: Control) -> Staging:
    """An app whose build a live node has taken (STAGING)."""
    store = control.store
    nid = store.add_node("n", "127.0.0.1", 4096, "plain")
    _, token = store.create_token("node", node=nid)
    store.create_app("shop")
    build = store.create_build("shop", "s" * 64)
    converge.converge_once(store, POLICY)
    assert store.get_build(build)["state"] == "STAGING"
    return Staging(control.client(token), build, token, nid)


async def beat(s: Staging) -> None:
    """The node's heartbeat (nothing running): it stays live, not lost."""
    body = {"boot": "b", "address": "127.0.0.1", "memory_mb": 4096, "work_seq": 0, "instances": []}
    answer = await s.node.post(f"/v1/nodes/{s.nid}/heartbeat", json=body)
    assert answer.status_code == 200, answer.text


async def test_a_build_result_sent_twice_makes_one_release(control: Control) -> None:
    s = await staging(control)
    for _ in range(2):  # the same droplet twice: stored once, 201 both times
        put = await s.node.put(f"/v1/blobs/{DIGEST}", content=DROPLET)
        assert put.status_code == 201, put.text
    result = {"ok": True, "droplet": DIGEST, "processes": {"web": "serve"}, "pack": "procfile"}
    first = await s.node.post(f"/v1/builds/{s.build}/result", json=result)
    again = await s.node.post(f"/v1/builds/{s.build}/result", json=result)
    assert first.status_code == again.status_code == 200, again.text
    assert first.json() == again.json() == {"state": "STAGED", "release": 1}
    assert [r["version"] for r in control.store.list_releases("shop")] == [1]
    assert control.store.get_app("shop")["release"] == 1


async def test_a_failure_sent_twice_is_acknowledged_twice(control: Control) -> None:
    s = await staging(control)
    result = {"ok": False, "error": "python pack compile failed (exit 1)"}
    for _ in range(2):
        answer = await s.node.post(f"/v1/builds/{s.build}/result", json=result)
        assert (answer.status_code, answer.json()) == (200, {"state": "FAILED"})
    assert control.store.get_build(s.build)["error"] == "python pack compile failed (exit 1)"


async def test_a_release_phase_starts_once_however_often_its_result_comes(
    control: Control,
) -> None:
    s = await staging(control)
    await s.node.put(f"/v1/blobs/{DIGEST}", content=DROPLET)
    result = {
        "ok": True,
        "droplet": DIGEST,
        "processes": {"web": "serve", "release": "migrate"},
        "pack": "procfile",
    }
    first = (await s.node.post(f"/v1/builds/{s.build}/result", json=result)).json()
    again = (await s.node.post(f"/v1/builds/{s.build}/result", json=result)).json()
    assert first == again
    assert first["state"] == "STAGING"
    tid = first["release_phase"]
    assert [t["id"] for t in control.store.running_tasks()] == [tid]
    for _ in range(2):  # the task's result twice: one release
        done = await s.node.post(f"/v1/tasks/{tid}/result", json={"exit_code": 0, "reason": None})
        assert (done.status_code, done.json()) == (200, {"state": "SUCCEEDED"})
    assert [r["version"] for r in control.store.list_releases("shop")] == [1]
    assert control.store.get_build(s.build)["state"] == "STAGED"
    late = await s.node.post(f"/v1/tasks/{tid}/result", json={"exit_code": 3, "reason": None})
    assert late.status_code == 409
    assert "already ended SUCCEEDED (exit code 0); this result is dropped" in late.json()["error"]


async def test_a_build_no_node_reports_on_fails_and_a_late_result_is_refused(
    control: Control,
) -> None:
    s = await staging(control)
    control.clock.now += POLICY.build_timeout - 1
    await beat(s)  # the node stays live: only the timeout can fail the build
    converge.converge_once(control.store, POLICY)
    assert control.store.get_build(s.build)["state"] == "STAGING"
    control.clock.now += 2
    await beat(s)
    converge.converge_once(control.store, POLICY)
    failed = control.store.get_build(s.build)
    assert failed["state"] == "FAILED"
    assert failed["error"] == "no node reported the build within 1200 s"
    events = [e["detail"] for e in control.store.list_events("shop")]
    assert f"build {s.build}: no node reported the build within 1200 s" in events
    await s.node.put(f"/v1/blobs/{DIGEST}", content=DROPLET)
    late = await s.node.post(
        f"/v1/builds/{s.build}/result",
        json={"ok": True, "droplet": DIGEST, "processes": {"web": "serve"}},
    )
    assert late.status_code == 409
    assert late.json()["error"] == (
        f"build {s.build} already ended FAILED (no node reported the build within 1200 s); "
        "this result is dropped"
    )
    assert control.store.list_releases("shop") == []


async def test_a_release_phase_no_node_reports_on_fails_its_build(control: Control) -> None:
    s = await staging(control)
    await s.node.put(f"/v1/blobs/{DIGEST}", content=DROPLET)
    result = {"ok": True, "droplet": DIGEST, "processes": {"web": "serve", "release": "migrate"}}
    tid = (await s.node.post(f"/v1/builds/{s.build}/result", json=result)).json()["release_phase"]
    short = Policy(build_timeout=600.0)
    control.clock.now += 601  # past the build's timeout: that leaves it to the task
    await beat(s)
    converge.converge_once(control.store, short)
    tasks.fail_overdue_tasks(control.store, control_blobs(control))
    assert control.store.get_build(s.build)["state"] == "STAGING"
    control.clock.now += tasks.RELEASE_TIMEOUT + tasks.REPORT_MARGIN - 600
    await beat(s)
    converge.converge_once(control.store, short)
    tasks.fail_overdue_tasks(control.store, control_blobs(control))
    task = control.store.get_task(tid)
    assert (task["state"], task["reason"]) == ("FAILED", "no node reported the task within 1200 s")
    assert control.store.get_build(s.build)["error"] == (
        "release phase failed: no node reported the task within 1200 s"
    )
    assert control.store.list_releases("shop") == []


def control_blobs(control: Control) -> BlobStore:
    """The control app's own blob store (the one its handlers write)."""
    return BlobStore(control.store.path.parent / "blobs")


async def test_a_queued_build_no_node_takes_fails_after_the_timeout(control: Control) -> None:
    control.store.create_app("shop")
    build = control.store.create_build("shop", "s" * 64)
    converge.converge_once(control.store, POLICY)
    assert control.store.get_build(build)["state"] == "QUEUED"
    control.clock.now += POLICY.build_timeout + 1
    converge.converge_once(control.store, POLICY)
    assert control.store.get_build(build)["error"] == (
        "no node was available to stage the build within 1200 s"
    )


async def test_a_log_batch_sent_twice_under_one_key_is_stored_once(control: Control) -> None:
    s = await staging(control)
    lines = [{"app": "shop", "source": "build", "line": "-----> once", "ts": 1.0}]
    for key in ("k1", "k1", "k2"):
        sent = await s.node.post(
            "/v1/logs", json={"lines": lines}, headers={"idempotency-key": key}
        )
        assert sent.status_code == 200, sent.text
    stored = control.store.read_logs("shop", after=None, limit=10)
    assert [r["line"] for r in stored] == ["-----> once", "-----> once"]  # k1 once, k2 once
    bad = await s.node.post(
        "/v1/logs", json={"lines": lines}, headers={"idempotency-key": "x" * 129}
    )
    assert bad.status_code == 400
    assert len(control.store.read_logs("shop", after=None, limit=10)) == 2


@dataclass
class Faults(httpx.AsyncBaseTransport):
    """The real control app behind faults: per path suffix, a list of what to do to the
    next requests ("lose": act, then lose the answer; "reset": never deliver)."""

    inner: httpx.AsyncBaseTransport
    plan: dict[str, list[str]]
    sent: list[str] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request.url.path)
        fault = next(
            (
                f.pop(0)
                for suffix, f in self.plan.items()
                if request.url.path.endswith(suffix) and f
            ),
            None,
        )
        if fault == "reset":
            raise httpx.ConnectError("connection reset by peer")
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if fault == "lose":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return response


async def test_the_node_client_retries_a_lost_answer_and_a_reset_until_acknowledged(
    control: Control, tmp_path: Path
) -> None:
    s = await staging(control)
    faults = Faults(
        control.http._transport,
        {f"/v1/blobs/{DIGEST}": ["reset", "lose"], "/result": ["lose", "reset"]},
    )
    http = httpx.AsyncClient(transport=faults, base_url="http://control")
    client = ControlClient(http, s.token)
    path = tmp_path / "droplet.tgz"
    path.write_bytes(DROPLET)
    await client.upload(DIGEST, path)
    await client.build_result(
        s.build, {"ok": True, "droplet": DIGEST, "processes": {"web": "serve"}, "pack": "x"}
    )
    assert faults.sent.count(f"/v1/blobs/{DIGEST}") == 3
    assert faults.sent.count(f"/v1/builds/{s.build}/result") == 3
    assert [r["version"] for r in control.store.list_releases("shop")] == [1]


async def test_the_node_client_drops_a_refused_report_without_retrying(control: Control) -> None:
    s = await staging(control)
    control.clock.now += POLICY.build_timeout + 1
    await beat(s)
    converge.converge_once(control.store, POLICY)
    faults = Faults(control.http._transport, {})
    client = ControlClient(httpx.AsyncClient(transport=faults, base_url="http://control"), s.token)
    with pytest.raises(ControlError) as refused:
        await client.build_result(s.build, {"ok": False, "error": "compile failed"})
    assert refused.value.status == 409
    assert "no node reported the build within 1200 s" in str(refused.value)
    assert faults.sent == [f"/v1/builds/{s.build}/result"]  # once, not again
