"""API handlers for node agents: join, heartbeats, work queues, build results, log
lines and blobs."""

from __future__ import annotations

import logging
import sqlite3

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from control import releases, tasks
from control.auth import READ_KINDS, check_node, require, require_node, scope_of
from control.bodies import (
    BUILD_RESULT,
    FLAG,
    HEARTBEAT,
    JOIN,
    LOGS,
    NODE_STATE,
    SEQ,
    TASK_RESULT,
)
from control.context import (
    check_length,
    control_of,
    json_body,
    query_value,
)
from control.converge import fail_lost_builds
from control.diskspace import is_disk_full
from control.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
)
from control.heartbeats import apply_heartbeat, node_text
from control.model import BuildState, InstanceState, NodeState, TaskState
from control.policy import sees_infrastructure
from control.reports import repeated_build_result, repeated_task_result

log = logging.getLogger("foundry.control")
KNOWN_STATES = frozenset(InstanceState)
MAX_KEY = 128  # characters of a log batch's Idempotency-Key


async def join(request: Request) -> Response:
    """Exchange a join token for a node id and node token (each request spends one of
    a limited token's uses, as for every kind)."""
    ctl = control_of(request)
    require(request, ctl.store, ("join", "admin"))
    body = await json_body(request, JOIN)
    name = body.get("name") or "node"
    memory = body["memory_mb"]
    address = body.get("address") or "127.0.0.1"
    nid = ctl.store.add_node(
        name, address, memory, body.get("tier"), node_text(body.get("seccomp"))
    )
    _, secret = ctl.store.create_token("node", node=nid, label=name)
    ctl.store.add_event(None, "node-joined", f"node {name} ({nid}) joined at {address}")
    log.info("node-joined node=%s name=%s address=%s", nid, name, address)
    return JSONResponse({"id": nid, "token": secret}, status_code=201)


async def list_nodes(request: Request) -> Response:
    """List nodes with state, tier, seccomp filter, capacity and instance counts
    (infrastructure: admin and unscoped read tokens only)."""
    ctl = control_of(request)
    token = require(request, ctl.store, READ_KINDS)
    # 403 rather than an empty list: nodes are not any app's objects, so there is no
    # "missing" answer to imitate, and "no nodes" would tell a developer the platform
    # is down when it is not.
    if not sees_infrastructure(token.kind, scope_of(token)):
        raise Forbidden(
            "nodes are platform infrastructure: listing them needs an admin "
            "or an unscoped read token"
        )
    instances = ctl.store.instance_rows()
    nodes = []
    for row in ctl.store.node_rows():
        mine = [i for i in instances if i["node"] == row["id"]]
        free, full = ctl.node_disks.get(row["id"], (None, None))
        nodes.append(
            {
                **row,
                "instances": len(mine),
                "used_mb": sum(i["memory_mb"] for i in mine),
                "disk_free": free,
                "disk_full": full,
            }
        )
    return JSONResponse({"nodes": nodes})


async def node_state(request: Request) -> Response:
    """Drain a node (its instances move elsewhere first) or make it ready again."""
    ctl = control_of(request)
    caller = require(request, ctl.store, ("admin",))
    node = ctl.store.get_node(request.path_params["node"])
    state = NodeState((await json_body(request, NODE_STATE))["state"])
    if node["state"] == NodeState.LOST:
        raise Conflict(
            f"node {node['name']} is lost; it becomes ready when it is heard from "
            "(or `foundry node remove` forgets it)"
        )
    ctl.store.set_node_state(node["id"], state)
    ctl.store.add_event(None, f"node-{state}", f"node {node['name']} is {state}", caller.id)
    return JSONResponse({"id": node["id"], "state": state})


def removal_problem(name: str, state: NodeState, instances: int, force: bool) -> str | None:
    """Why node `name` may not be removed now, or None. A lost node, or a drained one with
    nothing left on it, goes at once; anything else only with `force`, because its
    instances would be cut off from the control plane while they still run."""
    if force or state == NodeState.LOST or (state == NodeState.DRAINING and instances == 0):
        return None
    if instances:
        return (
            f"node {name} is {state} and still has {instances} instance(s): drain it "
            f"first (`foundry node drain {name}`) or remove it with --force"
        )
    return (
        f"node {name} is {state}: drain it first (`foundry node drain {name}`) or "
        "remove it with --force"
    )


async def remove_node(request: Request) -> Response:
    """Forget a node: lost or drained-empty, or any with ?force=1. Its token is revoked;
    to come back it must join again with a join token."""
    ctl = control_of(request)
    caller = require(request, ctl.store, ("admin",))
    node = ctl.store.get_node(request.path_params["node"])
    force = query_value(request, "force", FLAG, "") in ("1", "true")
    mine = ctl.store.instance_rows(node=node["id"])
    problem = removal_problem(node["name"], node["state"], len(mine), force)
    if problem:
        raise Conflict(problem)
    ctl.store.remove_node(node["id"])
    fail_lost_builds(ctl.store, [node["id"]])
    tasks.fail_lost_tasks(ctl.store, ctl.blobs, [node["id"]])
    ctl.store.add_event(
        None,
        "node-removed",
        f"node {node['name']} ({node['id']}) was removed"
        + (f" with {len(mine)} instance(s) on it" if mine else ""),
        caller.id,
    )
    log.info("node-removed node=%s name=%s instances=%d", node["id"], node["name"], len(mine))
    return JSONResponse({"id": node["id"], "removed": True, "instances": len(mine)})


async def heartbeat(request: Request) -> Response:
    """A node reports its capacity and the actual state of its instances."""
    ctl = control_of(request)
    nid = request.path_params["node"]
    require_node(request, ctl.store, nid)
    body = await json_body(request, HEARTBEAT, ctl.config.requests.node_report)
    if "disk_free" in body:
        ctl.node_disks[nid] = (body["disk_free"], body.get("disk_full", False))
    apply_heartbeat(ctl.store, nid, dict(body), ctl.asked_to_stop.setdefault(nid, set()))
    return JSONResponse({"ok": True})


async def work(request: Request) -> Response:
    """Work items after ?after=SEQ for a node (acknowledging those up to SEQ)."""
    ctl = control_of(request)
    nid = request.path_params["node"]
    require_node(request, ctl.store, nid)
    ctl.store.get_node(nid)
    after = query_value(request, "after", SEQ, 0)
    try:
        ctl.store.ack_work(nid, after)
    except sqlite3.Error as e:
        if not is_disk_full(e):
            raise
        # Only bookkeeping: the acknowledged items stay queued until a later poll deletes
        # them (none is sent again: the answer holds items after the cursor only).
    items = await ctl.wait(request, lambda: ctl.store.work_after(nid, after))
    return JSONResponse({"work": items})


async def build_result(request: Request) -> Response:
    """A stager reports how a build ended; success makes a new release. The same result
    again (its answer was lost) gets the same answer and changes nothing."""
    ctl = control_of(request)
    token = require(request, ctl.store, ("admin", "node"))  # before the lookup
    build = ctl.store.get_build(request.path_params["build"])
    check_node(token, build["node"] or "")
    body = await json_body(request, BUILD_RESULT)
    error = body.get("error") or "build failed"
    phase = ctl.store.release_phase_of(build["id"])
    if build["state"] != BuildState.STAGING or phase is not None:
        repeat = repeated_build_result(build, body["ok"], body.get("droplet", ""), error, phase)
        if repeat.refusal is not None:
            raise Conflict(repeat.refusal)
        return JSONResponse(repeat.answer)
    if not body["ok"]:
        ctl.store.set_build(build["id"], BuildState.FAILED, error=error)
        ctl.store.add_event(build["app"], "build-failed", f"build {build['id']}: {error}")
        return JSONResponse({"state": BuildState.FAILED})
    droplet = body.get("droplet", "")
    ctl.blobs.existing(droplet)
    processes = body.get("processes", {})
    if not ctl.store.app_exists(build["app"]):
        raise NotFound(f"app {build['app']!r} was deleted while it was being built")
    env = ctl.store.get_app(build["app"])["env"]
    same = releases.current_if_same(
        ctl.store, build["app"], build=build["id"], droplet=droplet, env=env, processes=processes
    )
    if same is not None:
        ctl.store.set_build(
            build["id"],
            BuildState.STAGED,
            droplet=droplet,
            pack=body.get("pack"),
            processes=processes,
            release=same,
        )
        ctl.store.add_event(
            build["app"],
            "build-unchanged",
            f"build {build['id']}: no change, v{same} stays current",
        )
        return JSONResponse({"state": BuildState.STAGED, "release": same})
    if processes.get("release"):
        # Release phase first: the release is made only if the command succeeds.
        current = ctl.store.get_app(build["app"])["release"]
        tid = tasks.start_task(
            ctl.store,
            ctl.config.policy,
            build["app"],
            processes["release"],
            kind="release",
            droplet=droplet,
            env=env,
            release=current + 1,
            build=build["id"],
            payload={
                "droplet": droplet,
                "env": env,
                "processes": processes,
                "pack": body.get("pack"),
            },
        )
        return JSONResponse({"state": BuildState.STAGING, "release_phase": tid})
    version = releases.make_release(
        ctl.store,
        ctl.blobs,
        build["app"],
        droplet=droplet,
        env=env,
        processes=processes,
        pack=body.get("pack"),
        description=f"build {build['id']} ({body.get('pack')})",
        actor=None,
    )
    ctl.store.set_build(
        build["id"],
        BuildState.STAGED,
        droplet=droplet,
        pack=body.get("pack"),
        processes=processes,
        release=version,
    )
    return JSONResponse({"state": BuildState.STAGED, "release": version})


async def task_result(request: Request) -> Response:
    """A node reports how a task ended: {"exit_code": int | null, "reason": str | null}."""
    ctl = control_of(request)
    token = require(request, ctl.store, ("admin", "node"))  # before the lookup
    task = ctl.store.get_task(request.path_params["task"])
    check_node(token, task["node"] or "")
    body = await json_body(request, TASK_RESULT)
    code = body.get("exit_code")
    reason = body.get("reason") or None
    if task["state"] != TaskState.RUNNING:  # a repeat (its answer was lost), or too late
        repeat = repeated_task_result(task, code, reason)
        if repeat.refusal is not None:
            raise Conflict(repeat.refusal)
        return JSONResponse(repeat.answer)
    done = tasks.finish_task(ctl.store, ctl.blobs, task["id"], code, reason)
    return JSONResponse({"state": done["state"]})


async def post_logs(request: Request) -> Response:
    """A node appends log lines: {"lines": [{app, source, line, ts, build?}]}. A batch
    with an Idempotency-Key header is stored once, however often it is sent."""
    ctl = control_of(request)
    token = require(request, ctl.store, ("node", "admin", "edge"))
    lines = (await json_body(request, LOGS, ctl.config.requests.node_report))["lines"]
    if token.kind == "edge" and any(r["source"] != "router" for r in lines):
        raise Forbidden("an edge token may only post router lines")
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_KEY:
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY} characters")
    ctl.store.append_logs(lines, None if key is None else f"logs:{token.id}:{key}")
    return JSONResponse({"ok": True})


async def get_blob(request: Request) -> Response:
    """Download a source package or droplet (nodes only)."""
    ctl = control_of(request)
    require(request, ctl.store, ("node", "admin"))
    return FileResponse(
        ctl.blobs.existing(request.path_params["digest"]), media_type="application/octet-stream"
    )


async def put_blob(request: Request) -> Response:
    """Upload a droplet; the body's sha256 must equal the digest in the path."""
    ctl = control_of(request)
    require(request, ctl.store, ("node", "admin"))
    digest = request.path_params["digest"]
    ctl.blobs.path(digest)
    check_length(request, ctl.config.max_upload, "droplet")
    temp = await ctl.blobs.receive(request.stream(), ctl.config.max_upload)
    try:
        ctl.blobs.commit(temp, expected=digest)
    finally:
        temp.unlink(missing_ok=True)
    return JSONResponse({"digest": digest}, status_code=201)
