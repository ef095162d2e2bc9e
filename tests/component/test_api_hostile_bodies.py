"""Every route that takes a body, fed hostile bodies: never a 5xx, always a JSON error with
a reason, and nothing stored.

The routes come from the app's own tables (control.api.JSON_BODIES, UPLOADS, NO_BODY),
so a new route is covered, or this file fails until it says what its body is. JSON
routes get hypothesis-generated bodies built as JSON *text* (so they can hold what
Python's json.dumps would never write: 1e400, NaN, 5,000-digit integers, lone
surrogates, 100,000 levels of nesting); uploads get empty, truncated and non-gzip bodies.
After each refused request the store's tables and the files under the control plane's
home must be exactly as before.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control import converge, tasks
from control.api import JSON_BODIES, NO_BODY, ROUTES, UPLOADS, create_app
from control.config import ControlConfig
from control.reconciler import Policy
from control.schema import ListOf, MapOf, Obj, Spec
from control.store import Store
from tests.component.conftest import Clock, tarball

DIGEST = "ab" * 32
EXAMPLES = 30  # per route; the whole file stays around a minute on a loaded 2-core machine
HOSTILE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- the platform the requests land on ----------------------------------------------


class OneChunk(httpx.AsyncByteStream):
    """A request body as one chunk, from a plain iterator (not an async generator)."""

    def __init__(self, data: bytes) -> None:
        self.data: bytes | None = data

    def __aiter__(self) -> OneChunk:
        return self

    async def __anext__(self) -> bytes:
        if self.data is None:
            raise StopAsyncIteration
        data, self.data = self.data, None
        return data


class World:
    """The control plane's app over a real store, with an app, a live node, a staging
    build and a running task, so every route has something real to act on. Sync, so
    hypothesis can drive it: each request runs in its own trio.run."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.store = store = Store(home / "foundry.db", clock=Clock())
        self.app = create_app(store, ControlConfig(home=home), converge_loop=False)
        _, self.admin = store.create_token("admin")
        self.node = store.add_node("n1", "127.0.0.1", 4096, None)
        store.touch_node(self.node, address="127.0.0.1", memory_mb=4096, tier=None, boot="b1")
        store.create_app("app", env={"KEEP": "1"})
        self.build = store.create_build("app", DIGEST)
        converge.assign_builds(store, Policy())
        assert store.get_build(self.build)["state"] == "STAGING"
        self.task = tasks.start_task(
            store, Policy(), "app", "sleep 1", droplet=DIGEST, env={}, release=0
        )

    def url(self, path: str) -> str:
        return (
            path.replace("{app}", "app")
            .replace("{action}", "restart")
            .replace("{node}", self.node)
            .replace("{build}", self.build)
            .replace("{task}", self.task)
            .replace("{digest}", DIGEST)
            .replace("{repo}", "app.git")
            .replace("{service}", "git-receive-pack")
            .replace("{token}", "nope")
        ) + ("?app=app" if path.startswith("/v1/resources") else "")

    def call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        async def one() -> httpx.Response:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=self.app),
                base_url="http://control",
                headers={"authorization": f"Bearer {self.admin}"},
            ) as http:
                request = http.build_request(method, url, **kw)
                if "content" in kw:  # a body the server refuses half-read leaves no generator
                    request.stream = OneChunk(kw["content"])
                return await http.send(request)

        return trio.run(one)

    def dump(self) -> tuple[dict[str, list[tuple[Any, ...]]], list[str]]:
        """Every table's rows, and every file under the home but the database's own."""
        db = self.store.db
        tables = {
            t: [tuple(r.values()) for r in db.query(f"SELECT * FROM [{t}] ORDER BY rowid")]
            for t in db.table_names()
            if not t.startswith("sqlite_")
        }
        files = sorted(
            str(p.relative_to(self.home))
            for p in self.home.rglob("*")
            if p.is_file() and not p.name.startswith("foundry.db")
        )
        return tables, files


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    found = World(tmp_path)
    yield found
    found.store.close()


def send(world: World, method: str, path: str, body: bytes, **headers: str) -> None:
    """One hostile request: never a 5xx; refused with a JSON reason and nothing changed."""
    before = world.dump()
    r = world.call(method, world.url(path), content=body, headers=headers)
    assert r.status_code < 500, (method, path, body[:200], r.text)
    if r.status_code < 400:
        return  # generated by chance, the body was a valid request
    if not path.startswith("/git/"):  # git answers in its own protocol
        reason = r.json()["error"]
        assert isinstance(reason, str), r.text
        assert reason, r.text
    assert world.dump() == before, (method, path, body[:200], r.text)


# --- hostile JSON text --------------------------------------------------------------


def field_names(spec: Spec) -> Iterator[str]:
    """Every key the shape declares, at any depth: hostile values land where they hurt."""
    if isinstance(spec, Obj):
        for key, f in spec.fields.items():
            yield key
            yield from field_names(f.spec)
    elif isinstance(spec, ListOf):
        yield from field_names(spec.item)
    elif isinstance(spec, MapOf):
        yield from field_names(spec.value)


WEIRD_NUMBERS = ["1e400", "-1e400", "NaN", "Infinity", "-0", "2.7", "1e-400", "1" * 5000]
WEIRD_STRINGS = [r'"\u0000"', r'"\ud800"', r'"A=B"', '""', r'"a\u0000b"', '"' + "x" * 100_000 + '"']
scalars = st.one_of(
    st.sampled_from([*WEIRD_NUMBERS, *WEIRD_STRINGS, "true", "false", "null", "[]", "{}"]),
    st.integers(min_value=-(1 << 70), max_value=1 << 70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.text(max_size=30).map(json.dumps),
)


def deep(n: int, opener: str) -> str:
    return (opener * n + "1" + "}" * n) if opener.startswith("{") else "[" * n + "]" * n


def values(keys: list[str]) -> st.SearchStrategy[str]:
    """JSON text of hostile values, objects keyed by the route's own field names."""
    key = st.one_of(st.sampled_from([*keys, "A=B", "A\0", "", "unknown"]), st.text(max_size=10))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
            st.lists(st.tuples(key, inner), max_size=4).map(
                lambda kv: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in kv) + "}"
            ),
        ),
        max_leaves=8,
    )


def bodies_for(path_spec: Obj) -> st.SearchStrategy[bytes]:
    keys = sorted(set(field_names(path_spec)))
    value = values(keys)
    obj = st.lists(st.tuples(st.sampled_from([*keys, "unknown"]), value), min_size=1, max_size=6)
    return st.one_of(
        obj.map(lambda kv: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in kv) + "}"),
        value,  # not an object at all
        st.builds(deep, st.sampled_from([33, 999, 5000, 100_000]), st.sampled_from(["[", '{"a":'])),
        st.binary(max_size=64),  # not UTF-8, not JSON
    ).map(lambda b: b if isinstance(b, bytes) else b.encode("utf-8", "surrogatepass"))


# --- the tests ----------------------------------------------------------------------

WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def test_every_route_that_writes_says_what_its_body_is() -> None:
    routes = {(m, r.path) for r in ROUTES for m in (r.methods or set()) & WRITES}
    undeclared = routes - set(JSON_BODIES) - UPLOADS - NO_BODY
    assert not undeclared, f"declare these routes' bodies in control/api.py: {undeclared}"
    assert set(JSON_BODIES) | UPLOADS | NO_BODY <= routes


@pytest.mark.parametrize(("method", "path"), sorted(JSON_BODIES))
def test_hostile_json_bodies_are_refused_and_change_nothing(
    world: World, method: str, path: str
) -> None:
    @HOSTILE
    @given(body=bodies_for(JSON_BODIES[(method, path)].spec))
    def one(body: bytes) -> None:
        send(world, method, path, body, **{"content-type": "application/json"})

    one()


SOURCE = tarball({"Procfile": b"web: serve\n"})
BROKEN_UPLOADS = [
    b"",
    SOURCE[: len(SOURCE) // 2],  # truncated gzip
    b"PK\x03\x04 a zip, not a gzip'd tar",
    gzip.compress(b"not a tar archive" * 100),
    gzip.compress(b"\0" * 10240)[:-8],  # gzip without its trailer
]


@pytest.mark.parametrize(("method", "path"), sorted(UPLOADS))
def test_broken_uploads_are_refused_and_change_nothing(
    world: World, method: str, path: str
) -> None:
    for body in BROKEN_UPLOADS:
        send(world, method, path, body)

    @HOSTILE
    @given(body=st.binary(max_size=512))
    def one(body: bytes) -> None:
        send(world, method, path, body)

    if not path.startswith("/git/"):  # each git request runs git: the fixed cases suffice
        one()


def test_a_hostile_push_config_prefix_is_refused(world: World) -> None:
    """The JSON ahead of a pushed tarball is checked like any body."""

    @HOSTILE
    @given(config=bodies_for(JSON_BODIES[("POST", "/v1/apps/{app}/builds")].spec))
    def one(config: bytes) -> None:
        length = str(len(config))
        path = "/v1/apps/{app}/builds"
        send(world, "POST", path, config + SOURCE, **{"foundry-config-length": length})

    one()


# --- each example the issue names ---------------------------------------------------


def refused(r: httpx.Response, status: int, reason: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"] == reason


def test_100_000_deep_json_is_a_400(world: World) -> None:
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        r = world.call("POST", "/v1/apps/app/scale", content=body)
        refused(r, 400, "request body nests deeper than 32 levels")


def test_numbers_are_never_coerced(world: World) -> None:
    store = world.store
    for text, shown in (
        ("1e400", "a number too large to represent"),
        ("2.7", "2.7"),
        ("2.0", "2.0"),
        ("true", "true"),
        ("[1]", "a list"),
        ('"3"', "'3'"),
    ):
        r = world.call("POST", "/v1/apps/app/scale", content=f'{{"instances": {text}}}'.encode())
        refused(r, 422, f"instances: must be an integer between 0 and 100, got {shown}")
    r = world.call("POST", "/v1/apps/app/scale", content=b'{"instances": NaN}')
    refused(r, 400, "request body is not valid JSON")
    r = world.call("POST", "/v1/nodes/join", content=b'{"memory_mb": 1e400}')
    refused(
        r,
        422,
        "memory_mb: must be an integer between 64 and 16777216, "
        "got a number too large to represent",
    )
    assert store.get_app("app")["scale"] == {"web": 1}


def test_config_vars_must_be_names_and_strings(world: World) -> None:
    store = world.store
    for change, reason in (
        ({"set": {"A=B": "x"}}, "set: config var name 'A=B' must match [A-Za-z_][A-Za-z0-9_]*"),
        ({"set": {"A": "x\0y"}}, "set.A: must not contain NUL characters"),
        ({"set": {"A\0": "x"}}, "set: must not contain NUL characters"),
        ({"set": {"A": {"b": 1}}}, "set.A: must be a string, got an object"),
        ({"set": {"A": 1}}, "set.A: must be a string, got 1"),
        ({"unset": ["A=B"]}, "unset[0]: config var name 'A=B' must match [A-Za-z_][A-Za-z0-9_]*"),
        ({"sett": {"A": "1"}}, "sett: unknown field (known: set, unset)"),
    ):
        refused(world.call("PATCH", "/v1/apps/app/env", json=change), 422, reason)
    pushed = world.call(
        "POST", "/v1/apps/app/builds", json={"listing": DIGEST, "env": {"A=B": "1"}}
    )
    refused(pushed, 422, "env: config var name 'A=B' must match [A-Za-z_][A-Za-z0-9_]*")
    assert store.get_app("app")["env"] == {"KEEP": "1"}
    ok = world.call("PATCH", "/v1/apps/app/env", json={"set": {"A": "B=C"}})  # a value may hold =
    assert ok.status_code == 200, ok.text
    assert store.get_app("app")["env"] == {"KEEP": "1", "A": "B=C"}


def test_query_numbers_are_plain_decimals(world: World) -> None:
    for bad in ("2.7", "1e3", " 5", "1_0", "٣", "nan"):
        r = world.call("GET", "/v1/apps/app/events", params={"limit": bad})
        refused(r, 422, f"limit: must be an integer between 1 and 10000, got {bad!r}")
        r = world.call("POST", "/v1/apps/app/builds", params={"instances": bad}, content=SOURCE)
        refused(r, 422, f"instances: must be an integer between 0 and 100, got {bad!r}")
    for bad in ("nan", "inf", "-1", "1e9999"):
        r = world.call("GET", "/v1/apps/app", params={"wait": bad})
        assert r.status_code == 422, r.text
    assert not world.store.list_events("app", 100)
