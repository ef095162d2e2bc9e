"""The contract between roles: what one role really sends is what the other declares and
parses.

control/, node/ and edge/ never import one another, so each declares the messages it
sends and reads in its own wire module. These tests hold the copies together:
- the declarations on both sides of a role pair are the same shapes, field for field;
- messages produced by the real code paths (the converge loop's work items, the route
  table, join answers and acks; the node agent's join, heartbeats, build and task
  results and log batches) match both sides' declarations exactly: no missing field,
  no unknown one, the declared types;
- the receiver's real parser takes them in (the node's instance env, the edge's
  RouteTable, the control plane's handlers and the rows they write).
A field renamed on one side only fails here.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import httpx
import trio

import control.wire_edge
import control.wire_node
import edge.wire
import node.wire
from control import converge, releases, tasks
from control.blobs import BlobStore
from control.model import InstanceState
from control.reconciler import Policy
from edge.routesync import RouteSync
from node.agent import Agent, NodeConfig
from node.instances import RUNNING, Instance
from tests.component.conftest import Control

NODE_SIDES = (control.wire_node, node.wire)
EDGE_SIDES = (control.wire_edge, edge.wire)
DIGEST = "ab" * 32


# --- a strict check of a JSON value against a TypedDict ----------------------------


def shapes(module: types.ModuleType) -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if typing.is_typeddict(obj) and obj.__module__ == module.__name__
    }


def describe(tp: Any) -> Any:
    """A structure-only description of a type (TypedDicts of either side compare equal)."""
    if typing.is_typeddict(tp):
        hints = typing.get_type_hints(tp)
        return (
            "typeddict",
            tuple(
                sorted(
                    (key, key in tp.__required_keys__, describe(hint))
                    for key, hint in hints.items()
                )
            ),
        )
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is None:
        return tp
    if origin is types.UnionType:
        origin = Union
    if origin is Union:
        return ("union", frozenset(describe(a) for a in args))
    return (origin, tuple(describe(a) for a in args))


def problems(tp: Any, value: Any, where: str = "$") -> list[str]:
    """Why `value` (decoded JSON) is not exactly a `tp`; empty when it is."""
    if typing.is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not an object"]
        hints = typing.get_type_hints(tp)
        found = [f"{where}: unknown field {k!r}" for k in value.keys() - hints.keys()]
        found += [f"{where}: missing field {k!r}" for k in tp.__required_keys__ - value.keys()]
        for key in value.keys() & hints.keys():
            found += problems(hints[key], value[key], f"{where}.{key}")
        return found
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        options = [problems(a, value, where) for a in args]
        return [] if any(not p for p in options) else [f"{where}: {value!r} is not {tp}"]
    if origin is Literal:
        return [] if value in args else [f"{where}: {value!r} is not one of {args}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not a list"]
        return [p for i, v in enumerate(value) for p in problems(args[0], v, f"{where}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not an object"]
        return [p for k, v in value.items() for p in problems(args[1], v, f"{where}.{k}")]
    if tp is type(None):
        return [] if value is None else [f"{where}: {value!r} is not null"]
    allowed = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}[tp]
    ok = isinstance(value, allowed) and (tp is bool or not isinstance(value, bool))
    return [] if ok else [f"{where}: {value!r} is not {tp.__name__}"]


def assert_both_sides(name: str, sides: tuple[types.ModuleType, ...], value: Any) -> None:
    """`value` is exactly the shape `name` as every side of the pair declares it."""
    for side in sides:
        tp = getattr(side, name)
        assert problems(tp, value) == [], (f"{side.__name__}.{name}", value)


def test_checker_refuses_a_renamed_missing_or_mistyped_field() -> None:
    good = {"exit_code": 0, "reason": None}
    assert problems(node.wire.TaskResult, good) == []
    assert problems(node.wire.TaskResult, {"exit": 0, "reason": None}) == [
        "$: unknown field 'exit'",
        "$: missing field 'exit_code'",
    ]
    assert problems(node.wire.TaskResult, {"exit_code": "0", "reason": None})
    assert problems(node.wire.Heartbeat, {"boot": "b"})  # missing fields


# --- 1. the declarations of both sides agree ---------------------------------------


def test_control_and_node_declare_the_same_messages() -> None:
    control_side, node_side = (shapes(m) for m in NODE_SIDES)
    assert control_side.keys() == node_side.keys()
    for name, tp in control_side.items():
        assert describe(tp) == describe(node_side[name]), name
    assert control.wire_node.WORK_KINDS.keys() == node.wire.WORK_KINDS.keys()


def test_control_and_edge_declare_the_same_route_table() -> None:
    control_side, edge_side = (shapes(m) for m in EDGE_SIDES)
    assert control_side.keys() == edge_side.keys()
    for name, tp in control_side.items():
        assert describe(tp) == describe(edge_side[name]), name


# --- 2. the real messages, both ways -----------------------------------------------


@dataclass
class Recorder(httpx.AsyncBaseTransport):
    """Passes requests to the real control app and keeps each JSON exchange."""

    inner: httpx.AsyncBaseTransport
    seen: list[tuple[int, str, Any, Any]] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        sent = (
            json.loads(request.content)
            if request.headers.get("content-type") == "application/json"
            else None
        )
        answer = (
            json.loads(body) if response.headers.get("content-type") == "application/json" else None
        )
        self.seen.append((response.status_code, request.url.path, sent, answer))
        return httpx.Response(response.status_code, headers=response.headers, content=body)

    def exchanges(self, suffix: str) -> list[tuple[Any, Any]]:
        """(request, answer) bodies of the calls to paths ending in `suffix`, all taken."""
        found = [(status, s, a) for status, path, s, a in self.seen if path.endswith(suffix)]
        assert all(status < 400 for status, _, _ in found), found
        return [(s, a) for _, s, a in found]


async def joined_agent(control: Control, tmp_path: Path, recorder: Recorder) -> Agent:
    _, join = control.store.create_token("join")
    http = httpx.AsyncClient(transport=recorder, base_url="http://control")
    agent = Agent(
        NodeConfig(
            home=tmp_path / "node",
            control_url="http://control",
            packs_dir=tmp_path / "packs",
            join_token=join,
            tier="plain",
        ),
        http,
    )
    await agent.identify()  # the node's real join
    await agent.heartbeat_once()
    return agent


async def test_what_control_sends_the_node_takes_and_back(control: Control, tmp_path: Path) -> None:
    recorder = Recorder(control.http._transport)
    agent = await joined_agent(control, tmp_path, recorder)
    store, policy = control.store, Policy()
    blobs = BlobStore(tmp_path / "blobs")
    store.create_app("shop", env={"GREETING": "hi"})
    releases.make_release(
        store,
        blobs,
        "shop",
        droplet=DIGEST,
        env={"GREETING": "hi"},
        processes={"web": "serve", "worker": "work"},
        pack="python",
        description="test",
        actor=None,
    )
    converge.converge_once(store, policy)  # start items
    build = store.create_build(
        "shop", DIGEST, {"buildpack": "python", "no_cache": True, "processes": {"web": "serve"}}
    )
    converge.converge_once(store, policy)  # a stage item
    tid = tasks.start_task(
        store, policy, "shop", "migrate", droplet=DIGEST, env={}, release=1
    )  # a task item

    items = await agent.client.work(agent.node_id, 0, wait=0)
    kinds = sorted(i["kind"] for i in items)
    assert kinds == ["stage", "start", "start", "task"]
    for item in items:
        assert_both_sides(node.wire.WORK_KINDS[item["kind"]].__name__, NODE_SIDES, item)
    ((answer_sent, join_answer),) = recorder.exchanges("/join")
    assert_both_sides("JoinRequest", NODE_SIDES, answer_sent)
    assert_both_sides("JoinAnswer", NODE_SIDES, join_answer)

    # The node parses a start item into a running instance and reports it back.
    web = next(i for i in items if i["kind"] == "start" and i["process"] == "web")
    assert web["kind"] == "start"
    inst = Instance(spec=web, state=RUNNING, port=45678, pid=1)
    env = agent.supervisor._env(inst, "/app")
    assert (env["FOUNDRY_COMMAND"], env["GREETING"], env["FOUNDRY_RELEASE"]) == (
        "serve",
        "hi",
        "v1",
    )
    agent.supervisor.instances[inst.id] = inst
    agent.work_seq = max(i["seq"] for i in items)
    await agent.heartbeat_once()
    row = next(r for r in store.instance_rows() if r["id"] == inst.id)
    assert (row["state"], row["port"]) == ("RUNNING", 45678)
    for sent, ack in recorder.exchanges("/heartbeat"):
        assert_both_sides("Heartbeat", NODE_SIDES, sent)
        assert_both_sides("Ack", NODE_SIDES, ack)

    # A stop item: the app is scaled to zero.
    store.update_app("shop", scale={"web": 0, "worker": 0})
    converge.converge_once(store, policy)
    stops = [
        i
        for i in await agent.client.work(agent.node_id, agent.work_seq, wait=0)
        if i["kind"] == "stop"
    ]
    assert stops
    for item in stops:
        assert_both_sides("StopWork", NODE_SIDES, item)

    # The stager and the task runner report through their real paths (the droplet and the
    # source are not in the blob store, so both fail early), with their log lines.
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.logs.run)
        stage = next(i for i in items if i["kind"] == "stage")
        task = next(i for i in items if i["kind"] == "task")
        assert stage["kind"] == "stage"
        assert task["kind"] == "task"
        await agent.stager.stage(stage)
        await agent.tasks.run(task)
        nursery.cancel_scope.cancel()
    assert store.get_build(build)["state"] == "FAILED"
    assert store.get_task(tid)["state"] == "FAILED"
    for sent, _ in recorder.exchanges(f"/builds/{build}/result"):
        assert_both_sides("BuildResult", NODE_SIDES, sent)
    for sent, _ in recorder.exchanges(f"/tasks/{tid}/result"):
        assert_both_sides("TaskResult", NODE_SIDES, sent)
    batches = recorder.exchanges("/v1/logs")
    assert batches
    for sent, ack in batches:
        assert_both_sides("LogBatch", NODE_SIDES, sent)
        assert_both_sides("Ack", NODE_SIDES, ack)
    assert any(
        line["source"] == "build"
        for line in store.read_logs("shop", after=None, limit=100, build=build)
    )
    for _, work in recorder.exchanges("/work"):
        assert_both_sides("WorkAnswer", NODE_SIDES, work)


async def test_the_edge_parses_the_route_table_control_sends(
    control: Control, tmp_path: Path
) -> None:
    store = control.store
    nid = store.add_node("n", "10.0.0.7", 1024, "plain")
    store.create_app("shop")
    releases.make_release(
        store,
        BlobStore(tmp_path / "blobs"),
        "shop",
        droplet=DIGEST,
        env={},
        processes={"web": "serve"},
        pack=None,
        description="t",
        actor=None,
    )
    store.add_instance(
        app="shop",
        process="web",
        index=0,
        release=1,
        node=nid,
        memory_mb=64,
        restarts=0,
        work_seq=0,
        iid="i-1",
        generation=0,
    )
    store.update_instance("i-1", state=InstanceState.RUNNING, port=4100, address="10.0.0.7")
    store.map_route(
        "shop",
        "www.example.test",
        "/shop",
        {"balance": "least-in-flight", "timeout": 30, "sticky": False},
    )
    _, token = store.create_token("edge")
    recorder = Recorder(control.http._transport)
    async with httpx.AsyncClient(transport=recorder) as http:
        sync = RouteSync(http, "http://control", token, wait=1)
        async with trio.open_nursery() as nursery:
            await nursery.start(sync.run)
            nursery.cancel_scope.cancel()
    ((_, table),) = recorder.exchanges("/v1/routes")
    assert_both_sides("RouteTable", EDGE_SIDES, table)
    own = sync.table.lookup("shop.localhost", "/")
    mapped = sync.table.lookup("www.example.test", "/shop/cart")
    assert own is not None
    assert mapped is not None
    assert [(b.address, b.instance) for b in own.backends] == [("10.0.0.7:4100", "i-1")]
    assert [(b.address, b.instance) for b in mapped.backends] == [("10.0.0.7:4100", "i-1")]
    assert (mapped.options.balance, mapped.options.timeout, mapped.options.sticky) == (
        "least-in-flight",
        30.0,
        False,
    )
    assert sync.table.etag == table["etag"]
