"""Tokens: expiry, use counts, revocation, app scopes, and constant-time comparison."""

from __future__ import annotations

import hmac
import io
import tarfile

import pytest

from control.model import BuildState
from tests.component.conftest import Control


def tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("Procfile")
        data = b"web: python3 -m http.server $PORT\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def mint(control: Control, **body: object) -> str:
    r = await control.http.post("/v1/tokens", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def test_no_token_and_bad_tokens_are_401(control: Control) -> None:
    for token in (None, "nonsense", "fdy_abc_def", control.admin + "x"):
        async with control.client(token) as c:
            r = await c.get("/v1/apps")
        assert r.status_code == 401
        assert "token" in r.json()["error"]


async def test_expired_token_stops_working(control: Control) -> None:
    token = await mint(control, kind="read", ttl="1h")
    async with control.client(token) as c:
        assert (await c.get("/v1/apps")).status_code == 200
        control.clock.now += 3601
        assert (await c.get("/v1/apps")).status_code == 401


async def test_join_token_uses_are_counted(control: Control) -> None:
    token = await mint(control, kind="join", uses=2)
    body = {"name": "n", "memory_mb": 1024, "address": "127.0.0.1"}
    async with control.client(token) as c:
        assert (await c.post("/v1/nodes/join", json=body)).status_code == 201
        assert (await c.post("/v1/nodes/join", json=body)).status_code == 201
        assert (await c.post("/v1/nodes/join", json=body)).status_code == 401
        assert (await c.get("/v1/apps")).status_code == 401  # a join token does nothing else


@pytest.mark.parametrize("kind", ["deploy", "read", "admin", "edge"])
async def test_every_kind_spends_its_uses(control: Control, kind: str) -> None:
    token = await mint(control, kind=kind, uses=1)
    path = "/v1/routes" if kind == "edge" else "/v1/apps"
    async with control.client(token) as c:
        assert (await c.get(path)).status_code == 200
        r = await c.get(path)
        assert r.status_code == 401
        assert "token" in r.json()["error"]
    listed = {t["kind"]: t for t in (await control.http.get("/v1/tokens")).json()["tokens"]}
    assert listed[kind]["uses_left"] == 0


async def test_a_use_limited_deploy_token_pushes_once(control: Control) -> None:
    token = await mint(control, kind="deploy", apps=["once"], uses=1)
    async with control.client(token) as c:
        assert (await c.post("/v1/apps/once/builds", content=tarball())).status_code == 201
        assert (await c.post("/v1/apps/once/builds", content=tarball())).status_code == 401
    assert len(control.store.builds_in(BuildState.QUEUED)) == 1


@pytest.mark.parametrize("kind", ["deploy", "edge", "join"])
async def test_expired_tokens_of_every_kind_are_401(control: Control, kind: str) -> None:
    token = await mint(control, kind=kind, ttl="60s")
    control.clock.now += 61
    path = {"deploy": "/v1/apps", "edge": "/v1/routes", "join": "/v1/nodes/join"}[kind]
    async with control.client(token) as c:
        r = await c.request(
            "POST" if kind == "join" else "GET", path, json={"name": "n", "memory_mb": 1024}
        )
    assert r.status_code == 401
    assert "expired" in r.json()["error"]


async def test_revoked_token_stops_at_once(control: Control) -> None:
    r = await control.http.post("/v1/tokens", json={"kind": "deploy"})
    token, tid = r.json()["token"], r.json()["id"]
    async with control.client(token) as c:
        assert (await c.get("/v1/apps")).status_code == 200
        assert (await control.http.delete(f"/v1/tokens/{tid}")).status_code == 200
        assert (await c.get("/v1/apps")).status_code == 401
    listed = (await control.http.get("/v1/tokens")).json()["tokens"]
    assert all("hash" not in t and "token" not in t for t in listed)


async def test_deploy_token_is_limited_to_its_apps(control: Control) -> None:
    token = await mint(control, kind="deploy", apps=["app-a"])
    async with control.client(token) as c:
        assert (await c.post("/v1/apps/app-a/builds", content=tarball())).status_code == 201
        r = await c.post("/v1/apps/app-b/builds", content=tarball())
        assert r.status_code == 403
        assert "app-b" in r.json()["error"]
        assert (await c.delete("/v1/apps/app-a")).status_code == 200
        for method, path in (
            ("GET", "/v1/apps/app-b"),
            ("DELETE", "/v1/apps/app-b"),
            ("POST", "/v1/tokens"),
            ("GET", "/v1/nodes/x/work"),
        ):
            assert (await c.request(method, path)).status_code == 403, path
    assert not control.store.app_exists("app-b")


async def test_read_token_cannot_change_anything(control: Control) -> None:
    token = await mint(control, kind="read")
    async with control.client(token) as c:
        assert (await c.get("/v1/apps")).status_code == 200
        assert (await c.post("/v1/apps/x/builds", content=tarball())).status_code == 403
        assert (await c.post("/v1/tokens", json={"kind": "admin"})).status_code == 403


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"kind": "root"}, 422),
        ({"kind": "join", "apps": ["a"]}, 400),
        ({"kind": "read", "ttl": "soon"}, 422),
        ({"kind": "read", "uses": 0}, 422),
    ],
)
async def test_bad_token_requests_say_why(
    control: Control, body: dict[str, object], status: int
) -> None:
    r = await control.http.post("/v1/tokens", json=body)
    assert r.status_code == status
    assert r.json()["error"]


async def test_secrets_are_compared_in_constant_time(
    control: Control, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert (await control.http.get("/v1/apps")).status_code == 200
    assert calls, "token hashes must be compared with hmac.compare_digest"
    assert control.admin not in {x for pair in calls for x in pair}  # hashes, not secrets
