"""Convergence: a pure function from (desired apps, placed instances, nodes, now) to a Plan.

Cloud Foundry's health manager, without the bus. Rules kept here:
- each (app, process, index) slot has at most one live instance of the current
  release once that instance is RUNNING; an old-release instance in the slot is
  stopped only after its replacement runs (rolling, no gap), and at most
  `max_in_flight` slots of a process type are being replaced at once;
- a crashed slot restarts at once `immediate_restarts` times, then waits
  `backoff_base` seconds doubling up to `backoff_max`, and gives up after
  `give_up_after` restarts; a new release starts the count again;
- a restart bumps the app's generation: instances of an older generation are
  replaced exactly as old releases are (rolling);
- a node silent for longer than `node_ttl` is lost: its instances are forgotten and
  their slots filled elsewhere in the same pass;
- nothing is ever placed on a lost or draining node (the scheduler enforces it); an
  instance on a draining node is replaced like an old release: its successor runs
  elsewhere before it is stopped (Diego's evacuation);
- a build no node takes, or no node reports on, within `build_timeout` fails
  (`build_overdue`), so a push never waits for ever on a result that was lost.
The clock is an argument; nothing here sleeps or reads the time. A pass collects its
decisions in a private `_Draft` and hands back one immutable `Plan`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from control.model import (
    LIVE_STATES,
    AppSpec,
    BuildState,
    Instance,
    InstanceState,
    Node,
    NodeState,
    Placement,
    Plan,
)
from control.scheduler import place


@dataclass(frozen=True)
class Policy:
    """Restart and liveness numbers (defaults: Cloud Foundry's / Diego's)."""

    immediate_restarts: int = 3
    backoff_base: float = 30.0
    backoff_max: float = 960.0
    give_up_after: int = 200
    reset_after: float = 300.0
    node_ttl: float = 15.0
    # A node kills a compile after 15 min (node/stager.py); 5 min more for the download,
    # the droplet's packing and upload, and the report. A release phase is timed as a
    # task (control/tasks.py), not by this.
    build_timeout: float = 1200.0


@dataclass
class _Draft:
    """The lists of a plan while one pass is still deciding (a Plan is made once, at the end)."""

    stop: list[str] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    reset_restarts: list[str] = field(default_factory=list)
    wanted: list[Placement] = field(default_factory=list)  # for the scheduler to place


def restart_delay(restarts: int, policy: Policy) -> float:
    """Seconds to wait before restart number `restarts + 1` of a crashed slot."""
    if restarts < policy.immediate_restarts:
        return 0.0
    steps = restarts - policy.immediate_restarts
    return float(min(policy.backoff_base * 2.0 ** min(steps, 32), policy.backoff_max))


def build_overdue(
    state: BuildState,
    created_at: float,
    heard_at: float | None,
    now: float,
    policy: Policy,
    release_phase: bool = False,
) -> str | None:
    """Why a build must fail for want of a node, or None while it may still end well:
    QUEUED for `build_timeout` since it was made (no live node took it), or STAGING for
    `build_timeout` since a node took it. Once its result has started a release phase
    the task decides (it has a time limit of its own)."""
    limit = policy.build_timeout
    if state == BuildState.QUEUED and now - created_at > limit:
        return f"no node was available to stage the build within {limit:.0f} s"
    since = created_at if heard_at is None else heard_at
    if state == BuildState.STAGING and not release_phase and now - since > limit:
        return f"no node reported the build within {limit:.0f} s"
    return None


def lost_node_ids(nodes: list[Node], now: float, policy: Policy) -> set[str]:
    """Nodes already marked lost or silent for longer than the TTL."""
    return {
        n.id for n in nodes if n.state == NodeState.LOST or now - n.last_heartbeat > policy.node_ttl
    }


def reconcile(
    apps: list[AppSpec],
    instances: list[Instance],
    nodes: list[Node],
    now: float,
    policy: Policy = Policy(),
) -> Plan:
    """Decide what to start, stop and forget so actual state converges on desired state."""
    lost = lost_node_ids(nodes, now, policy)
    draft = _Draft()
    by_app = {a.name: a for a in apps}
    slots: dict[tuple[str, str, int], list[Instance]] = defaultdict(list)
    for inst in instances:
        if inst.node in lost:
            draft.forget.append(inst.id)
        elif inst.app not in by_app:
            _drop(inst, draft)
        else:
            slots[(inst.app, inst.process, inst.index)].append(inst)
    draining = frozenset(n.id for n in nodes if n.state == NodeState.DRAINING)
    for app in apps:
        for process in sorted(set(app.processes) | {k[1] for k in slots if k[0] == app.name}):
            count = app.desired_count(process)
            indexes = {k[2] for k in slots if k[0] == app.name and k[1] == process}
            budget = [
                app.max_in_flight
                - sum(
                    _replacing(app, slots.get((app.name, process, i), []), draining)
                    for i in range(count)
                )
            ]
            for index in sorted(indexes | set(range(count))):
                slot = slots.get((app.name, process, index), [])
                if index < count:
                    _converge_slot(
                        app, slot, now, policy, draft, budget, draining, (process, index)
                    )
                else:
                    for inst in slot:
                        _drop(inst, draft)
    forgotten = set(draft.forget)
    placed = [i for i in instances if i.id not in forgotten and i.node not in lost]
    ok, failed = place(nodes, placed, draft.wanted, now, policy.node_ttl)
    return Plan(
        start=tuple(ok),
        stop=tuple(draft.stop),
        forget=tuple(draft.forget),
        lost_nodes=tuple(n.id for n in nodes if n.id in lost and n.state != NodeState.LOST),
        reset_restarts=tuple(draft.reset_restarts),
        unplaced=tuple(failed),
    )


def _drop(inst: Instance, draft: _Draft) -> None:
    """An instance nobody wants: stop it if it may still run, else forget it (a STOPPING
    one is left until its node reports it STOPPED)."""
    if inst.state in LIVE_STATES and not inst.stopping:
        draft.stop.append(inst.id)
    elif inst.state not in LIVE_STATES and inst.state != InstanceState.STOPPING:
        draft.forget.append(inst.id)


def _wanted(app: AppSpec, inst: Instance, draining: frozenset[str]) -> bool:
    """An instance that may keep its slot: what the app wants now, on a node that stays."""
    return app.current(inst.release, inst.generation) and inst.node not in draining


def _replacing(app: AppSpec, slot: list[Instance], draining: frozenset[str]) -> bool:
    """A slot mid-replacement: its new instance is not RUNNING yet, an old one still is live."""
    live = [i for i in slot if i.state in LIVE_STATES and not i.stopping]
    return any(
        _wanted(app, i, draining) and i.state != InstanceState.RUNNING for i in live
    ) and any(not _wanted(app, i, draining) for i in live)


def _converge_slot(
    app: AppSpec,
    slot: list[Instance],
    now: float,
    policy: Policy,
    draft: _Draft,
    budget: list[int],
    draining: frozenset[str],
    key: tuple[str, int],
) -> None:
    process, index = key
    live = [i for i in slot if i.state in LIVE_STATES and not i.stopping]
    current = [i for i in live if _wanted(app, i, draining)]
    old = [i for i in live if not _wanted(app, i, draining)]
    crashed = [i for i in slot if i.state == InstanceState.CRASHED]
    draft.forget.extend(
        i.id
        for i in slot
        if i.state not in LIVE_STATES
        and i.state not in (InstanceState.CRASHED, InstanceState.STOPPING)
    )
    if current:
        keep = min(current, key=lambda i: (i.state != InstanceState.RUNNING, i.since, i.id))
        draft.stop.extend(i.id for i in current if i is not keep)
        if keep.state == InstanceState.RUNNING:
            draft.stop.extend(i.id for i in old)
            if keep.restarts and now - keep.since >= policy.reset_after:
                draft.reset_restarts.append(keep.id)
        draft.forget.extend(i.id for i in crashed)
        return
    if old:
        if budget[0] <= 0:
            return  # wait: enough slots are being replaced already
        budget[0] -= 1
    restarts = 0
    if crashed:
        last = max(crashed, key=lambda i: (i.restarts, i.since))
        if app.current(last.release, last.generation):
            if last.restarts >= policy.give_up_after:
                draft.forget.extend(i.id for i in crashed if i is not last)
                return
            if now < last.since + restart_delay(last.restarts, policy):
                return
            restarts = last.restarts + 1
        draft.forget.extend(i.id for i in crashed)
    draft.wanted.append(
        Placement(
            app.name,
            process,
            index,
            app.release,
            app.memory_mb,
            restarts,
            generation=app.generation,
        )
    )
