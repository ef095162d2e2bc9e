"""The messages between a node agent and the control plane, as the node sees them.

Rules kept here:
- this is the one place in `node/` that names the fields of a node <-> control
  message; the agent, stager, task runner and supervisor read work items through
  these types and build their reports with them;
- `control/wire_node.py` declares the same shapes on the control plane's side (the
  roles never import each other: a copy is cheaper than a coupling);
  `tests/component/test_contract.py` feeds what each side really sends into the other's
  declaration, so a field renamed on one side only fails a test;
- a work item arrives as its payload plus `seq` and `kind`.
"""

# No `from __future__ import annotations` here: Python 3.11 loses NotRequired from a
# TypedDict's postponed annotations, and the contract test reads the required keys.

from typing import Literal, NotRequired, TypedDict

# --- control -> node ----------------------------------------------------------------


class JoinAnswer(TypedDict):
    """POST /v1/nodes/join answers a node's identity."""

    id: str
    token: str


class Ack(TypedDict):
    """A heartbeat or log batch was taken."""

    ok: bool


class StagePayload(TypedDict):
    """Build `source` (a blob digest) into a droplet for `app`."""

    build: str
    app: str
    source: str
    env: dict[str, str]
    buildpack: NotRequired[str]  # a pack name, a git URL or blob:<sha256>
    no_cache: NotRequired[bool]
    processes: NotRequired[dict[str, str]]  # commands the push named; they win over the pack's


class StartPayload(TypedDict):
    """Start one instance of a release's process type."""

    instance: str
    app: str
    process: str
    index: int
    release: int
    droplet: str
    command: str
    env: dict[str, str]
    memory_mb: int
    health_check: str


class StopPayload(TypedDict):
    """Stop one instance, after `drain` seconds of still serving what is under way."""

    instance: str
    drain: NotRequired[float]


class TaskPayload(TypedDict):
    """Run a one-off command (`foundry run`, a release phase) to its exit."""

    task: str
    app: str
    droplet: str
    command: str
    env: dict[str, str]
    memory_mb: int
    release: int
    timeout: float
    tag: str  # log lines carry it so a caller can follow just this task
    source: str  # the log source: `release` or `task/<id>`


class Envelope(TypedDict):
    seq: int


class StageWork(Envelope, StagePayload):
    kind: Literal["stage"]


class StartWork(Envelope, StartPayload):
    kind: Literal["start"]


class StopWork(Envelope, StopPayload):
    kind: Literal["stop"]


class TaskWork(Envelope, TaskPayload):
    kind: Literal["task"]


WorkItem = StageWork | StartWork | StopWork | TaskWork
WORK_KINDS: dict[str, type] = {
    "stage": StageWork,
    "start": StartWork,
    "stop": StopWork,
    "task": TaskWork,
}


class WorkAnswer(TypedDict):
    """GET /v1/nodes/<id>/work answers the items after the node's cursor."""

    work: list[WorkItem]


# --- node -> control ----------------------------------------------------------------


class JoinRequest(TypedDict):
    name: str
    address: str
    memory_mb: int
    tier: str
    seccomp: str


class InstanceReport(TypedDict):
    """One instance as the node last saw it."""

    id: str
    app: str
    state: str
    port: int | None
    reason: str | None
    pid: int | None


class Heartbeat(TypedDict):
    boot: str
    address: str
    tier: str
    seccomp: str
    memory_mb: int
    work_seq: int  # every work item up to here has been taken in hand
    instances: list[InstanceReport]
    disk_free: int  # bytes free on the node's home, read for this report
    disk_full: bool  # free space is very low, or a write failed for want of it lately


class BuildResult(TypedDict):
    ok: bool
    error: NotRequired[str]  # when not ok
    droplet: NotRequired[str]  # when ok: the uploaded droplet's digest
    processes: NotRequired[dict[str, str]]
    pack: NotRequired[str]


class TaskResult(TypedDict):
    exit_code: int | None  # None: it did not exit by itself (killed, timed out, node error)
    reason: str | None


class LogLine(TypedDict):
    app: str
    source: str
    line: str
    ts: float
    build: NotRequired[str]  # a build id or task tag, so one run's lines can be followed


class LogBatch(TypedDict):
    lines: list[LogLine]
