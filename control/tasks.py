"""One-off tasks on nodes: `foundry run` and the release phase of a deploy.

A task is sent as a work item to a live node and ends when that node reports an exit
code (or is lost). The release phase is a task too: a build whose process types
include `release` is not released when it is staged; its `release` command runs
first with the new droplet and config, its output joins the build's log, and only
an exit code of 0 makes the release current and starts the rollout. A failed release
phase fails the build, so the old release keeps serving. A task no node reports on
within its own time limit plus REPORT_MARGIN (its node restarted mid-run, or its result
was refused) fails, so `foundry run` and a release phase always end.
"""

from __future__ import annotations

from collections.abc import Collection

from control import releases
from control.blobs import BlobStore
from control.errors import Unavailable
from control.model import BuildState, TaskState
from control.reconciler import Policy
from control.rows import TaskData, TaskRow, TaskView
from control.scheduler import pick_stager
from control.store import Store
from control.wire_node import TaskPayload

RUN_TIMEOUT = 3600.0
RELEASE_TIMEOUT = 900.0
REPORT_MARGIN = 300.0  # after a task's own limit, for its node to kill it and report


def start_task(
    store: Store,
    policy: Policy,
    app: str,
    command: str,
    *,
    kind: str = "run",
    droplet: str,
    env: dict[str, str],
    release: int,
    build: str | None = None,
    payload: TaskData | None = None,
) -> str:
    """Create a task and send it to a node; Unavailable when no node is live."""
    node = pick_stager(store.nodes(), store.clock(), policy.node_ttl)
    if node is None:
        raise Unavailable("no node is available to run the task")
    tid = store.create_task(app, kind, command, node, build=build, payload=payload)
    row = store.get_app(app)
    work: TaskPayload = {
        "task": tid,
        "app": app,
        "droplet": droplet,
        "command": command,
        "env": env,
        "memory_mb": row["memory_mb"],
        "release": release,
        "timeout": task_limit(kind),
        "tag": build or tid,
        "source": "release" if kind == "release" else f"task/{tid}",
    }
    store.enqueue(node, "task", work)
    return tid


def finish_task(
    store: Store, blobs: BlobStore, tid: str, exit_code: int | None, reason: str | None
) -> TaskRow:
    """Record how a task ended; a release phase's end releases or fails its build."""
    store.finish_task(tid, exit_code, reason)
    task = store.get_task(tid)
    if task["kind"] == "release" and task["build"] and store.app_exists(task["app"]):
        _finish_release_phase(store, blobs, task["build"], task)
    return task


def _finish_release_phase(store: Store, blobs: BlobStore, build: str, task: TaskRow) -> None:
    data = task["payload"]
    if task["state"] != TaskState.SUCCEEDED:
        why = reason_of(task)
        store.set_build(build, BuildState.FAILED, error=f"release phase failed: {why}")
        store.add_event(task["app"], "release-phase-failed", f"build {build}: {why}")
        return
    version = releases.make_release(
        store,
        blobs,
        task["app"],
        droplet=data["droplet"],
        env=data["env"],
        processes=data["processes"],
        pack=data.get("pack"),
        description=f"build {build} ({data.get('pack')}), release phase passed",
        actor=None,
    )
    store.set_build(
        build,
        BuildState.STAGED,
        droplet=data["droplet"],
        pack=data.get("pack"),
        processes=data["processes"],
        release=version,
    )


def task_limit(kind: str) -> float:
    """The seconds a node lets a task of `kind` run (sent with the work item)."""
    return RELEASE_TIMEOUT if kind == "release" else RUN_TIMEOUT


def task_overdue(kind: str, created_at: float, now: float) -> str | None:
    """Why a running task must fail for want of a report, or None."""
    limit = task_limit(kind) + REPORT_MARGIN
    if now - created_at > limit:
        return f"no node reported the task within {limit:.0f} s"
    return None


def fail_overdue_tasks(store: Store, blobs: BlobStore) -> None:
    """Fail the running tasks no node reported on in time (a release phase fails its build)."""
    now = store.clock()
    for task in store.running_tasks():
        why = task_overdue(task["kind"], task["created_at"], now)
        if why is not None:
            finish_task(store, blobs, task["id"], None, why)


def fail_lost_tasks(store: Store, blobs: BlobStore, lost: Collection[str]) -> None:
    for task in store.running_tasks():
        if task["node"] in lost:
            finish_task(store, blobs, task["id"], None, "the node running it was lost")


def reason_of(task: TaskView) -> str:
    if task["exit_code"] is not None:
        return f"exit code {task['exit_code']}"
    return str(task["reason"] or "unknown")
