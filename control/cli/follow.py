"""Following what the control plane does, for the CLI: log lines, builds, tasks, rollouts.

Rules kept here:
  * One log follower (`follow_log`) serves `foundry logs -f`, a build's log and a task's
    output: it long-polls for lines after the last one seen, so no line is skipped or
    shown twice; a follower with an end (a build, a task) asks whether its source ended
    *before* reading, and stops only on an empty page after that, so the last lines
    written before the end are still shown.
  * A rollout is watched from the server's deployment record, never guessed from
    instances alone; it fails fast, with the reason, when an instance of the new release
    keeps crashing or cannot be placed.
  * Lines and progress go to the Reporter; nothing here prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from control.cli.client import Api, CLIError, Reporter

# The stager's closing line of a failed build: its reason is the push's error line, so
# the CLI shows it there, once, instead of in the log as well.
BUILD_FAILED_LINE = "-----> Build failed: "
TASK_LINE = "[foundry] task "  # the node's own lines about a task, not its output


def follow_log(
    api: Api,
    name: str,
    after: int,
    *,
    wait: float,
    finished: Callable[[], bool] | None = None,
    **params: Any,
) -> Iterator[dict[str, Any]]:
    """An app's log lines after `after` as they come; until `finished` says the source
    ended and no line is left (forever without one)."""
    while True:
        done = finished is not None and finished()
        page = api.get(
            f"/v1/apps/{name}/logs",
            timeout=40,
            params={**params, "after": after, "wait": 0 if done else wait},
        )
        yield from page["lines"]
        if page["next"] is not None:
            after = page["next"]
        if done and not page["lines"]:
            return


def log_lines(api: Api, name: str, limit: int, follow: bool) -> Iterator[dict[str, Any]]:
    """The newest `limit` lines of an app's log, then (with `follow`) every new one."""
    page = api.get(f"/v1/apps/{name}/logs", params={"limit": limit})
    yield from page["lines"]
    if follow:
        yield from follow_log(api, name, page["next"] or 0, wait=25)


def follow_build(api: Api, name: str, build: str, report: Reporter) -> dict[str, Any]:
    """Report the build log live until the build ends; returns the final build."""
    state: dict[str, Any] = {}

    def finished() -> bool:
        state.update(api.get(f"/v1/builds/{build}"))
        return state["state"] in ("STAGED", "FAILED")

    for line in follow_log(api, name, 0, wait=5, finished=finished, build=build):
        if not line["line"].startswith(BUILD_FAILED_LINE):
            report.tell(f"  {line['line']}")
    return state


def follow_task(api: Api, name: str, task: str, report: Reporter) -> dict[str, Any]:
    """Report a one-off task's output until it ends; returns the final task."""
    state: dict[str, Any] = {}

    def finished() -> bool:
        state.update(api.get(f"/v1/tasks/{task}"))
        return bool(state["state"] != "RUNNING")

    for line in follow_log(api, name, 0, wait=10, finished=finished, build=task):
        if not line["line"].startswith(TASK_LINE):
            report.tell(line["line"])
    return state


def watch_rollout(
    api: Api, name: str, release: int, timeout: float, report: Reporter
) -> dict[str, Any]:
    """Follow the server's rollout of `release` until it finishes; CLIError when it cannot."""
    deadline = time.monotonic() + timeout
    revision, shown = "", ""
    while time.monotonic() < deadline:
        view = api.get(f"/v1/apps/{name}", params={"wait": 5, "revision": revision}, timeout=40)
        revision = view["revision"]
        dep = _deployment(api, name, release)
        if dep["state"] == "SUCCEEDED":
            return dict(view)
        status = f"instances: {dep.get('updated', 0)}/{dep.get('wanted', 0)} updated and running"
        if status != shown:
            report.say(status)
            shown = status
        _refuse_stuck(api, name, release, view, dep)
    raise CLIError(
        f"the rollout of {name} v{release} did not finish within {timeout:.0f} s "
        f"(see `foundry deployments {name}`)"
    )


def _deployment(api: Api, name: str, release: int) -> dict[str, Any]:
    """The rollout of `release`; CLIError when a newer change replaced it."""
    deps = [
        d
        for d in api.get(f"/v1/apps/{name}/deployments")["deployments"]
        if d["to_release"] == release
    ]
    if not deps or deps[0]["state"] in ("SUPERSEDED", "CANCELED"):
        raise CLIError(f"the rollout of v{release} was replaced by a newer change")
    return dict(deps[0])


def _refuse_stuck(
    api: Api, name: str, release: int, view: dict[str, Any], dep: dict[str, Any]
) -> None:
    """CLIError when the rollout cannot finish: unplaceable, or crashing again and again."""
    stuck = [
        e
        for e in api.get(f"/v1/apps/{name}/events")["events"]
        if e["kind"] == "unplaced" and e["ts"] >= dep["created_at"]
    ]
    if stuck:
        raise CLIError(f"{stuck[-1]['detail']} (see `foundry nodes`)")
    for inst in view["instances"]:
        if inst["state"] == "CRASHED" and inst["release"] == release and inst["restarts"] >= 2:
            raise CLIError(
                f"{inst['process']}.{inst['index']} keeps crashing: "
                f"{inst['reason']} (see `foundry logs {name}`; "
                f"`foundry cancel-deploy {name}` rolls back)"
            )


def finish(
    api: Api, name: str, release: int | None, wait: bool, timeout: float, report: Reporter
) -> None:
    """Watch a rollout to its end (unless --no-wait) and say where the app is."""
    if release is None:
        return
    if not wait:
        report.tell(f"{name} v{release} is rolling out (`foundry deployments {name}`)")
        return
    view = watch_rollout(api, name, release, timeout, report)
    where = view["url"] if "web" in view["processes"] else "no web process, so no route"
    report.tell(f"{name} v{release} is running: {where}")
