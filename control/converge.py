"""The thin loop around the reconciler: load state, decide, apply, repeat.

It runs whenever the store changes and at least once a second (time alone can make
a node lost or a backoff expire). Applying a plan only writes rows and enqueues
work items; nodes pick those up by long-polling. Queued builds are handed to a
stager here as well, and builds no node reports on in time are failed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection

import anyio

from control.blobs import BlobStore
from control.model import (
    BuildState,
    DeploymentState,
    InstanceState,
    NodeState,
    Placement,
    Plan,
)
from control.notify import Notifier
from control.reconciler import Policy, build_overdue, reconcile
from control.releases import progress
from control.rows import BuildOptions, BuildRow, InstanceRow
from control.scaling import Scaling
from control.scheduler import pick_stager
from control.store import Store
from control.tasks import fail_lost_tasks, fail_overdue_tasks
from control.wire_node import StagePayload, StartPayload, StopPayload

log = logging.getLogger("foundry.control")
DRAIN_SECONDS = 1.0


def assign_builds(store: Store, policy: Policy) -> None:
    """Send each queued build to a stager node, if any node is live."""
    queued = store.builds_in(BuildState.QUEUED)
    if not queued:
        return
    node = pick_stager(store.nodes(), store.clock(), policy.node_ttl)
    if node is None:
        return
    for build in queued:
        app = store.get_app(build["app"])
        store.set_build(build["id"], BuildState.STAGING, node=node)
        store.enqueue(
            node, "stage", stage_payload(build, app["env"], store.build_options(build["id"]))
        )
        log.info("build-assigned build=%s app=%s node=%s", build["id"], build["app"], node)


def stage_payload(build: BuildRow, env: dict[str, str], options: BuildOptions) -> StagePayload:
    """The `stage` work item: the build, its source and the options the push named."""
    payload: StagePayload = {
        "build": build["id"],
        "app": build["app"],
        "source": build["source"],
        "env": env,
    }
    if options.get("buildpack"):
        payload["buildpack"] = str(options["buildpack"])
    if options.get("no_cache"):
        payload["no_cache"] = True
    if options.get("processes"):
        payload["processes"] = dict(options["processes"])
    return payload


def fail_lost_builds(store: Store, lost: Collection[str]) -> None:
    for build in store.builds_in(BuildState.STAGING):
        if build["node"] in lost:
            store.set_build(build["id"], BuildState.FAILED, error="the staging node was lost")


def fail_overdue_builds(store: Store, policy: Policy) -> None:
    """Fail the builds no node took, or reported on, within the build timeout."""
    now = store.clock()
    for state in (BuildState.QUEUED, BuildState.STAGING):
        for build in store.builds_in(state):
            phase = state == BuildState.STAGING and store.release_phase_of(build["id"]) is not None
            why = build_overdue(
                state, build["created_at"], build["heard_at"], now, policy, release_phase=phase
            )
            if why is not None:
                store.set_build(build["id"], BuildState.FAILED, error=why)
                store.add_event(build["app"], "build-failed", f"build {build['id']}: {why}")
                log.warning(
                    "build-overdue build=%s app=%s reason=%s", build["id"], build["app"], why
                )


def start_payload(store: Store, iid: str, p: Placement) -> StartPayload:
    release = store.get_release(p.app, p.release)
    app = store.get_app(p.app)
    return {
        "instance": iid,
        "app": p.app,
        "process": p.process,
        "index": p.index,
        "release": p.release,
        "droplet": release["droplet"],
        "command": release["processes"][p.process],
        "env": release["env"],
        "memory_mb": p.memory_mb,
        "health_check": app["health_check"] if p.process == "web" else "process",
    }


def report_unplaced(store: Store, plan: Plan, known: set[tuple[str, str, int]]) -> None:
    """Say once, as an app event, when an instance finds no node with room for it."""
    now = {(p.app, p.process, p.index) for p in plan.unplaced}
    for app, process, index in sorted(now - known):
        want = next(
            p for p in plan.unplaced if (p.app, p.process, p.index) == (app, process, index)
        )
        store.add_event(app, "unplaced", f"{process}.{index} cannot be placed: {want.reason}")
    known.clear()
    known.update(now)


def apply(store: Store, plan: Plan) -> None:
    """Carry out a plan: rows and work items only."""
    for nid in plan.lost_nodes:
        store.set_node_state(nid, NodeState.LOST)
        store.add_event(None, "node-lost", f"node {nid} missed its heartbeats")
    fail_lost_builds(store, plan.lost_nodes)
    rows = {r["id"]: r for r in store.instance_rows()}
    store.forget_instances(plan.forget)
    for iid in plan.stop:
        row = rows.get(iid)
        if row is not None:
            stop_instance(store, row)
    for iid in plan.reset_restarts:
        store.update_instance(iid, restarts=0)
    for iid in plan.forget:
        row = rows.get(iid)
        if row is not None and row["node"] in plan.lost_nodes:
            store.add_event(
                row["app"],
                "reschedule",
                f"{row['process']}.{row['idx']} was on "
                f"lost node {row['node']}; placing it elsewhere",
            )
    for p in plan.start:
        assert p.node is not None
        iid = f"{p.app}-{p.process}-{p.index}-{uuid.uuid4().hex[:8]}"
        seq = store.enqueue(p.node, "start", start_payload(store, iid, p))
        store.add_instance(
            app=p.app,
            process=p.process,
            index=p.index,
            release=p.release,
            node=p.node,
            memory_mb=p.memory_mb,
            restarts=p.restarts,
            work_seq=seq,
            iid=iid,
            generation=p.generation,
        )
        if p.restarts:
            store.add_event(
                p.app, "restart", f"{p.process}.{p.index} restarted (restart {p.restarts})"
            )


def stop_instance(store: Store, row: InstanceRow) -> None:
    """Ask the instance's node to stop it; the reconciler then starts its slot afresh."""
    store.update_instance(row["id"], stopping=1)
    # A routed instance is out of the routing table from now on; the node waits
    # `drain` seconds before SIGTERM so requests already on their way finish.
    routed = row["state"] == InstanceState.RUNNING and row["process"] == "web"
    stop: StopPayload = {"instance": row["id"], "drain": DRAIN_SECONDS if routed else 0}
    store.enqueue(row["node"], "stop", stop)


def finish_deployments(store: Store) -> None:
    """Mark rollouts whose every slot runs the wanted release as done."""
    running = store.deployments(running=True)
    if not running:
        return
    specs = {a.name: a for a in store.app_specs()}
    instances = store.instances()
    for dep in running:
        spec = specs.get(dep["app"])
        if spec is None:
            store.finish_deployment(dep["id"], DeploymentState.CANCELED)
            continue
        _, _, done = progress(spec, instances)
        if done:
            store.finish_deployment(dep["id"], DeploymentState.SUCCEEDED)
            took = store.clock() - dep["created_at"]
            store.add_event(
                dep["app"],
                "deployed",
                f"{dep['kind']} of v{dep['to_release']} finished in {took:.1f} s",
            )


def converge_once(
    store: Store, policy: Policy, unplaced: set[tuple[str, str, int]] | None = None
) -> Plan:
    assign_builds(store, policy)
    fail_overdue_builds(store, policy)
    plan = reconcile(store.app_specs(), store.instances(), store.nodes(), store.clock(), policy)
    if not plan.is_empty():
        apply(store, plan)
    if unplaced is not None:
        report_unplaced(store, plan, unplaced)
    finish_deployments(store)
    return plan


async def run(
    store: Store, notifier: Notifier, policy: Policy, scaling: Scaling, blobs: BlobStore
) -> None:
    """Converge forever: after every change, and every second."""
    unplaced: set[tuple[str, str, int]] = set()
    while True:
        event = notifier.snapshot()
        try:
            scaling.autoscale_once()
            plan = converge_once(store, policy, unplaced)
            fail_lost_tasks(store, blobs, plan.lost_nodes)
            fail_overdue_tasks(store, blobs)
        except Exception:
            log.exception("converge-failed")
        await Notifier.wait(event, 1.0)
        await anyio.sleep(0)
