"""Folds a node's heartbeat (its actual instances) into the store.

Rules:
- a reported instance updates its row's state, port and crash reason; STOPPED rows
  are forgotten;
- an instance the control plane does not know (its app was deleted, or it was
  rescheduled while the node was lost) is told to stop, once per report;
- a row the node does not report is gone once the node has received the row's
  start work (`work_seq` ≤ the node's acknowledged sequence): after an agent
  restart (new boot id) it is forgotten quietly, otherwise it counts as a crash.
"""

from __future__ import annotations

from typing import Any

from control.model import LIVE_STATES, InstanceState
from control.rows import InstanceChanges, InstanceRow
from control.store import Store
from control.wire_node import StopPayload


def node_text(value: Any) -> str | None:
    """A short descriptive field a node reports (its seccomp filter), kept as text."""
    return None if value is None else str(value)[:200]


def apply_heartbeat(
    store: Store, node_id: str, report: dict[str, Any], asked_to_stop: set[str]
) -> None:
    """Record one heartbeat from node `node_id`."""
    before = store.touch_node(
        node_id,
        address=report["address"],
        memory_mb=int(report["memory_mb"]),
        tier=report.get("tier"),
        boot=str(report.get("boot", "")),
        seccomp=node_text(report.get("seccomp")),
    )
    rebooted = before["boot"] is not None and before["boot"] != report.get("boot")
    if rebooted:
        store.add_event(None, "node-restarted", f"node {before['name']} agent restarted")
    rows = {r["id"]: r for r in store.instance_rows(node=node_id)}
    reported = {i["id"]: i for i in report.get("instances", [])}
    for iid, rep in reported.items():
        row = rows.get(iid)
        if row is None:
            if rep["state"] in LIVE_STATES and iid not in asked_to_stop:
                asked_to_stop.add(iid)
                stop: StopPayload = {"instance": iid}
                store.enqueue(node_id, "stop", stop)
            continue
        _fold(store, row, rep, report["address"])
    asked_to_stop.intersection_update(reported)
    acked = int(report.get("work_seq", 0))
    for iid, row in rows.items():
        if iid in reported or row["work_seq"] > acked or row["state"] == InstanceState.CRASHED:
            continue
        if rebooted or row["stopping"]:
            store.forget_instances([iid])
        else:
            _crash(store, row, "instance vanished from its node")


def _fold(store: Store, row: InstanceRow, rep: dict[str, Any], address: str) -> None:
    state = InstanceState(rep["state"])
    if state == InstanceState.STOPPED:
        store.forget_instances([row["id"]])
        return
    if state == InstanceState.CRASHED:
        if row["state"] != InstanceState.CRASHED:
            _crash(store, row, rep.get("reason") or "crashed")
        return
    changes: InstanceChanges = {}
    if state != row["state"] and not (
        row["state"] == InstanceState.STOPPING and state in LIVE_STATES
    ):
        changes.update({"state": state, "since": store.clock()})
        if state == InstanceState.RUNNING:
            changes["started_at"] = store.clock()
    if rep.get("port") and (rep["port"] != row["port"] or address != row["address"]):
        changes.update({"port": rep["port"], "address": address})
    if changes:
        store.update_instance(row["id"], **changes)


def _crash(store: Store, row: InstanceRow, reason: str) -> None:
    if row["stopping"]:
        store.forget_instances([row["id"]])
        return
    store.update_instance(
        row["id"], state=InstanceState.CRASHED, since=store.clock(), reason=reason
    )
    store.add_event(
        row["app"],
        "crash",
        f"{row['process']}.{row['idx']} crashed: {reason} (restarts so far: {row['restarts']})",
    )
