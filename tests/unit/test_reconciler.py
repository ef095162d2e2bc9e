"""The reconciler as tables: desired + observed + now in, plan out. No servers, no sleeping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.model import CRASHED, NODE_LOST, RUNNING, STARTING, STOPPED, AppSpec, Instance, Node
from control.reconciler import Policy, reconcile, restart_delay

NOW = 1000.0
NODE = Node("n1", "one", 4096, NOW)
WEB = {"web": "run"}


def app(scale: int = 1, release: int = 1, started: bool = True, **kw: object) -> AppSpec:
    return AppSpec("a", started, release, dict(kw.get("processes", WEB)),  # type: ignore[arg-type]
                   {"web": scale}, 256)


def inst(iid: str, index: int = 0, release: int = 1, state: str = RUNNING, node: str = "n1",
         stopping: bool = False, restarts: int = 0, since: float = NOW - 10) -> Instance:
    return Instance(iid, "a", "web", index, release, node, state, stopping, restarts, since)


def starts(plan):  # type: ignore[no-untyped-def]
    return sorted((p.index, p.release, p.restarts, p.node) for p in plan.start)


def test_missing_instance_is_started_on_a_live_node() -> None:
    plan = reconcile([app()], [], [NODE], NOW)
    assert starts(plan) == [(0, 1, 0, "n1")]
    assert not plan.stop


def test_extra_instance_beyond_scale_is_stopped() -> None:
    plan = reconcile([app(scale=1)], [inst("i0"), inst("i1", index=1)], [NODE], NOW)
    assert plan.stop == ["i1"]
    assert not plan.start


def test_duplicate_in_one_slot_keeps_the_running_one() -> None:
    plan = reconcile([app()], [inst("old", state=STARTING), inst("run")], [NODE], NOW)
    assert plan.stop == ["old"]


def test_new_release_starts_beside_old_and_stops_old_only_when_new_runs() -> None:
    plan = reconcile([app(release=2)], [inst("v1")], [NODE], NOW)
    assert starts(plan) == [(0, 2, 0, "n1")] and not plan.stop
    plan = reconcile([app(release=2)], [inst("v1"), inst("v2", release=2, state=STARTING)],
                     [NODE], NOW)
    assert not plan.start and not plan.stop
    plan = reconcile([app(release=2)], [inst("v1"), inst("v2", release=2)], [NODE], NOW)
    assert plan.stop == ["v1"]


def test_stopped_app_stops_everything() -> None:
    plan = reconcile([app(started=False)], [inst("i0"), inst("i1", index=1)], [NODE], NOW)
    assert sorted(plan.stop) == ["i0", "i1"]


def test_instance_of_deleted_app_is_stopped_and_stopped_rows_forgotten() -> None:
    plan = reconcile([], [inst("live"), inst("gone", state=STOPPED, index=1)], [NODE], NOW)
    assert plan.stop == ["live"] and plan.forget == ["gone"]


def test_instance_already_stopping_is_not_stopped_twice() -> None:
    plan = reconcile([app(scale=0)], [inst("i0", stopping=True)], [NODE], NOW)
    assert not plan.stop and not plan.forget


@pytest.mark.parametrize(("restarts", "crashed_ago", "restarted"), [
    (0, 0.0, True),       # first three crashes restart at once
    (2, 0.0, True),
    (3, 10.0, False),     # fourth waits 30 s
    (3, 30.0, True),
    (4, 59.0, False),     # then 60 s
    (4, 60.0, True),
    (20, 959.0, False),   # capped at 16 min
    (20, 960.0, True),
    (200, 10_000.0, False),  # gave up
])
def test_crash_backoff(restarts: int, crashed_ago: float, restarted: bool) -> None:
    crashed = inst("c", state=CRASHED, restarts=restarts, since=NOW - crashed_ago)
    plan = reconcile([app()], [crashed], [NODE], NOW)
    assert bool(plan.start) is restarted
    if restarted:
        assert plan.start[0].restarts == restarts + 1 and plan.forget == ["c"]


def test_new_release_resets_the_crash_count() -> None:
    crashed = inst("c", state=CRASHED, restarts=50, since=NOW)
    plan = reconcile([app(release=2)], [crashed], [NODE], NOW)
    assert starts(plan) == [(0, 2, 0, "n1")]


def test_restart_count_resets_after_five_healthy_minutes() -> None:
    plan = reconcile([app()], [inst("i", restarts=4, since=NOW - 301)], [NODE], NOW)
    assert plan.reset_restarts == ["i"]
    plan = reconcile([app()], [inst("i", restarts=4, since=NOW - 299)], [NODE], NOW)
    assert not plan.reset_restarts


def test_silent_node_is_lost_and_its_instances_move() -> None:
    silent = Node("n1", "one", 4096, NOW - 16)
    other = Node("n2", "two", 4096, NOW)
    plan = reconcile([app()], [inst("i0")], [silent, other], NOW)
    assert plan.lost_nodes == ["n1"] and plan.forget == ["i0"]
    assert starts(plan) == [(0, 1, 0, "n2")]


def test_nothing_is_placed_when_no_node_is_live() -> None:
    plan = reconcile([app()], [], [Node("n1", "one", 4096, NOW, NODE_LOST)], NOW)
    assert not plan.start and len(plan.unplaced) == 1


def test_restart_delay_policy_numbers() -> None:
    policy = Policy()
    assert [restart_delay(n, policy) for n in (0, 1, 2, 3, 4, 5, 8, 9, 50)] == [
        0, 0, 0, 30, 60, 120, 960, 960, 960]


@given(scale=st.integers(0, 6), states=st.lists(
    st.tuples(st.integers(0, 7), st.sampled_from([STARTING, RUNNING, CRASHED, STOPPED]),
              st.integers(1, 2), st.booleans()), max_size=12))
def test_never_two_live_current_instances_in_one_slot_after_plan(
        scale: int, states: list[tuple[int, str, int, bool]]) -> None:
    instances = [inst(f"i{n}", index=i, state=s, release=r, stopping=stop)
                 for n, (i, s, r, stop) in enumerate(states)]
    plan = reconcile([app(scale=scale, release=2)], instances, [NODE], NOW)
    stopped, forgotten = set(plan.stop), set(plan.forget)
    survivors = [i for i in instances if i.id not in stopped and i.id not in forgotten
                 and i.state in (STARTING, RUNNING) and not i.stopping]
    for index in range(8):
        live_current = [i for i in survivors if i.index == index and i.release == 2]
        started = [p for p in plan.start if p.index == index]
        assert len(live_current) + len(started) <= 1
        if index >= scale:
            assert not live_current and not started


def test_rolling_deploy_replaces_one_slot_at_a_time_by_default() -> None:
    old = [inst(f"o{i}", index=i) for i in range(3)]
    plan = reconcile([app(scale=3, release=2)], old, [NODE], NOW)
    assert starts(plan) == [(0, 2, 0, "n1")]
    mid = [*old, inst("n0", index=0, release=2, state=STARTING)]
    assert reconcile([app(scale=3, release=2)], mid, [NODE], NOW).is_empty()
    mid[-1] = inst("n0", index=0, release=2)
    plan = reconcile([app(scale=3, release=2)], mid, [NODE], NOW)
    assert plan.stop == ["o0"] and starts(plan) == [(1, 2, 0, "n1")]


def test_max_in_flight_widens_the_rollout() -> None:
    old = [inst(f"o{i}", index=i) for i in range(3)]
    spec = AppSpec("a", True, 2, WEB, {"web": 3}, 256, max_in_flight=2)
    assert [p.index for p in reconcile([spec], old, [NODE], NOW).start] == [0, 1]


def test_scale_up_during_a_deploy_is_not_throttled() -> None:
    old = [inst("o0", index=0)]
    plan = reconcile([app(scale=3, release=2)], old, [NODE], NOW)
    assert starts(plan) == [(0, 2, 0, "n1"), (1, 2, 0, "n1"), (2, 2, 0, "n1")]


def apply_plan(instances: list[Instance], plan) -> list[Instance]:  # type: ignore[no-untyped-def]
    """What the world looks like once a plan is carried out and every start is RUNNING."""
    from dataclasses import replace
    gone = set(plan.forget)
    stopping = set(plan.stop)
    out = [replace(i, stopping=i.stopping or i.id in stopping) for i in instances
           if i.id not in gone]
    out = [i for i in out if not i.stopping and i.state in (STARTING, RUNNING)]
    out = [replace(i, state=RUNNING) for i in out]
    out += [Instance(f"new{n}", p.app, p.process, p.index, p.release, p.node or "?", RUNNING)
            for n, p in enumerate(plan.start)]
    return out


state_strategy = st.lists(st.tuples(st.integers(0, 5), st.sampled_from(
    [STARTING, RUNNING, CRASHED, STOPPED]), st.integers(1, 2), st.booleans()), max_size=10)


@given(scale=st.integers(0, 5), states=state_strategy)
def test_converging_runs_each_index_once_and_then_plans_nothing(
        scale: int, states: list[tuple[int, str, int, bool]]) -> None:
    world = [inst(f"i{n}", index=i, state=s, release=r, stopping=stop)
             for n, (i, s, r, stop) in enumerate(states)]
    spec = app(scale=scale, release=2)
    for _ in range(12):   # each round: plan, apply, everything started becomes RUNNING
        plan = reconcile([spec], world, [NODE], NOW)
        world = apply_plan(world, plan)
        if plan.is_empty():
            break
    assert reconcile([spec], world, [NODE], NOW).is_empty()
    indexes = sorted(i.index for i in world)
    assert indexes == list(range(scale))
    assert all(i.release == 2 for i in world)


@given(states=state_strategy, lost_age=st.floats(15.01, 1000))
def test_nothing_is_ever_placed_on_a_lost_node(states: list[tuple[int, str, int, bool]],
                                               lost_age: float) -> None:
    world = [inst(f"i{n}", index=i, state=s, release=r, stopping=stop)
             for n, (i, s, r, stop) in enumerate(states)]
    nodes = [Node("n1", "one", 4096, NOW - lost_age), Node("n2", "two", 4096, NOW)]
    plan = reconcile([app(scale=4, release=2)], world, nodes, NOW)
    assert all(p.node == "n2" for p in plan.start)
    assert set(plan.forget) >= {i.id for i in world}


def test_draining_node_instances_start_elsewhere_before_they_stop() -> None:
    draining = Node("n1", "one", 4096, NOW, "draining")
    other = Node("n2", "two", 4096, NOW)
    world = [inst("a", index=0), inst("b", index=1)]
    plan = reconcile([app(scale=2)], world, [draining, other], NOW)
    assert starts(plan) == [(0, 1, 0, "n2")] and not plan.stop      # one at a time, no gap
    world.append(inst("a2", index=0, node="n2"))
    plan = reconcile([app(scale=2)], world, [draining, other], NOW)
    assert plan.stop == ["a"] and starts(plan) == [(1, 1, 0, "n2")]


def test_returning_node_duplicates_are_stopped_by_heartbeat(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A node declared lost comes back still running an instance that was rescheduled:
    the control plane no longer knows that instance and tells the node to stop it."""
    from control.heartbeats import apply_heartbeat
    from control.store import Store

    store = Store(tmp_path / "db")
    nid = store.add_node("back", "127.0.0.1", 1024, "plain")
    asked: set[str] = set()
    report = {"address": "127.0.0.1", "memory_mb": 1024, "boot": "b1", "work_seq": 0,
              "instances": [{"id": "a-web-0-old", "app": "a", "state": RUNNING, "port": 1}]}
    apply_heartbeat(store, nid, report, asked)
    apply_heartbeat(store, nid, report, asked)          # asked once, not on every beat
    stops = [w for w in store.work_after(nid, 0) if w["kind"] == "stop"]
    assert [w["instance"] for w in stops] == ["a-web-0-old"]


def test_an_instance_no_node_has_room_for_is_reported_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from control.converge import report_unplaced
    from control.model import Placement, Plan
    from control.store import Store

    store = Store(tmp_path / "db")
    store.create_app("a")
    known: set[tuple[str, str, int]] = set()
    stuck = Plan(unplaced=[Placement("a", "web", 0, 1, 512, reason="no node has joined")])
    report_unplaced(store, stuck, known)
    report_unplaced(store, stuck, known)          # still stuck: not said again
    events = [e for e in store.list_events("a") if e["kind"] == "unplaced"]
    assert [e["detail"] for e in events] == [
        "web.0 cannot be placed: no node has joined"]
    report_unplaced(store, Plan(), known)         # placed at last; stuck again later:
    report_unplaced(store, stuck, known)          # said again
    assert len([e for e in store.list_events("a") if e["kind"] == "unplaced"]) == 2
