"""Placement: a pure function from (nodes, instances already placed, wanted) to placements.

Rules, in order: never place on a node that is not ready or whose heartbeat is older
than the TTL; never exceed a node's memory; spread one app's instances (fewest of
that app first); among equals prefer the node with the most free memory; ties break
on node id so the result is deterministic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from control.model import NODE_READY, Instance, Node, Placement


def node_is_live(node: Node, now: float, ttl: float) -> bool:
    """A node may receive work when it is ready and has been heard from within `ttl`."""
    return node.state == NODE_READY and now - node.last_heartbeat <= ttl


def free_memory(nodes: Iterable[Node], placed: Iterable[Instance]) -> dict[str, int]:
    """Memory (MiB) still free on each node after the instances placed on it."""
    used: Counter[str] = Counter()
    for inst in placed:
        used[inst.node] += inst.memory_mb
    return {n.id: n.memory_mb - used[n.id] for n in nodes}


def place(nodes: list[Node], placed: list[Instance], wanted: list[Placement],
          now: float, ttl: float) -> tuple[list[Placement], list[Placement]]:
    """Assign a node to each wanted placement; returns (placed, could-not-place)."""
    live = [n for n in nodes if node_is_live(n, now, ttl)]
    free = free_memory(live, placed)
    per_app: Counter[tuple[str, str]] = Counter((i.node, i.app) for i in placed)
    done: list[Placement] = []
    failed: list[Placement] = []
    for want in wanted:
        fits = [n for n in live if free[n.id] >= want.memory_mb]
        if not fits:
            failed.append(want)
            continue
        best = min(fits, key=lambda n: (per_app[(n.id, want.app)], -free[n.id], n.id))
        free[best.id] -= want.memory_mb
        per_app[(best.id, want.app)] += 1
        done.append(replace(want, node=best.id))
    return done, failed


def pick_stager(nodes: list[Node], now: float, ttl: float) -> str | None:
    """The node that should stage a build: the live node with the most memory, or None."""
    live = [n for n in nodes if node_is_live(n, now, ttl)]
    if not live:
        return None
    return min(live, key=lambda n: (-n.memory_mb, n.id)).id
