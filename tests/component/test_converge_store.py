"""The loop around the reconciler over a real SQLite store: what a heartbeat and an
unplaceable plan write (moved from tests/unit, which holds pure functions only)."""

from __future__ import annotations

from pathlib import Path

from control.converge import report_unplaced
from control.heartbeats import apply_heartbeat
from control.model import InstanceState, Placement, Plan
from control.store import Store


def test_returning_node_duplicates_are_stopped_by_heartbeat(tmp_path: Path) -> None:
    """A node declared lost comes back still running an instance that was rescheduled:
    the control plane no longer knows that instance and tells the node to stop it."""
    store = Store(tmp_path / "db")
    nid = store.add_node("back", "127.0.0.1", 1024, "plain")
    asked: set[str] = set()
    report = {
        "address": "127.0.0.1",
        "memory_mb": 1024,
        "boot": "b1",
        "work_seq": 0,
        "instances": [{"id": "a-web-0-old", "app": "a", "state": InstanceState.RUNNING, "port": 1}],
    }
    apply_heartbeat(store, nid, report, asked)
    apply_heartbeat(store, nid, report, asked)  # asked once, not on every beat
    stops = [w for w in store.work_after(nid, 0) if w["kind"] == "stop"]
    assert [w["instance"] for w in stops] == ["a-web-0-old"]
    store.close()


def test_an_instance_no_node_has_room_for_is_reported_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.create_app("a")
    known: set[tuple[str, str, int]] = set()
    stuck = Plan(unplaced=(Placement("a", "web", 0, 1, 512, reason="no node has joined"),))
    report_unplaced(store, stuck, known)
    report_unplaced(store, stuck, known)  # still stuck: not said again
    events = [e for e in store.list_events("a") if e["kind"] == "unplaced"]
    assert [e["detail"] for e in events] == ["web.0 cannot be placed: no node has joined"]
    report_unplaced(store, Plan(), known)  # placed at last; stuck again later:
    report_unplaced(store, stuck, known)  # said again
    assert len([e for e in store.list_events("a") if e["kind"] == "unplaced"]) == 2
    store.close()
