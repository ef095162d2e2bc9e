"""App-scoped tokens reach only their apps: hosts, routes, nodes, builds, tasks,
uploaded buildpacks and resource-matched files. Each test drives the API with two
tokens, one for `alice` and one for `mallory`; what mallory may not see answers as
what does not exist."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx

from control.model import BuildState, InstanceState
from tests.component.conftest import Control, tarball

BIG = b"SECRET_KEY=alice-only\n" + b"#" * (70 * 1024)  # over the 64 KiB pool minimum
SMALL = b"print('hello')\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(path: str, data: bytes) -> dict[str, Any]:
    return {"path": path, "sha256": sha(data), "mode": 0o644, "size": len(data)}


async def scoped(control: Control, *apps: str) -> str:
    r = await control.http.post("/v1/tokens", json={"kind": "deploy", "apps": list(apps)})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def push_files(
    c: httpx.AsyncClient, app: str, files: dict[str, bytes], base: str | None = None
) -> str:
    """What `foundry push` does with resource matching; returns the listing."""
    body = {"base": base, "changed": [entry(p, d) for p, d in files.items()], "removed": []}
    r = await c.post("/v1/resources/listing", params={"app": app}, json=body)
    assert r.status_code == 200, r.text
    listing, missing = r.json()["listing"], r.json()["missing"]
    upload = {d: data for data in files.values() if (d := sha(data)) in missing}
    if upload:
        r = await c.post("/v1/resources", params={"app": app}, content=tarball(upload))
        assert r.status_code == 201, r.text
    r = await c.post(f"/v1/apps/{app}/builds", json={"listing": listing})
    assert r.status_code == 201, r.text
    return str(listing)


def same_answer(a: httpx.Response, b: httpx.Response, a_id: str, b_id: str) -> None:
    """Two answers equal but for the identifier the caller itself named."""
    assert a.status_code == b.status_code
    if a_id:
        assert a.text.replace(a_id, "ID").replace(a_id[:12], "ID") == b.text.replace(
            b_id, "ID"
        ).replace(b_id[:12], "ID")
    else:
        assert a.text == b.text


# --- 3.2 hosts belong to whoever claimed them first -----------------------------------
async def test_a_scoped_token_cannot_map_under_another_apps_host(control: Control) -> None:
    for name in ("alice", "mallory"):
        control.store.create_app(name)
    alice, mallory = await scoped(control, "alice"), await scoped(control, "mallory")
    async with control.client(alice) as a, control.client(mallory) as m:
        assert (
            await a.post("/v1/apps/alice/routes", json={"route": "shop.test"})
        ).status_code == 200
        for route in (
            "alice.localhost/login",
            "shop.test/checkout",
            "shop.test",
            "bob.localhost/x",
        ):  # bob does not exist yet: still his host
            r = await m.post("/v1/apps/mallory/routes", json={"route": route})
            host = route.partition("/")[0]
            assert r.status_code == 403, (route, r.text)
            assert r.json()["error"] == f"host {host} is reserved for another owner"
        assert (
            await m.post("/v1/apps/mallory/routes", json={"route": "mallory.test/x"})
        ).status_code == 200
        assert (
            await a.post("/v1/apps/alice/routes", json={"route": "mallory.test/y"})
        ).status_code == 403
    routes = {(r["host"], r["path"]): r["app"] for r in control.store.mapped_routes()}
    assert routes == {("shop.test", "/"): "alice", ("mallory.test", "/x"): "mallory"}
    # the admin may do anything
    r = await control.http.post("/v1/apps/mallory/routes", json={"route": "alice.localhost/m"})
    assert r.status_code == 200


async def test_re_mapping_a_route_keeps_the_hosts_first_claim(control: Control) -> None:
    for name in ("alice", "bob"):
        control.store.create_app(name)
    alice = await scoped(control, "alice")
    async with control.client(alice) as a:
        assert (await a.post("/v1/apps/alice/routes", json={"route": "h.test"})).status_code == 200
        control.clock.now += 10
        assert (
            await control.http.post("/v1/apps/bob/routes", json={"route": "h.test/b"})
        ).status_code == 200  # admin adds bob
        control.clock.now += 10
        r = await a.post("/v1/apps/alice/routes", json={"route": "h.test", "timeout": 5})
        assert r.status_code == 200  # options change only
        assert (
            await a.post("/v1/apps/alice/routes", json={"route": "h.test/more"})
        ).status_code == 200  # still alice's host


# --- 3.13 listings and referenced objects ---------------------------------------------
def run_instance(control: Control, app: str, address: str) -> None:
    control.store.create_release(
        app, droplet="0" * 64, env={}, processes={"web": "x"}, pack=None, description="test"
    )
    iid = f"i-{app}"
    control.store.add_instance(
        app=app,
        process="web",
        index=0,
        release=1,
        node="n-1",
        memory_mb=64,
        restarts=0,
        work_seq=0,
        iid=iid,
    )
    control.store.update_instance(iid, state=InstanceState.RUNNING, address=address, port=5000)


async def test_routes_listing_holds_only_the_tokens_apps_without_addresses(
    control: Control,
) -> None:
    for name, address in (("alice", "10.0.0.1"), ("mallory", "10.0.0.2")):
        control.store.create_app(name)
        run_instance(control, name, address)
    alice = await scoped(control, "alice")
    async with control.client(alice) as a:
        view = (await a.get("/v1/routes")).json()
        assert [(r["host"], r["backends"]) for r in view["routes"]] == [
            ("alice.localhost", [{"instance": "i-alice"}])
        ]
        assert "10.0.0" not in json.dumps(view)
        # mallory's changes do not wake or change alice's view
        control.store.update_instance("i-mallory", address="10.0.0.3")
        again = await a.get("/v1/routes", params={"etag": view["etag"], "wait": 0})
        assert again.json()["etag"] == view["etag"]
    full = (await control.http.get("/v1/routes")).json()["routes"]
    assert {b["address"] for r in full for b in r["backends"]} == {"10.0.0.1:5000", "10.0.0.3:5000"}
    _, edge = control.store.create_token("edge")
    async with control.client(edge) as e:
        assert (await e.get("/v1/routes")).json()["routes"] == full


async def test_nodes_are_listed_only_for_infrastructure_tokens(control: Control) -> None:
    control.store.add_node("n1", "10.0.0.1", 1024, "full")
    r = await control.http.post("/v1/tokens", json={"kind": "read"})
    read_admin = r.json()["token"]
    r = await control.http.post("/v1/tokens", json={"kind": "read", "apps": ["alice"]})
    scoped_read = r.json()["token"]
    for token, status in (
        (await scoped(control, "alice"), 403),
        (scoped_read, 403),
        (read_admin, 200),
        (control.admin, 200),
    ):
        async with control.client(token) as c:
            r = await c.get("/v1/nodes")
        assert r.status_code == status, r.text
        assert ("10.0.0.1" in r.text) is (status == 200)


async def test_another_apps_build_and_task_answer_as_missing(control: Control) -> None:
    control.store.create_app("mallory")
    build = control.store.create_build("mallory", "0" * 64)
    task = control.store.create_task("mallory", "run", "true", "n-1")
    alice = await scoped(control, "alice")
    async with control.client(alice) as a:
        for real, fake in (
            (f"/v1/builds/{build}", "/v1/builds/b-000000000000"),
            (f"/v1/tasks/{task}", "/v1/tasks/t-000000000000"),
        ):
            hidden, missing = await a.get(real), await a.get(fake)
            assert hidden.status_code == 404
            same_answer(hidden, missing, real.rsplit("/", 1)[1], fake.rsplit("/", 1)[1])
        control.store.create_app("alice")
        for real, fake in ((build, "b-000000000000"), (task, "t-000000000000")):
            hidden = await a.get("/v1/apps/alice/logs", params={"build": real})
            missing = await a.get("/v1/apps/alice/logs", params={"build": fake})
            assert hidden.status_code == 404
            same_answer(hidden, missing, real, fake)
    async with control.client(None) as anonymous:  # no token learns nothing either
        assert (await anonymous.get(f"/v1/builds/{build}")).status_code == 401
        assert (await anonymous.get("/v1/builds/b-000000000000")).status_code == 401
        assert (await anonymous.post(f"/v1/builds/{build}/result", json={})).status_code == 401
        assert (await anonymous.post(f"/v1/tasks/{task}/result", json={})).status_code == 401
        for path in ("/v1/builds/b-000000000000/result", "/v1/tasks/t-000000000000/result"):
            assert (await anonymous.post(path, json={})).status_code == 401


async def test_a_buildpack_blob_must_be_one_uploaded_for_the_callers_apps(control: Control) -> None:
    alice, mallory = await scoped(control, "alice"), await scoped(control, "mallory")
    pack = tarball({"bin/detect": b"#!/bin/sh\n", "bin/compile": b"#!/bin/sh\n"})
    source = tarball({"Procfile": b"web: true\n", ".env": b"SECRET=1\n"})
    async with control.client(alice) as a, control.client(mallory) as m:
        own = (await a.post("/v1/apps/alice/buildpack", content=pack)).json()["buildpack"]
        bid = (await a.post("/v1/apps/alice/builds", content=source)).json()["build"]
        alices_source = "blob:" + control.store.get_build(bid)["source"]
        assert (
            await a.post("/v1/apps/alice/builds", params={"buildpack": own}, content=source)
        ).status_code == 201
        nowhere = "blob:" + "1" * 64
        missing = await m.post(
            "/v1/apps/mallory/builds", params={"buildpack": nowhere}, content=source
        )
        assert missing.status_code == 422
        for theirs in (own, alices_source):
            r = await m.post(
                "/v1/apps/mallory/builds", params={"buildpack": theirs}, content=source
            )
            same_answer(r, missing, theirs, nowhere)
    assert not control.store.app_exists("mallory")


# --- 3.3 resource matching reaches only the caller's apps' files ----------------------
async def test_a_token_cannot_learn_of_or_obtain_another_apps_file(control: Control) -> None:
    alice, mallory = await scoped(control, "alice"), await scoped(control, "mallory")
    async with control.client(alice) as a, control.client(mallory) as m:
        listing = await push_files(a, "alice", {".env": BIG, "app.py": SMALL})
        # alice herself matches her large file; small files are always uploaded again
        r = await a.post(
            "/v1/resources/match",
            params={"app": "alice"},
            json={"resources": [{"sha256": sha(BIG)}, {"sha256": sha(SMALL)}]},
        )
        assert r.json()["missing"] == [sha(SMALL)]

        r = await m.post(
            "/v1/resources/match",
            params={"app": "mallory"},
            json={"resources": [{"sha256": sha(BIG)}, {"sha256": listing}]},
        )
        assert r.json()["missing"] == [sha(BIG), listing]
        r = await m.post(
            "/v1/resources/listing",
            params={"app": "mallory"},
            json={"base": None, "changed": [entry(".env", BIG)], "removed": []},
        )
        assert r.status_code == 200
        assert r.json()["missing"] == [sha(BIG)]
        unknown = b"never uploaded" * 6000
        for theirs, nobodys in ((BIG, unknown), (SMALL, b"other")):
            taken = await m.post(
                "/v1/apps/mallory/builds", json={"resources": [entry(".env", theirs)]}
            )
            refused = await m.post(
                "/v1/apps/mallory/builds", json={"resources": [entry(".env", nobodys)]}
            )
            assert taken.status_code == 422
            same_answer(taken, refused, "", "")
        fake = sha(b"no listing")
        for body in ({"listing": listing}, {"base": listing, "changed": [], "removed": []}):
            path = "/v1/apps/mallory/builds" if "listing" in body else "/v1/resources/listing"
            theirs_r = await m.post(path, params={"app": "mallory"}, json=body)
            fake_body = {k: (fake if v == listing else v) for k, v in body.items()}
            same_answer(
                theirs_r,
                await m.post(path, params={"app": "mallory"}, json=fake_body),
                listing,
                fake,
            )
            assert theirs_r.status_code == 409
        # the file store is named per app, which the token must cover
        assert (await m.post("/v1/resources/match", json={"resources": []})).status_code == 400
        assert (
            await m.post("/v1/resources/match", params={"app": "alice"}, json={"resources": []})
        ).status_code == 403
    assert control.store.builds_in(BuildState.QUEUED)[-1]["app"] == "alice"
    assert not control.store.app_exists("mallory")


async def test_uploading_the_bytes_makes_a_file_ones_own(control: Control) -> None:
    alice, mallory = await scoped(control, "alice"), await scoped(control, "mallory")
    async with control.client(alice) as a, control.client(mallory) as m:
        await push_files(a, "alice", {"data.bin": BIG})
        await push_files(m, "mallory", {"data.bin": BIG})  # mallory had to send it
        r = await m.post(
            "/v1/resources/match",
            params={"app": "mallory"},
            json={"resources": [{"sha256": sha(BIG)}]},
        )
        assert r.json()["missing"] == []


async def test_files_no_app_references_are_deleted(control: Control) -> None:
    files = control.store.path.parent / "files"
    alice, bob = await scoped(control, "alice"), await scoped(control, "bob")
    shared, old, new = BIG, b"old" + BIG, b"new" + BIG
    async with control.client(alice) as a, control.client(bob) as b:
        first = await push_files(a, "alice", {"shared": shared, "f": old})
        await push_files(b, "bob", {"shared": shared})
        assert (files / sha(old)).exists()
        assert (files / first).exists()
        await push_files(a, "alice", {"shared": shared, "f": new}, base=first)
        assert not (files / sha(old)).exists(), "a superseded file is collected"
        assert not (files / first).exists(), "so is the superseded listing"
        assert (await a.delete("/v1/apps/alice")).status_code == 200
        assert not (files / sha(new)).exists()
        assert (files / sha(shared)).exists(), "bob still references it"
        r = await b.post(
            "/v1/resources/match",
            params={"app": "bob"},
            json={"resources": [{"sha256": sha(shared)}]},
        )
        assert r.json()["missing"] == []
    r = await control.http.post(
        "/v1/resources/match", params={"app": "alice"}, json={"resources": [{"sha256": sha(new)}]}
    )
    assert r.json()["missing"] == [sha(new)]
