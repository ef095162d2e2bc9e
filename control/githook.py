"""The pre-receive hook of every app repository: a push of the deploy branch is a deploy.

git runs this (as `python -m control.githook`) inside `git receive-pack`, with the
pushed ref updates on stdin; whatever it prints reaches the pusher as `remote:`
lines. It refuses a commit whose files add up past the source package cap (sizes
from git's own object headers, before anything is inflated), archives the pushed
commit (submodules are not fetched: their entries are left out of the archive),
uploads it as a build through the control API like any client, streams the build
log, and waits for the rollout. A non-zero exit refuses the push,
so the branch only moves when the new release runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from control.model import BUILD_ENDED, BuildState, DeploymentState

DEPLOY_BRANCHES = ("refs/heads/main", "refs/heads/master")
ZERO = "0" * 40
# The stager's closing line of a failed build: the hook's refusal says the same, once.
BUILD_FAILED_LINE = "-----> Build failed: "


class HookError(Exception):
    """Why the push is refused (one line for the pusher)."""


class Api:
    def __init__(self, url: str, token: str, app: str) -> None:
        self.http = httpx.Client(
            base_url=url, timeout=60, headers={"authorization": f"Bearer {token}"}
        )
        self.app = app

    def call(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.http.request(method, path, **kw)
        if resp.status_code >= 400:
            raise HookError(resp.json().get("error", resp.text))
        return resp.json()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def archive(commit: str, dest: Path) -> None:
    subprocess.run(
        ["git", "archive", "--format=tar.gz", "-o", str(dest), commit],
        check=True,
        env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1"},
    )


def tree_size(commit: str) -> int:
    """What the commit's files add up to, from git's object headers (nothing inflated)."""
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "-l", "-z", commit], check=True, capture_output=True
    ).stdout
    total = 0
    for entry in listing.split(b"\0"):
        fields = entry.partition(b"\t")[0].split()
        if len(fields) == 4 and fields[1] == b"blob" and fields[3].isdigit():
            total += int(fields[3])
    return total


def check_size(commit: str, limit: int) -> None:
    """Refuse a commit whose files expand past the package cap before archiving them."""
    size = tree_size(commit)
    if size > limit:
        raise HookError(
            f"the pushed files add up to {size} bytes; an app's source may "
            f"expand to at most {limit} bytes"
        )


def follow(api: Api, build: str) -> dict[str, Any]:
    after = 0
    while True:
        state: dict[str, Any] = api.call("GET", f"/v1/builds/{build}")
        done = state["state"] in BUILD_ENDED
        page = api.call(
            "GET",
            f"/v1/apps/{api.app}/logs",
            params={"build": build, "after": after, "wait": 0 if done else 5},
        )
        for line in page["lines"]:
            if not line["line"].startswith(BUILD_FAILED_LINE):
                say(line["line"])
        after = page["next"] or after
        if done and not page["lines"]:
            return state


def wait_rollout(api: Api, release: int, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    revision = ""
    while time.monotonic() < deadline:
        view: dict[str, Any] = api.call(
            "GET", f"/v1/apps/{api.app}", params={"wait": 5, "revision": revision}
        )
        revision = view["revision"]
        deps = [
            d
            for d in api.call("GET", f"/v1/apps/{api.app}/deployments")["deployments"]
            if d["to_release"] == release
        ]
        if deps and deps[0]["state"] == DeploymentState.SUCCEEDED:
            return view
        if deps and deps[0]["state"] in (DeploymentState.SUPERSEDED, DeploymentState.CANCELED):
            raise HookError(f"the rollout of v{release} was replaced by a newer change")
    raise HookError(f"v{release} did not start within {timeout:.0f} s")


def forget_new_app(api: Api) -> str:
    """Delete the app this push created, whose first build failed (nothing came of the
    push, so no husk is left behind); says what became of it."""
    try:
        api.call("DELETE", f"/v1/apps/{api.app}")
    except (HookError, httpx.HTTPError) as e:
        return f"the new app {api.app} stays, with no release ({e})"
    return f"the new app {api.app} is not kept"


def deploy(api: Api, commit: str, max_expanded: int) -> None:
    check_size(commit, max_expanded)
    with tempfile.TemporaryDirectory() as tmp:
        tarball = Path(tmp) / "source.tgz"
        archive(commit, tarball)
        with open(tarball, "rb") as body:
            started = api.call("POST", f"/v1/apps/{api.app}/builds", content=body.read())
    say(f"-----> Building {api.app} from {commit[:10]} (build {started['build']})")
    build = follow(api, started["build"])
    if build["state"] == BuildState.FAILED:
        after = forget_new_app(api) if started["created"] else "the running release keeps serving"
        raise HookError(f"build failed: {build['error']}; the push is refused and {after}")
    if build["release"] == started.get("current_release"):
        say(f"-----> {api.app}: no change: release v{build['release']} is current")
        return
    view = wait_rollout(api, build["release"])
    where = view["url"] if "web" in view["processes"] else "no web process, so no route"
    say(f"-----> {api.app} v{build['release']} is running: {where}")


def main() -> int:
    api = Api(os.environ["FOUNDRY_API"], os.environ["FOUNDRY_TOKEN"], os.environ["FOUNDRY_APP"])
    updates = [line.split() for line in sys.stdin.read().splitlines() if line.strip()]
    try:
        for _old, new, ref in updates:
            if ref not in DEPLOY_BRANCHES:
                raise HookError(f"push to main or master to deploy (not {ref})")
            if new == ZERO:
                raise HookError("deleting the deploy branch is not allowed")
            deploy(api, new, int(os.environ.get("FOUNDRY_MAX_EXPANDED") or 1 << 30))
    except HookError as e:
        say(f"!      {e}")
        return 1
    except httpx.HTTPError as e:
        say(f"!      cannot reach the control plane: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
