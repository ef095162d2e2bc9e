"""How the control plane answers a node's report about work that has already ended.

A node retries each report until it is acknowledged (node/client.py), so the same
report can arrive twice: the first was acted on and only its answer was lost. Rules
kept here:
  * a repeat of the report that ended the work (the same outcome) is acknowledged
    with the answer the first one got, and changes nothing;
  * a report that disagrees with how the work ended (the build timed out or its node
    was lost meanwhile, and now a result comes) is refused with 409 and a reason the
    node logs before it drops the report: it must never flip a recorded outcome.
Pure functions over rows; the handlers in control/api_nodes.py apply them.
"""

from __future__ import annotations

from dataclasses import dataclass

from control.model import BuildState
from control.rows import BuildRow, TaskRow


@dataclass(frozen=True)
class Repeat:
    """The decision on a repeated report: acknowledge with `answer`, or refuse saying `refusal`."""

    answer: dict[str, object] | None = None
    refusal: str | None = None


def repeated_build_result(
    build: BuildRow, ok: bool, droplet: str, error: str, phase: TaskRow | None
) -> Repeat:
    """A result for `build`, which already has one (it ended, or its release phase
    started: `phase`)."""
    if phase is not None and ok and phase["payload"].get("droplet") == droplet:
        return Repeat(answer={"state": build["state"], "release_phase": phase["id"]})
    if build["state"] == BuildState.STAGED and ok and build["droplet"] == droplet:
        return Repeat(answer={"state": BuildState.STAGED, "release": build["release"]})
    if build["state"] == BuildState.FAILED and not ok and build["error"] == error:
        return Repeat(answer={"state": BuildState.FAILED})
    if phase is not None and build["state"] == BuildState.STAGING:
        return Repeat(
            refusal=f"build {build['id']} already reported success: its release phase "
            f"{phase['id']} is {phase['state']}; this result is dropped"
        )
    why = f" ({build['error']})" if build["error"] else ""
    return Repeat(
        refusal=f"build {build['id']} already ended {build['state']}{why}; this result is dropped"
    )


def repeated_task_result(task: TaskRow, exit_code: int | None, reason: str | None) -> Repeat:
    """A result for `task`, which has already ended."""
    if task["exit_code"] == exit_code and task["reason"] == reason:
        return Repeat(answer={"state": task["state"]})
    how = f"exit code {task['exit_code']}" if task["exit_code"] is not None else task["reason"]
    return Repeat(
        refusal=f"task {task['id']} already ended {task['state']} ({how}); this result is dropped"
    )
