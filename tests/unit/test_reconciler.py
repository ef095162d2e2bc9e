"""The reconciler as a table: desired + observed + now in, the whole plan out.

Every case names what it expects in each of the plan's six lists; a list a case does not
name must be empty (`assert_plan` checks all six), so a branch that starts doing one
thing too many fails here. One case per branch of control/reconciler.py, then the
multi-pass scenarios and the properties that must hold for any input."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.model import AppSpec, Instance, InstanceState, Node, NodeState, Placement, Plan
from control.reconciler import Policy, reconcile, restart_delay

STARTING, RUNNING = InstanceState.STARTING, InstanceState.RUNNING
STOPPING, STOPPED, CRASHED = InstanceState.STOPPING, InstanceState.STOPPED, InstanceState.CRASHED
NOW = 1000.0
NODE = Node("n1", "one", 4096, NOW)
OTHER = Node("n2", "two", 4096, NOW)
SILENT = Node("n1", "one", 4096, NOW - 16)  # past the 15 s TTL
DRAINING = Node("n1", "one", 4096, NOW, NodeState.DRAINING)
WEB = {"web": "run"}


def app(
    scale: int = 1,
    release: int = 1,
    started: bool = True,
    *,
    generation: int = 0,
    max_in_flight: int = 1,
    processes: dict[str, str] | None = None,
) -> AppSpec:
    return AppSpec(
        "a",
        started,
        release,
        dict(WEB if processes is None else processes),
        {"web": scale},
        256,
        max_in_flight=max_in_flight,
        generation=generation,
    )


def inst(
    iid: str,
    index: int = 0,
    release: int = 1,
    state: InstanceState = RUNNING,
    node: str = "n1",
    stopping: bool = False,
    restarts: int = 0,
    since: float = NOW - 10,
    *,
    app: str = "a",
    process: str = "web",
    generation: int = 0,
) -> Instance:
    return Instance(
        iid, app, process, index, release, node, state, stopping, restarts, since, 256, generation
    )


# A started or unplaced instance as a case names it: (process, index, release, restarts,
# node); unplaced ones have node None.
Start = tuple[str, int, int, int, str | None]


@dataclass(frozen=True)
class Case:
    """One reconcile pass and everything its plan must hold (unnamed lists: empty)."""

    name: str
    apps: list[AppSpec]
    instances: list[Instance]
    nodes: list[Node] = field(default_factory=lambda: [NODE])
    start: list[Start] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    lost_nodes: list[str] = field(default_factory=list)
    reset_restarts: list[str] = field(default_factory=list)
    unplaced: list[Start] = field(default_factory=list)


def starts(placements: tuple[Placement, ...]) -> list[Start]:
    return sorted((p.process, p.index, p.release, p.restarts, p.node) for p in placements)


def assert_plan(plan: Plan, case: Case) -> None:
    """All six lists of `plan` are what `case` names, and nothing else."""
    assert {
        "start": starts(plan.start),
        "stop": sorted(plan.stop),
        "forget": sorted(plan.forget),
        "lost_nodes": sorted(plan.lost_nodes),
        "reset_restarts": sorted(plan.reset_restarts),
        "unplaced": starts(plan.unplaced),
    } == {
        "start": sorted(case.start),
        "stop": sorted(case.stop),
        "forget": sorted(case.forget),
        "lost_nodes": sorted(case.lost_nodes),
        "reset_restarts": sorted(case.reset_restarts),
        "unplaced": sorted(case.unplaced),
    }


def crashed(restarts: int, ago: float, release: int = 1) -> Instance:
    return inst("c", state=CRASHED, restarts=restarts, since=NOW - ago, release=release)


CASES = [
    # --- a slot with nothing in it -------------------------------------------------------
    Case("missing instance is started on a live node", [app()], [], start=[("web", 0, 1, 0, "n1")]),
    Case("an app never built runs nothing", [app(release=0)], []),
    Case(
        "release-phase process type runs nothing until scaled",
        [app(processes={"web": "run", "release": "migrate"})],
        [],
        start=[("web", 0, 1, 0, "n1")],
    ),
    Case(
        "no live node: the instance is unplaced",
        [app()],
        [],
        nodes=[Node("n1", "one", 4096, NOW, NodeState.LOST)],
        unplaced=[("web", 0, 1, 0, None)],
    ),
    Case(
        "a STOPPED row is forgotten and its slot started afresh",
        [app()],
        [inst("s", state=STOPPED)],
        forget=["s"],
        start=[("web", 0, 1, 0, "n1")],
    ),
    Case(
        "an instance being stopped is replaced at once",
        [app()],
        [inst("i", stopping=True)],
        start=[("web", 0, 1, 0, "n1")],
    ),
    Case(
        "a STOPPING report waits for STOPPED before it is forgotten",
        [app()],
        [inst("i", state=STOPPING, stopping=True)],
        start=[("web", 0, 1, 0, "n1")],
    ),
    # --- a slot with a current instance ------------------------------------------------
    Case("a running current instance is left alone", [app()], [inst("i")]),
    Case(
        "duplicates in one slot keep the running one",
        [app()],
        [inst("old", state=STARTING), inst("run")],
        stop=["old"],
    ),
    Case(
        "duplicates both starting keep the older one",
        [app()],
        [inst("x", state=STARTING, since=NOW - 5), inst("y", state=STARTING, since=NOW - 9)],
        stop=["x"],
    ),
    Case(
        "crashed rows beside a current instance are forgotten",
        [app()],
        [inst("i"), inst("c", state=CRASHED, since=NOW - 50)],
        forget=["c"],
    ),
    Case(
        "restart count resets after five healthy minutes",
        [app()],
        [inst("i", restarts=4, since=NOW - 301)],
        reset_restarts=["i"],
    ),
    Case(
        "restart count stays before five healthy minutes",
        [app()],
        [inst("i", restarts=4, since=NOW - 299)],
    ),
    # --- replacing old instances (release, generation, draining node) -------------------
    Case(
        "a new release starts beside the old one",
        [app(release=2)],
        [inst("v1")],
        start=[("web", 0, 2, 0, "n1")],
    ),
    Case(
        "the old release runs on while the new one starts",
        [app(release=2)],
        [inst("v1"), inst("v2", release=2, state=STARTING)],
    ),
    Case(
        "the old release stops once the new one runs",
        [app(release=2)],
        [inst("v1"), inst("v2", release=2)],
        stop=["v1"],
    ),
    Case(
        "a restart (new generation) replaces like a release",
        [app(generation=1)],
        [inst("g0")],
        start=[("web", 0, 1, 0, "n1")],
    ),
    Case(
        "rolling: one slot at a time by default",
        [app(scale=3, release=2)],
        [inst(f"o{i}", index=i) for i in range(3)],
        start=[("web", 0, 2, 0, "n1")],
    ),
    Case(
        "rolling: the budget is spent while a slot is mid-replacement",
        [app(scale=3, release=2)],
        [*(inst(f"o{i}", index=i) for i in range(3)), inst("n0", release=2, state=STARTING)],
    ),
    Case(
        "max_in_flight widens the rollout",
        [app(scale=3, release=2, max_in_flight=2)],
        [inst(f"o{i}", index=i) for i in range(3)],
        start=[("web", 0, 2, 0, "n1"), ("web", 1, 2, 0, "n1")],
    ),
    Case(
        "scale-up during a deploy is not throttled",
        [app(scale=3, release=2)],
        [inst("o0")],
        start=[("web", 0, 2, 0, "n1"), ("web", 1, 2, 0, "n1"), ("web", 2, 2, 0, "n1")],
    ),
    Case(
        "an instance on a draining node starts elsewhere before it stops",
        [app(scale=2)],
        [inst("a"), inst("b", index=1)],
        nodes=[DRAINING, OTHER],
        start=[("web", 0, 1, 0, "n2")],
    ),
    Case(
        "it stops once its successor runs",
        [app(scale=2)],
        [inst("a"), inst("b", index=1), inst("a2", node="n2")],
        nodes=[DRAINING, OTHER],
        stop=["a"],
        start=[("web", 1, 1, 0, "n2")],
    ),
    # --- crashes -------------------------------------------------------------------------
    Case(
        "first crashes restart at once",
        [app()],
        [crashed(0, 0)],
        forget=["c"],
        start=[("web", 0, 1, 1, "n1")],
    ),
    Case(
        "third crash still restarts at once",
        [app()],
        [crashed(2, 0)],
        forget=["c"],
        start=[("web", 0, 1, 3, "n1")],
    ),
    Case("fourth crash waits 30 s", [app()], [crashed(3, 10)]),
    Case(
        "fourth crash restarts after 30 s",
        [app()],
        [crashed(3, 30)],
        forget=["c"],
        start=[("web", 0, 1, 4, "n1")],
    ),
    Case("fifth crash waits 60 s", [app()], [crashed(4, 59)]),
    Case(
        "fifth crash restarts after 60 s",
        [app()],
        [crashed(4, 60)],
        forget=["c"],
        start=[("web", 0, 1, 5, "n1")],
    ),
    Case(
        "backoff is capped at 16 min",
        [app()],
        [crashed(20, 960)],
        forget=["c"],
        start=[("web", 0, 1, 21, "n1")],
    ),
    Case("a slot that crashed 200 times is given up", [app()], [crashed(200, 10_000)]),
    Case(
        "giving up keeps only the last crash",
        [app()],
        [crashed(200, 10), inst("older", state=CRASHED, restarts=199, since=NOW - 99)],
        forget=["older"],
    ),
    Case(
        "the newest crash decides the delay",
        [app()],
        [crashed(3, 10), inst("older", state=CRASHED, restarts=2, since=NOW - 99)],
    ),
    Case(
        "a new release resets the crash count",
        [app(release=2)],
        [crashed(50, 0)],
        forget=["c"],
        start=[("web", 0, 2, 0, "n1")],
    ),
    # --- instances nobody wants ------------------------------------------------------------
    Case(
        "instance beyond scale is stopped",
        [app(scale=1)],
        [inst("i0"), inst("i1", index=1)],
        stop=["i1"],
    ),
    Case(
        "a stopped app stops everything",
        [app(started=False)],
        [inst("i0"), inst("i1", index=1)],
        stop=["i0", "i1"],
    ),
    Case(
        "a process type the release dropped is stopped",
        [app()],
        [inst("i"), inst("w", process="worker")],
        stop=["w"],
    ),
    Case(
        "a deleted app's instances stop and its dead rows go",
        [],
        [inst("live"), inst("gone", index=1, state=STOPPED), inst("dead", index=2, state=CRASHED)],
        stop=["live"],
        forget=["dead", "gone"],
    ),
    Case(
        "an instance already asked to stop is not asked twice",
        [app(scale=0)],
        [inst("i0", stopping=True)],
    ),
    Case("a STOPPING instance nobody wants waits for STOPPED", [], [inst("i0", state=STOPPING)]),
    # --- nodes -------------------------------------------------------------------------
    Case(
        "a silent node is lost and its instances move",
        [app()],
        [inst("i0")],
        nodes=[SILENT, OTHER],
        lost_nodes=["n1"],
        forget=["i0"],
        start=[("web", 0, 1, 0, "n2")],
    ),
    Case(
        "a node marked lost is not lost again; its rows still go",
        [app()],
        [inst("i0")],
        nodes=[Node("n1", "one", 4096, NOW - 99, NodeState.LOST), OTHER],
        forget=["i0"],
        start=[("web", 0, 1, 0, "n2")],
    ),
    Case(
        "a lost node's instances of a deleted app are forgotten, not stopped",
        [],
        [inst("i0")],
        nodes=[SILENT],
        lost_nodes=["n1"],
        forget=["i0"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reconcile(case: Case) -> None:
    assert_plan(reconcile(case.apps, case.instances, case.nodes, NOW), case)


def test_the_plan_is_immutable() -> None:
    plan = reconcile([app()], [], [NODE], NOW)
    assert all(
        isinstance(getattr(plan, f), tuple)
        for f in ("start", "stop", "forget", "lost_nodes", "reset_restarts", "unplaced")
    )


def test_restart_delay_policy_numbers() -> None:
    policy = Policy()
    assert [restart_delay(n, policy) for n in (0, 1, 2, 3, 4, 5, 8, 9, 50)] == [
        0,
        0,
        0,
        30,
        60,
        120,
        960,
        960,
        960,
    ]


def apply_plan(instances: list[Instance], plan: Plan) -> list[Instance]:
    """What the world looks like once a plan is carried out and every start is RUNNING."""
    gone = set(plan.forget)
    stopping = set(plan.stop)
    out = [
        replace(i, stopping=i.stopping or i.id in stopping) for i in instances if i.id not in gone
    ]
    out = [i for i in out if not i.stopping and i.state in (STARTING, RUNNING)]
    out = [replace(i, state=RUNNING) for i in out]
    out += [
        Instance(f"new{n}", p.app, p.process, p.index, p.release, p.node or "?", RUNNING)
        for n, p in enumerate(plan.start)
    ]
    return out


def test_a_rolling_deploy_passes_slot_by_slot() -> None:
    world = [inst(f"o{i}", index=i) for i in range(2)]
    spec = app(scale=2, release=2)
    expected = [
        Case("slot 0 starts", [spec], world, start=[("web", 0, 2, 0, "n1")]),
        Case(
            "slot 0's old stops, slot 1 starts",
            [spec],
            world,
            stop=["o0"],
            start=[("web", 1, 2, 0, "n1")],
        ),
        Case("slot 1's old stops", [spec], world, stop=["o1"]),
        Case("done", [spec], world),
    ]
    for step in expected:
        plan = reconcile([spec], world, [NODE], NOW)
        assert_plan(plan, step)
        world = apply_plan(world, plan)


STATES = [STARTING, RUNNING, CRASHED, STOPPED]


@given(
    scale=st.integers(0, 6),
    states=st.lists(
        st.tuples(st.integers(0, 7), st.sampled_from(STATES), st.integers(1, 2), st.booleans()),
        max_size=12,
    ),
)
def test_never_two_live_current_instances_in_one_slot_after_plan(
    scale: int, states: list[tuple[int, InstanceState, int, bool]]
) -> None:
    instances = [
        inst(f"i{n}", index=i, state=s, release=r, stopping=stop)
        for n, (i, s, r, stop) in enumerate(states)
    ]
    plan = reconcile([app(scale=scale, release=2)], instances, [NODE], NOW)
    stopped, forgotten = set(plan.stop), set(plan.forget)
    survivors = [
        i
        for i in instances
        if i.id not in stopped
        and i.id not in forgotten
        and i.state in (STARTING, RUNNING)
        and not i.stopping
    ]
    for index in range(8):
        live_current = [i for i in survivors if i.index == index and i.release == 2]
        started = [p for p in plan.start if p.index == index]
        assert len(live_current) + len(started) <= 1
        if index >= scale:
            assert not live_current
            assert not started


state_strategy = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from(STATES), st.integers(1, 2), st.booleans()),
    max_size=10,
)


@given(scale=st.integers(0, 5), states=state_strategy)
def test_converging_runs_each_index_once_and_then_plans_nothing(
    scale: int, states: list[tuple[int, InstanceState, int, bool]]
) -> None:
    world = [
        inst(f"i{n}", index=i, state=s, release=r, stopping=stop)
        for n, (i, s, r, stop) in enumerate(states)
    ]
    spec = app(scale=scale, release=2)
    for _ in range(12):  # each round: plan, apply, everything started becomes RUNNING
        plan = reconcile([spec], world, [NODE], NOW)
        world = apply_plan(world, plan)
        if plan.is_empty():
            break
    assert reconcile([spec], world, [NODE], NOW).is_empty()
    indexes = sorted(i.index for i in world)
    assert indexes == list(range(scale))
    assert all(i.release == 2 for i in world)


@given(states=state_strategy, lost_age=st.floats(15.01, 1000))
def test_nothing_is_ever_placed_on_a_lost_node(
    states: list[tuple[int, InstanceState, int, bool]], lost_age: float
) -> None:
    world = [
        inst(f"i{n}", index=i, state=s, release=r, stopping=stop)
        for n, (i, s, r, stop) in enumerate(states)
    ]
    nodes = [Node("n1", "one", 4096, NOW - lost_age), OTHER]
    plan = reconcile([app(scale=4, release=2)], world, nodes, NOW)
    assert all(p.node == "n2" for p in plan.start)
    assert set(plan.forget) >= {i.id for i in world}
