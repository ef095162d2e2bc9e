"""Placement as tables: spread an app's instances, prefer free memory, skip lost nodes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.model import AppSpec, Instance, InstanceState, Node, NodeState, Placement
from control.reconciler import reconcile
from control.scheduler import pick_stager, place

NOW = 100.0
LOST, DRAINING = NodeState.LOST, NodeState.DRAINING


def want(n: int, app: str = "a", mem: int = 256) -> list[Placement]:
    return [Placement(app, "web", i, 1, mem) for i in range(n)]


def test_spreads_one_apps_instances_across_nodes() -> None:
    nodes = [Node("n1", "1", 4096, NOW), Node("n2", "2", 4096, NOW)]
    done, failed = place(nodes, [], want(4), NOW, 15)
    assert [p.node for p in done].count("n1") == 2
    assert not failed


def test_prefers_the_node_with_most_free_memory() -> None:
    nodes = [Node("n1", "1", 1024, NOW), Node("n2", "2", 4096, NOW)]
    done, _ = place(nodes, [], want(1), NOW, 15)
    assert done[0].node == "n2"


def test_counts_memory_already_placed() -> None:
    nodes = [Node("n1", "1", 512, NOW)]
    placed = [Instance("x", "b", "web", 0, 1, "n1", memory_mb=512)]
    done, failed = place(nodes, placed, want(1), NOW, 15)
    assert not done
    assert len(failed) == 1


def test_never_places_on_lost_or_silent_nodes() -> None:
    nodes = [Node("n1", "1", 4096, NOW, LOST), Node("n2", "2", 4096, NOW - 20)]
    done, failed = place(nodes, [], want(2), NOW, 15)
    assert not done
    assert len(failed) == 2
    assert pick_stager(nodes, NOW, 15) is None


@given(
    st.lists(
        st.tuples(st.integers(0, 8192), st.integers(0, 40), st.booleans()), min_size=1, max_size=5
    ),
    st.integers(0, 10),
    st.integers(64, 1024),
)
def test_placements_fit_and_avoid_dead_nodes(
    specs: list[tuple[int, int, bool]], count: int, mem: int
) -> None:
    nodes = [
        Node(f"n{i}", str(i), m, NOW - age, LOST if lost else NodeState.READY)
        for i, (m, age, lost) in enumerate(specs)
    ]
    done, failed = place(nodes, [], want(count, mem=mem), NOW, 15)
    assert len(done) + len(failed) == count
    live = {n.id: n for n in nodes if n.state == "ready" and NOW - n.last_heartbeat <= 15}
    for node_id in {p.node for p in done}:
        assert node_id in live
        assert sum(p.memory_mb for p in done if p.node == node_id) <= live[node_id].memory_mb


A, B = Node("n1", "a", 1024, NOW), Node("n2", "b", 2048, NOW)


def on(node: Node, app: str = "other", mem: int = 256, index: int = 0) -> Instance:
    return Instance(f"{app}-{node.id}-{index}", app, "web", index, 1, node.id, memory_mb=mem)


@pytest.mark.parametrize(
    ("nodes", "placed", "mem", "reason"),
    [
        ([], [], 256, "no node has joined (start one with `foundry node join`)"),
        ([Node("n1", "a", 1024, NOW, LOST)], [], 256, "no ready node: the only node (a) is lost"),
        (
            [Node("n1", "a", 1024, NOW - 20)],
            [],
            256,
            "no ready node: the only node (a) is silent (no heartbeat for 20 s)",
        ),
        (
            [Node("n1", "a", 1024, NOW, LOST), Node("n2", "b", 1024, NOW, LOST)],
            [],
            256,
            "no ready node: all 2 nodes are out: 2 lost",
        ),
        # The case: the only node drains with 768 MiB free; memory is not the reason.
        (
            [Node("n1", "a", 1024, NOW, DRAINING)],
            [on(A)],
            256,
            "no ready node: the only node (a) is draining",
        ),
        (
            [
                Node("n1", "a", 1024, NOW, DRAINING),
                Node("n2", "b", 1024, NOW, DRAINING),
                Node("n3", "c", 1024, NOW, LOST),
            ],
            [],
            256,
            "no ready node: all 3 nodes are out: 2 draining, 1 lost",
        ),
        (
            [A],
            [on(A, mem=768)],
            512,
            "it needs 512 MiB and the most any ready node has free is 256 MiB "
            "(node a, 1024 MiB in all)",
        ),
        (
            [A, B, Node("n3", "c", 8192, NOW, DRAINING)],
            [on(A, mem=768), on(B, mem=1536)],
            1000,
            "it needs 1000 MiB and the most any ready node has free is 512 MiB "
            "(node b, 2048 MiB in all)",
        ),
    ],
)
def test_an_unplaced_instance_says_why(
    nodes: list[Node], placed: list[Instance], mem: int, reason: str
) -> None:
    done, failed = place(nodes, placed, want(1, mem=mem), NOW, 15)
    assert not done
    assert [p.reason for p in failed] == [reason]


@pytest.mark.parametrize(
    ("nodes", "placed", "where"),
    [
        # Spreading is a preference: an app already on the only node still gets a third there.
        ([A], [on(A, "a", index=1), on(A, "a", index=2)], "n1"),
        # ... and a node holding the app but with room wins over a node with none free.
        ([A, B], [on(A, "a", index=1), on(B, mem=2048)], "n1"),
    ],
)
def test_spreading_never_leaves_an_instance_unplaced(
    nodes: list[Node], placed: list[Instance], where: str
) -> None:
    done, failed = place(nodes, placed, want(1), NOW, 15)
    assert not failed
    assert [p.node for p in done] == [where]


def test_draining_the_only_node_reports_draining_through_the_reconciler() -> None:
    app = AppSpec("a", True, 1, {"web": "run"}, {"web": 1}, 256)
    node = Node("n1", "a", 1024, NOW, DRAINING)
    running = Instance("i0", "a", "web", 0, 1, "n1", InstanceState.RUNNING)
    plan = reconcile([app], [running], [node], NOW)
    assert not plan.start
    assert not plan.stop
    assert [p.reason for p in plan.unplaced] == ["no ready node: the only node (a) is draining"]
