"""Request limits of the control API, black-box: oversized bodies (declared or streamed),
archive and gzip bombs, the config var cap, config in push bodies (never the URL), the
routing table not reading config vars, and git refusing before it mints anything."""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from control.api import create_app
from control.config import ControlConfig
from control.limits import RequestLimits
from control.store import Store
from control.uploads import ArchiveLimits
from tests.component.conftest import Clock, Control, tarball

KIB = 1024
LIMITS = RequestLimits(
    json=64 * KIB,
    node_report=64 * KIB,
    resource_list=64 * KIB,
    resource_list_expanded=256 * KIB,
    git_push=256 * KIB,
)


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[Control]:
    """The control plane with small caps, so each one can be passed cheaply."""
    clock = Clock()
    store = Store(tmp_path / "foundry.db", clock=clock)
    config = ControlConfig(
        home=tmp_path,
        max_upload=512 * KIB,
        requests=LIMITS,
        limits=ArchiveLimits(max_files=100, max_expanded=1 << 20),
    )
    app = create_app(store, config, converge_loop=False)
    _, admin = store.create_token("admin")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://control",
        headers={"authorization": f"Bearer {admin}"},
    ) as http:
        yield Control(store, clock, http, admin)
    store.close()


SOURCE = tarball({"Procfile": b"web: python3 -m http.server $PORT\n"})


class Pulled(httpx.AsyncByteStream):
    """A request body that counts how many of its chunks the server asked for (a plain
    iterator, so a body the server leaves unread leaves no generator behind)."""

    def __init__(self, chunk: bytes, count: int) -> None:
        self.chunk, self.count, self.pulled = chunk, count, 0

    def __aiter__(self) -> Pulled:
        return self

    async def __anext__(self) -> bytes:
        if self.pulled == self.count:
            raise StopAsyncIteration
        self.pulled += 1
        return self.chunk


async def send(
    http: httpx.AsyncClient, method: str, url: str, body: Pulled, headers: dict[str, str]
) -> httpx.Response:
    """Send `body` as it is (no Content-Length unless `headers` declares one)."""
    request = http.build_request(method, url, headers=headers)
    request.stream = body
    return await http.send(request)


def rows(control: Control, table: str) -> int:
    return int(control.store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def stored_files(home: Path) -> list[str]:
    """Everything in the control plane's blob and file stores (temp files included)."""
    return sorted(
        p.name for d in ("blobs", "files") if (home / d).exists() for p in (home / d).iterdir()
    )


async def make_app(control: Control, name: str = "app", env: dict[str, str] | None = None) -> None:
    r = await control.http.post(
        f"/v1/apps/{name}/builds", content=SOURCE, headers={"foundry-config-length": "0"}
    )
    assert r.status_code == 201, r.text
    if env:
        r = await control.http.patch(f"/v1/apps/{name}/env", json={"set": env})
        assert r.status_code == 200, r.text


# --- request bodies -----------------------------------------------------------------------
async def test_a_declared_oversized_body_is_413_before_it_is_read(small: Control) -> None:
    await make_app(small, env={"KEEP": "1"})
    body = Pulled(b"x" * KIB, 10_000)
    r = await send(
        small.http,
        "PATCH",
        "/v1/apps/app/env",
        body,
        {"content-length": str(10_000 * KIB), "content-type": "application/json"},
    )
    assert r.status_code == 413, r.text
    assert "limit" in r.json()["error"], r.text
    assert body.pulled == 0
    assert (await small.http.get("/v1/apps/app/env")).json()["env"] == {"KEEP": "1"}


async def test_a_streamed_body_is_cut_off_at_the_cap(small: Control) -> None:
    tokens = rows(small, "tokens")
    body = Pulled(b" " * (8 * KIB), 10_000)  # chunked: no Content-Length
    r = await send(small.http, "POST", "/v1/tokens", body, {"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert "limit" in r.json()["error"], r.text
    assert body.pulled <= LIMITS.json // (8 * KIB) + 1
    assert rows(small, "tokens") == tokens


async def test_a_gzip_json_bomb_is_413(small: Control) -> None:
    await make_app(small, env={"KEEP": "1"})
    bomb = gzip.compress(json.dumps({"set": {"BIG": "0" * (16 << 20)}}).encode())
    assert len(bomb) < LIMITS.json
    r = await small.http.patch(
        "/v1/apps/app/env",
        content=bomb,
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )
    assert r.status_code == 413, r.text
    assert "expands" in r.json()["error"], r.text
    assert (await small.http.get("/v1/apps/app/env")).json()["env"] == {"KEEP": "1"}


async def test_an_oversized_source_upload_is_413_and_creates_nothing(small: Control) -> None:
    body = Pulled(b"x" * (64 * KIB), 100)
    r = await send(small.http, "POST", "/v1/apps/big/builds", body, {})
    assert r.status_code == 413, r.text
    assert body.pulled <= 512 // 64 + 1
    assert not small.store.app_exists("big")
    assert stored_files(small.store.path.parent) == []


# --- archives that expand --------------------------------------------------------------------
def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_a_resource_upload_that_expands_past_the_cap_stores_nothing(small: Control) -> None:
    good, zeros = b"print('hi')\n", bytes(8 << 20)  # 8 MiB of zeros gzip to ~8 KiB
    bomb = tarball({digest(good): good, digest(zeros): zeros})
    assert len(bomb) < 64 * KIB
    r = await small.http.post("/v1/resources?app=limited", content=bomb)
    assert r.status_code == 422, r.text
    assert "expand" in r.json()["error"], r.text
    assert stored_files(small.store.path.parent) == []  # not even the good file
    r = await small.http.post(
        "/v1/resources/match?app=limited", json={"resources": [{"sha256": digest(good)}]}
    )
    assert r.json()["missing"] == [digest(good)]


async def test_a_resource_upload_within_the_cap_is_stored(small: Control) -> None:
    files = {digest(b"a"): b"a", digest(b"b" * 1000): b"b" * 1000}
    r = await small.http.post("/v1/resources?app=limited", content=tarball(files))
    assert r.status_code == 201, r.text
    assert r.json()["stored"] == 2, r.text
    assert set(stored_files(small.store.path.parent)) == set(files)


async def test_a_source_package_bomb_is_refused_and_creates_nothing(small: Control) -> None:
    bomb = tarball({"Procfile": b"web: x\n", "zeros": bytes(8 << 20)})
    r = await small.http.post("/v1/apps/bomb/builds", content=bomb)
    assert r.status_code == 422, r.text
    assert "expands" in r.json()["error"], r.text
    assert not small.store.app_exists("bomb")
    assert stored_files(small.store.path.parent) == []


async def test_a_gzip_resource_list_bomb_is_413(small: Control) -> None:
    entry = {"path": "a", "sha256": "0" * 64, "mode": 420, "size": 1}
    bomb = gzip.compress(json.dumps({"resources": [entry], "pad": " " * (8 << 20)}).encode())
    r = await small.http.post(
        "/v1/resources/match?app=limited",
        content=bomb,
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )
    assert r.status_code == 413, r.text
    assert "expands" in r.json()["error"], r.text


# --- config vars -----------------------------------------------------------------------------
async def test_33_kb_of_config_is_refused_and_changes_nothing(small: Control) -> None:
    await make_app(small, env={"KEEP": "1"})
    r = await small.http.patch("/v1/apps/app/env", json={"set": {"BIG": "x" * 33_000}})
    assert r.status_code == 422, r.text
    assert "32768 bytes" in r.json()["error"], r.text
    assert (await small.http.get("/v1/apps/app/env")).json()["env"] == {"KEEP": "1"}
    releases = rows(small, "releases")
    # Many small vars count together, and a push's config is held to the same cap.
    many = {f"VAR_{i}": "y" * 1000 for i in range(33)}
    r = await small.http.post("/v1/apps/app/builds", json={"listing": "0" * 64, "env": many})
    assert r.status_code in (409, 422), r.text
    config = json.dumps({"env": many}).encode()
    r = await send(
        small.http,
        "POST",
        "/v1/apps/app/builds",
        Pulled(config + SOURCE, 1),
        {"foundry-config-length": str(len(config))},
    )
    assert r.status_code == 422, r.text
    assert "32768" in r.json()["error"], r.text
    assert (await small.http.get("/v1/apps/app/env")).json()["env"] == {"KEEP": "1"}
    assert rows(small, "releases") == releases
    assert rows(small, "builds") == 1


async def test_a_push_with_too_much_config_does_not_create_the_app(small: Control) -> None:
    config = json.dumps({"env": {"BIG": "x" * 33_000}}).encode()
    r = await send(
        small.http,
        "POST",
        "/v1/apps/fresh/builds",
        Pulled(config + SOURCE, 1),
        {"foundry-config-length": str(len(config))},
    )
    assert r.status_code == 422, r.text
    assert "32768 bytes" in r.json()["error"], r.text
    assert not small.store.app_exists("fresh")
    assert stored_files(small.store.path.parent) == []


async def test_config_just_under_the_cap_is_accepted_and_an_app_over_it_may_shrink(
    small: Control,
) -> None:
    await make_app(small)
    r = await small.http.patch("/v1/apps/app/env", json={"set": {"A": "x" * 32_000}})
    assert r.status_code == 200, r.text
    # An app already over the cap (set before the cap existed) may still shrink.
    small.store.update_app("app", env={"A": "x" * 40_000, "B": "y" * 100})
    r = await small.http.patch("/v1/apps/app/env", json={"unset": ["B"]})
    assert r.status_code == 200, r.text
    r = await small.http.patch("/v1/apps/app/env", json={"set": {"C": "z"}})
    assert r.status_code == 422, r.text


# --- config travels in bodies ----------------------------------------------------------------
async def test_config_in_the_url_is_refused(small: Control) -> None:
    r = await small.http.post(
        "/v1/apps/app/builds", params={"env": "SECRET=hunter2"}, content=SOURCE
    )
    assert r.status_code == 400, r.text
    assert "body" in r.json()["error"], r.text
    assert not small.store.app_exists("app")


async def test_config_in_the_body_of_a_tarball_push(small: Control) -> None:
    config = json.dumps({"env": {"SECRET": "hunter2"}}).encode()

    class Split(Pulled):  # streamed, split inside the config
        parts = (config[:5], config[5:] + SOURCE[:10], SOURCE[10:])

        async def __anext__(self) -> bytes:
            self.pulled += 1
            if self.pulled > len(self.parts):
                raise StopAsyncIteration
            return self.parts[self.pulled - 1]

    r = await send(
        small.http,
        "POST",
        "/v1/apps/app/builds",
        Split(b"", 0),
        {"foundry-config-length": str(len(config))},
    )
    assert r.status_code == 201, r.text
    assert (await small.http.get("/v1/apps/app/env")).json()["env"] == {"SECRET": "hunter2"}
    build = small.store.get_build(r.json()["build"])
    assert build["source"] in stored_files(small.store.path.parent)


async def test_config_in_the_body_of_a_resource_matched_push(small: Control) -> None:
    await make_app(small, env={"OLD": "1"})
    data = b"web: python3 -m http.server $PORT\n"
    await small.http.post("/v1/resources?app=limited", content=tarball({digest(data): data}))
    entry = {"path": "Procfile", "sha256": digest(data), "mode": 0o644, "size": len(data)}
    r = await small.http.post(
        "/v1/apps/app/builds",
        json={"resources": [entry], "env": {"SECRET": "hunter2"}, "replace_env": True},
    )
    assert r.status_code == 201, r.text
    assert (await small.http.get("/v1/apps/app/env")).json()["env"] == {"SECRET": "hunter2"}


# --- the routing table ----------------------------------------------------------------------
async def test_building_the_routing_table_does_not_read_config_vars(small: Control) -> None:
    await make_app(small, env={"BIG": "x" * 30_000})
    await small.http.post("/v1/apps/app/scale", json={"min": 0, "max": 2})
    read: list[tuple[str, str]] = []

    def authorizer(action: int, table: str | None, column: str | None, *_: Any) -> int:
        if action == sqlite3.SQLITE_READ and table and column:
            read.append((table, column))
        return sqlite3.SQLITE_OK

    conn = small.store.db.conn
    conn.set_authorizer(authorizer)
    try:
        r = await small.http.get("/v1/routes")
    finally:
        conn.set_authorizer(None)
    assert r.status_code == 200, r.text
    route = next(x for x in r.json()["routes"] if x["app"] == "app")
    assert route["wakeable"] is True
    assert ("apps", "name") in read  # the authorizer saw the query
    assert not [c for c in read if c[1] == "env"], read


# --- git --------------------------------------------------------------------------------------
async def test_unauthenticated_git_posts_change_nothing(small: Control) -> None:
    tokens = rows(small, "tokens")
    async with small.client(None) as anonymous:
        for _ in range(50):
            r = await anonymous.post("/git/app.git/git-receive-pack", content=b"0000")
            assert r.status_code == 401
            assert "www-authenticate" in r.headers
        basic = base64.b64encode(b"x:fdy_nope_nope").decode()
        r = await anonymous.post(
            "/git/app.git/git-receive-pack",
            content=b"0000",
            headers={"authorization": f"Basic {basic}"},
        )
        assert r.status_code == 401
    other = (
        await small.http.post("/v1/tokens", json={"kind": "deploy", "apps": ["other"]})
    ).json()["token"]
    tokens += 1
    async with small.client(other) as c:
        r = await c.post("/git/app.git/git-receive-pack", content=b"0000")
        assert r.status_code == 403
    assert rows(small, "tokens") == tokens
    assert not (small.store.path.parent / "git" / "app.git").exists()


async def test_a_git_push_body_that_inflates_past_the_cap_is_413(small: Control) -> None:
    tokens = rows(small, "tokens")
    bomb = gzip.compress(bytes(64 << 20))
    assert len(bomb) < LIMITS.git_push
    kind = "application/x-git-receive-pack-request"
    r = await send(
        small.http,
        "POST",
        "/git/app.git/git-receive-pack",
        Pulled(bomb, 1),
        {"content-encoding": "gzip", "content-type": kind},
    )
    assert r.status_code == 413, r.text
    assert "limit" in r.json()["error"], r.text
    r = await send(
        small.http,
        "POST",
        "/git/app.git/git-receive-pack",
        Pulled(bytes(64 * KIB), 5),
        {"content-type": kind},
    )
    assert r.status_code == 413, r.text
    revoked = small.store.db.execute("SELECT COUNT(*) FROM tokens WHERE revoked = 0").fetchone()[0]
    assert revoked == tokens  # each hook token minted was revoked again
    assert rows(small, "builds") == 0


def test_the_git_hook_refuses_a_commit_that_expands_past_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sizes come from git's object headers: a commit of 3 MiB of zeros (a pack of a few
    KiB) is refused before anything is archived."""
    from control import githook

    run = functools.partial(subprocess.run, check=True, capture_output=True, cwd=tmp_path)
    run(["git", "init", "-q", "-b", "main"])
    (tmp_path / "zeros").write_bytes(bytes(3 << 20))
    (tmp_path / "Procfile").write_text("web: x\n")
    run(["git", "add", "."])
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"])
    commit = run(["git", "rev-parse", "HEAD"], text=True).stdout.strip()
    monkeypatch.chdir(tmp_path)
    assert githook.tree_size(commit) == (3 << 20) + 7
    githook.check_size(commit, 4 << 20)
    with pytest.raises(githook.HookError, match=r"add up to 3145735 bytes.*at most 1048576"):
        githook.check_size(commit, 1 << 20)
