"""Frozen shapes of desired and observed state, shared by the pure decision modules.

The store turns rows into these; the scheduler and reconciler read them and never
touch the store. Instance states are the node's words (see node/instances.py for the
transition table); the control plane only records them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class InstanceState(StrEnum):
    """An instance's lifecycle, in the node's words (the node keeps the transitions)."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    CRASHED = "CRASHED"


# States in which an instance occupies its slot (it is, or may soon be, serving).
LIVE_STATES = frozenset({InstanceState.STARTING, InstanceState.RUNNING})


class BuildState(StrEnum):
    """A build's lifecycle: QUEUED -> STAGING -> STAGED | FAILED (BUILD_TRANSITIONS)."""

    QUEUED = "QUEUED"
    STAGING = "STAGING"
    STAGED = "STAGED"
    FAILED = "FAILED"


BUILD_TRANSITIONS: dict[BuildState, frozenset[BuildState]] = {
    BuildState.QUEUED: frozenset({BuildState.STAGING, BuildState.FAILED}),
    BuildState.STAGING: frozenset({BuildState.STAGED, BuildState.FAILED}),
    BuildState.STAGED: frozenset(),
    BuildState.FAILED: frozenset(),
}
BUILD_ENDED = frozenset({BuildState.STAGED, BuildState.FAILED})


class NodeState(StrEnum):
    """A node as the control plane sees it; lower case on the wire since the first API."""

    READY = "ready"
    LOST = "lost"  # silent for longer than the TTL; ready again when heard from
    DRAINING = "draining"  # an admin asked its instances to move elsewhere


class DeploymentState(StrEnum):
    """A rollout: RUNNING until every slot runs the wanted release, or it is cut short."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    SUPERSEDED = "SUPERSEDED"  # a newer rollout of the same app started
    CANCELED = "CANCELED"  # its app was deleted, or a user rolled it back


class TaskState(StrEnum):
    """A one-off task: RUNNING until its node reports an exit code (or is lost)."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"  # exit code 0
    FAILED = "FAILED"


@dataclass(frozen=True)
class AppSpec:
    """What the user asked for: one app's desired state."""

    name: str
    started: bool
    release: int  # current release version, 0 = never built
    processes: dict[str, str]  # process type -> command, from the current release
    scale: dict[str, int]  # process type -> instance count
    memory_mb: int = 256
    max_in_flight: int = 1  # slots replaced at once during a rolling deploy
    generation: int = 0  # bumped by a restart: every instance is replaced

    def current(self, release: int, generation: int) -> bool:
        """Whether an instance of (release, generation) is what this app wants now."""
        return (release, generation) == (self.release, self.generation)

    def desired_count(self, process: str) -> int:
        if not self.started or self.release == 0 or process not in self.processes:
            return 0
        # Every process type runs one instance until scaled; `release` is the release
        # phase's one-off command, never a long-running process.
        return max(0, self.scale.get(process, 0 if process == "release" else 1))


@dataclass(frozen=True)
class Instance:
    """One placed instance as the control plane knows it (desired placement + last report)."""

    id: str
    app: str
    process: str
    index: int
    release: int
    node: str
    state: InstanceState = InstanceState.STARTING
    stopping: bool = False  # the control plane has asked the node to stop it
    restarts: int = 0
    since: float = 0.0  # when it entered `state`
    memory_mb: int = 256
    generation: int = 0


@dataclass(frozen=True)
class Node:
    """A node agent as its heartbeats describe it."""

    id: str
    name: str
    memory_mb: int
    last_heartbeat: float
    state: NodeState = NodeState.READY
    address: str = "127.0.0.1"


@dataclass(frozen=True)
class Placement:
    """An instance to start: the scheduler fills in `node`."""

    app: str
    process: str
    index: int
    release: int
    memory_mb: int
    restarts: int = 0
    node: str | None = None
    generation: int = 0
    reason: str = ""  # why the scheduler could not place it, for users


@dataclass(frozen=True)
class Plan:
    """What the reconciler decided; the loop around it applies each list. Tuples: a plan
    is made once, whole, and nothing downstream may edit what was decided."""

    start: tuple[Placement, ...] = ()
    stop: tuple[str, ...] = ()  # instance ids to ask the node to stop
    forget: tuple[str, ...] = ()  # instance rows to drop (gone for good)
    lost_nodes: tuple[str, ...] = ()
    reset_restarts: tuple[str, ...] = ()
    unplaced: tuple[Placement, ...] = ()  # no node had room

    def is_empty(self) -> bool:
        return not (
            self.start
            or self.stop
            or self.forget
            or self.lost_nodes
            or self.reset_restarts
            or self.unplaced
        )
