"""The rows the store hands out and the changes it takes, one TypedDict per shape.

Rules kept here:
- this is the one place that names a stored row's fields; `control/store.py` builds
  these from SQL rows and every other module reads them through these types;
- a row holds Python values, never a column's encoding: JSON columns arrive decoded,
  sealed columns unsealed, state columns as the StrEnums of `control.model`; writers
  hand the store Python values too and the store encodes them;
- a "full" row type (`AppRow`, `BuildRow`, ...) has exactly its table's columns (a
  component test compares them with the migrated schema); a view type names the
  subset one query selects;
- 0/1 columns stay ints, as the API has always shown them.
"""

# No `from __future__ import annotations` here: Python 3.11 loses NotRequired from a
# TypedDict's postponed annotations, and the schema test reads the declared keys.

from typing import NotRequired, TypedDict

from control.model import BuildState, DeploymentState, InstanceState, NodeState, TaskState
from control.wire_edge import RouteOptions


class TokenRow(TypedDict):
    """A token without its hash (tokens)."""

    id: str
    kind: str
    apps: list[str] | None  # the apps a scoped token may touch; None: every app
    node: str | None
    expires_at: float | None
    uses_left: int | None
    created_at: float
    revoked: int
    label: str | None


class Autoscale(TypedDict):
    """An app's autoscaling settings (apps.autoscale)."""

    min: int
    max: int
    concurrency: int
    idle: float
    window: NotRequired[float]  # absent in settings stored before it existed


class AppRow(TypedDict):
    """One app's desired state (apps)."""

    name: str
    started: int
    release: int  # the current release, 0 before the first
    memory_mb: int
    scale: dict[str, int]  # process type -> instance count
    env: dict[str, str]  # config vars
    health_check: str
    max_in_flight: int
    generation: int
    autoscale: Autoscale | None
    last_cold_start: float | None
    created_at: float
    updated_at: float


class AppChanges(TypedDict, total=False):
    """Columns `Store.update_app` may change."""

    started: int
    memory_mb: int
    scale: dict[str, int]
    env: dict[str, str]
    health_check: str
    max_in_flight: int
    generation: int
    autoscale: Autoscale | None
    last_cold_start: float


class AutoscaledApp(TypedDict):
    name: str
    autoscale: Autoscale


class ReleaseSummary(TypedDict):
    """A release as `foundry releases` lists it: everything but its config vars."""

    app: str
    version: int
    droplet: str
    processes: dict[str, str]
    pack: str | None
    description: str | None
    created_at: float


class ReleaseRow(ReleaseSummary):
    """One release (releases)."""

    env: dict[str, str]


class BuildRow(TypedDict):
    """One build (builds)."""

    id: str
    app: str
    state: BuildState
    source: str  # the source package's blob digest
    node: str | None  # the stager, once assigned
    droplet: str | None
    pack: str | None
    processes: dict[str, str] | None
    error: str | None
    release: int | None  # the release it made (or kept), once STAGED
    created_at: float
    finished_at: float | None
    heard_at: float | None  # when it was handed to a node (STAGING)


class BuildChanges(TypedDict, total=False):
    """Columns `Store.set_build` may change beside the state."""

    node: str
    droplet: str
    pack: str | None
    processes: dict[str, str]
    error: str
    release: int


class BuildOptions(TypedDict, total=False):
    """What a push asked of its build (build_options.options)."""

    buildpack: str
    no_cache: bool
    processes: dict[str, str]


class NodeRow(TypedDict):
    """One node agent (nodes)."""

    id: str
    name: str
    address: str
    tier: str | None
    memory_mb: int
    state: NodeState
    last_heartbeat: float
    work_acked: int
    boot: str | None  # the agent's boot id: a new one means it restarted
    created_at: float
    seccomp: str | None


class InstanceRow(TypedDict):
    """One placed instance (instances)."""

    id: str
    app: str
    process: str
    idx: int
    release: int
    node: str
    state: InstanceState
    stopping: int  # the control plane asked its node to stop it
    restarts: int
    since: float  # when it entered `state`
    started_at: float | None
    port: int | None
    address: str | None
    reason: str | None
    memory_mb: int
    work_seq: int  # the work item that started it
    generation: int


class InstanceChanges(TypedDict, total=False):
    """Columns `Store.update_instance` may change."""

    state: InstanceState
    since: float
    started_at: float
    port: int
    address: str
    reason: str
    stopping: int
    restarts: int


class LogRow(TypedDict):
    seq: int
    ts: float
    source: str
    line: str


class MappedRoute(TypedDict):
    """A route added with map-route."""

    host: str
    path: str
    app: str
    options: RouteOptions


class RouteClaim(TypedDict):
    """A mapped route with when it was first claimed (route ownership goes by it)."""

    host: str
    path: str
    app: str
    created_at: float


class TaskData(TypedDict, total=False):
    """What a release phase carries to the release it makes (tasks.payload); empty for a
    `foundry run` task."""

    droplet: str
    env: dict[str, str]
    processes: dict[str, str]
    pack: str | None


class TaskView(TypedDict):
    """A task as the API shows it: everything but its payload."""

    id: str
    app: str
    kind: str
    command: str
    state: TaskState
    node: str | None
    build: str | None
    exit_code: int | None
    reason: str | None
    created_at: float
    finished_at: float | None


class TaskRow(TaskView):
    """One task (tasks)."""

    payload: TaskData


class RunningTask(TypedDict):
    id: str
    node: str | None
    kind: str
    created_at: float


class DeploymentRow(TypedDict):
    """One rollout (deployments)."""

    id: int
    app: str
    from_release: int
    to_release: int
    kind: str  # deploy | config | rollback | restart
    state: DeploymentState
    created_at: float
    finished_at: float | None
    actor: str | None


class EventRow(TypedDict):
    seq: int
    ts: float
    kind: str
    detail: str
    actor: str  # the token's kind and label, or "platform"
