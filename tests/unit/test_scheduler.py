"""Placement as tables: spread an app's instances, prefer free memory, skip lost nodes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from control.model import NODE_LOST, Instance, Node, Placement
from control.scheduler import pick_stager, place

NOW = 100.0


def want(n: int, app: str = "a", mem: int = 256) -> list[Placement]:
    return [Placement(app, "web", i, 1, mem) for i in range(n)]


def test_spreads_one_apps_instances_across_nodes() -> None:
    nodes = [Node("n1", "1", 4096, NOW), Node("n2", "2", 4096, NOW)]
    done, failed = place(nodes, [], want(4), NOW, 15)
    assert [p.node for p in done].count("n1") == 2 and not failed


def test_prefers_the_node_with_most_free_memory() -> None:
    nodes = [Node("n1", "1", 1024, NOW), Node("n2", "2", 4096, NOW)]
    done, _ = place(nodes, [], want(1), NOW, 15)
    assert done[0].node == "n2"


def test_counts_memory_already_placed() -> None:
    nodes = [Node("n1", "1", 512, NOW)]
    placed = [Instance("x", "b", "web", 0, 1, "n1", memory_mb=512)]
    done, failed = place(nodes, placed, want(1), NOW, 15)
    assert not done and len(failed) == 1


def test_never_places_on_lost_or_silent_nodes() -> None:
    nodes = [Node("n1", "1", 4096, NOW, NODE_LOST), Node("n2", "2", 4096, NOW - 20)]
    done, failed = place(nodes, [], want(2), NOW, 15)
    assert not done and len(failed) == 2
    assert pick_stager(nodes, NOW, 15) is None


@given(st.lists(st.tuples(st.integers(0, 8192), st.integers(0, 40), st.booleans()),
                min_size=1, max_size=5), st.integers(0, 10), st.integers(64, 1024))
def test_placements_fit_and_avoid_dead_nodes(specs: list[tuple[int, int, bool]], count: int,
                                             mem: int) -> None:
    nodes = [Node(f"n{i}", str(i), m, NOW - age, "lost" if lost else "ready")
             for i, (m, age, lost) in enumerate(specs)]
    done, failed = place(nodes, [], want(count, mem=mem), NOW, 15)
    assert len(done) + len(failed) == count
    live = {n.id: n for n in nodes if n.state == "ready" and NOW - n.last_heartbeat <= 15}
    for node_id in {p.node for p in done}:
        assert node_id in live
        assert sum(p.memory_mb for p in done if p.node == node_id) <= live[node_id].memory_mb
