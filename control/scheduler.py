"""Placement: a pure function from (nodes, instances already placed, wanted) to placements.

Rules, in order: never place on a node that is not ready or whose heartbeat is older
than the TTL; never exceed a node's memory; spread one app's instances (fewest of
that app first); among equals prefer the node with the most free memory; ties break
on node id so the result is deterministic. Spreading is a preference, never a reason
to leave an instance unplaced. A placement that fails carries the reason in words a
user can act on: no node at all, no ready node (and why each is not), or the memory
numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from control.model import Instance, Node, NodeState, Placement


def node_is_live(node: Node, now: float, ttl: float) -> bool:
    """A node may receive work when it is ready and has been heard from within `ttl`."""
    return node.state == NodeState.READY and now - node.last_heartbeat <= ttl


def free_memory(nodes: Iterable[Node], placed: Iterable[Instance]) -> dict[str, int]:
    """Memory (MiB) still free on each node after the instances placed on it."""
    used: Counter[str] = Counter()
    for inst in placed:
        used[inst.node] += inst.memory_mb
    return {n.id: n.memory_mb - used[n.id] for n in nodes}


def place(
    nodes: list[Node], placed: list[Instance], wanted: list[Placement], now: float, ttl: float
) -> tuple[list[Placement], list[Placement]]:
    """Assign a node to each wanted placement; returns (placed, could-not-place)."""
    live = [n for n in nodes if node_is_live(n, now, ttl)]
    free = free_memory(live, placed)
    per_app: Counter[tuple[str, str]] = Counter((i.node, i.app) for i in placed)
    done: list[Placement] = []
    failed: list[Placement] = []
    for want in wanted:
        fits = [n for n in live if free[n.id] >= want.memory_mb]
        if not fits:
            failed.append(replace(want, reason=unplaced_reason(nodes, live, free, want, now)))
            continue
        best = min(fits, key=lambda n: (per_app[(n.id, want.app)], -free[n.id], n.id))
        free[best.id] -= want.memory_mb
        per_app[(best.id, want.app)] += 1
        done.append(replace(want, node=best.id))
    return done, failed


def unplaced_reason(
    nodes: list[Node], live: list[Node], free: dict[str, int], want: Placement, now: float
) -> str:
    """Why `want` fits on no node: `live` are the nodes that may take work, `free` their
    memory still free."""
    if not nodes:
        return "no node has joined (start one with `foundry node join`)"
    if not live:
        return "no ready node: " + _not_ready(nodes, now)
    best = max(live, key=lambda n: (free[n.id], n.id))
    return (
        f"it needs {want.memory_mb} MiB and the most any ready node has free is "
        f"{max(free[best.id], 0)} MiB (node {best.name}, {best.memory_mb} MiB in all)"
    )


def _not_ready(nodes: list[Node], now: float) -> str:
    """Why none of `nodes` takes work, e.g. "the only node (a) is draining"."""

    def status(n: Node) -> str:
        # Marked ready but past its TTL: the reconciler marks it lost on this same pass.
        return "silent" if n.state == NodeState.READY else n.state

    if len(nodes) == 1:
        node = nodes[0]
        said = status(node)
        if said == "silent":
            said += f" (no heartbeat for {now - node.last_heartbeat:.0f} s)"
        return f"the only node ({node.name}) is {said}"
    counts = Counter(status(n) for n in nodes)
    return f"all {len(nodes)} nodes are out: " + ", ".join(
        f"{count} {state}" for state, count in sorted(counts.items())
    )


def pick_stager(nodes: list[Node], now: float, ttl: float) -> str | None:
    """The node that should stage a build: the live node with the most memory, or None."""
    live = [n for n in nodes if node_is_live(n, now, ttl)]
    if not live:
        return None
    return min(live, key=lambda n: (-n.memory_mb, n.id)).id
