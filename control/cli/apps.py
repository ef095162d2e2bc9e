"""Commands that push apps and run, scale, stop, restart, follow and delete them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from control.cli import views
from control.cli.client import Api, CLIError
from control.cli.common import CONSOLE, AsJson, Wait, show
from control.cli.deploy import PushOptions, plan_push, push_all
from control.cli.follow import follow_task, log_lines, watch_rollout

app = typer.Typer()


@app.command()
def push(
    path: Annotated[Path, typer.Argument(help="app directory")] = Path("."),
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="app name (default: dir name)")
    ] = None,
    instances: Annotated[int | None, typer.Option("--instances", "-i", min=0, max=100)] = None,
    memory: Annotated[str | None, typer.Option("--memory", "-m", help="e.g. 256M, 1G")] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, repeatable")
    ] = None,
    health_check: Annotated[str | None, typer.Option(help="port, process or http:/PATH")] = None,
    max_in_flight: Annotated[
        int | None, typer.Option(min=1, max=100, help="instances replaced at once (default 1)")
    ] = None,
    buildpack: Annotated[
        str | None,
        typer.Option(
            "--buildpack", "-b", help="an installed pack's name, a directory or a git URL"
        ),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="build from an empty cache")] = False,
    manifest_file: Annotated[
        Path | None, typer.Option("--manifest", "-f", help="manifest (default DIR/manifest.yml)")
    ] = None,
    no_manifest: Annotated[bool, typer.Option("--no-manifest", help="ignore manifest.yml")] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="make each app exactly what the manifest says (shows every change and asks first)",
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="apply --strict's changes without asking")
    ] = False,
    wait: Wait = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the rollout")] = 180,
    watch: Annotated[
        bool, typer.Option("--watch", help="stay running and push again whenever a file changes")
    ] = False,
) -> None:
    """Build DIR and run it; prints the app's URL once every instance runs."""
    opts = PushOptions(
        path,
        name,
        instances,
        memory,
        tuple(env or ()),
        health_check,
        max_in_flight,
        buildpack,
        no_cache,
        manifest_file,
        no_manifest,
        strict,
        yes,
        wait,
        timeout,
        watch,
    )
    jobs = plan_push(opts, CONSOLE)
    push_all(Api.load(), jobs, opts, CONSOLE)


@app.command("apps")
def list_apps(as_json: AsJson = False) -> None:
    """List apps."""
    show(Api.load().get("/v1/apps")["apps"], as_json, views.APPS)


@app.command("app")
def show_app(name: str, as_json: AsJson = False) -> None:
    """Show an app: release and each instance."""
    show(
        Api.load().get(f"/v1/apps/{name}"),
        as_json,
        lambda view: views.app_lines(view) + views.table(view["instances"], views.INSTANCES),
    )


@app.command()
def scale(
    name: str,
    instances: Annotated[int | None, typer.Option("--instances", "-i", min=0, max=100)] = None,
    process: Annotated[
        str | None,
        typer.Option("--process", "-p", help="process type (default: web, or the app's only type)"),
    ] = None,
    memory: Annotated[str | None, typer.Option("--memory", "-m")] = None,
    min_: Annotated[
        int | None,
        typer.Option(
            "--min", min=0, max=100, help="autoscale: fewest instances (0 scales to zero when idle)"
        ),
    ] = None,
    max_: Annotated[
        int | None, typer.Option("--max", min=1, max=100, help="autoscale: most")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="autoscale: in-flight requests per instance to aim for"),
    ] = None,
    idle: Annotated[
        str | None, typer.Option(help="autoscale: idle time before zero, e.g. 60s")
    ] = None,
    window: Annotated[
        str | None,
        typer.Option(
            help="autoscale: averaging window, e.g. 60s (bursts are judged over a tenth of it)"
        ),
    ] = None,
) -> None:
    """Set how many instances of a process type run, or autoscale web on concurrency."""
    auto = {"min": min_, "max": max_, "concurrency": concurrency, "idle": idle, "window": window}
    autoscaling = any(v is not None for v in auto.values())
    if autoscaling == (instances is not None):
        raise CLIError("give either -i N, or autoscaling with --min/--max/--concurrency/--idle")
    body = {"process": process, "instances": instances, **auto, "memory": memory or None}
    view = Api.load().request(
        "POST", f"/v1/apps/{name}/scale", json={k: v for k, v in body.items() if v is not None}
    )
    if autoscaling:
        a = view["autoscale"]
        typer.echo(
            f"{name}: web autoscales between {a['min']} and {a['max']} at "
            f"{a['concurrency']} in flight per instance (idle {a['idle']:.0f} s)"
        )
    else:
        typer.echo(f"{name}: {view.get('scaled', process)} scaled to {instances}")


def _action(name: str, action: str) -> None:
    Api.load().request("POST", f"/v1/apps/{name}/actions/{action}")
    typer.echo(f"{name}: {action} requested")


@app.command("open")
def open_app(name: str) -> None:
    """Print an app's URL, and open it in a browser when there is a display."""
    view = Api.load().get(f"/v1/apps/{name}")
    if "web" not in view["processes"]:
        raise CLIError(f"{name} has no web process, so no URL")
    typer.echo(view["url"])
    if _has_display():
        import webbrowser

        webbrowser.open(view["url"])


def _has_display() -> bool:
    """A graphical session to open a browser in (never under FOUNDRY_NO_BROWSER)."""
    if os.environ.get("FOUNDRY_NO_BROWSER"):
        return False
    if sys.platform in ("darwin", "win32"):
        return sys.stdout.isatty()
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@app.command()
def stop(name: str) -> None:
    """Stop every instance of an app (its route answers 503)."""
    _action(name, "stop")


@app.command()
def start(name: str) -> None:
    """Start a stopped app."""
    _action(name, "start")


@app.command()
def restart(
    name: str,
    wait: Wait = True,
    instance: Annotated[
        int | None, typer.Option("--instance", "-i", min=0, help="restart only this instance index")
    ] = None,
    process: Annotated[
        str, typer.Option("--process", "-p", help="with -i: the instance's process type")
    ] = "web",
) -> None:
    """Replace every instance of an app, one at a time (or, with -i N, just instance N)."""
    api = Api.load()
    if instance is not None:
        api.request(
            "POST", f"/v1/apps/{name}/actions/restart", json={"process": process, "index": instance}
        )
        typer.echo(f"{name}: {process}.{instance} restarting (stopped, then started again)")
        return
    view = api.request("POST", f"/v1/apps/{name}/actions/restart")
    typer.echo(f"{name}: restarting")
    if wait and view["release"]:
        watch_rollout(api, name, view["release"], 180, CONSOLE)
        typer.echo(f"{name}: every instance replaced")


@app.command()
def delete(
    name: str,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="do not ask for confirmation")
    ] = False,
) -> None:
    """Delete an app, its releases and its logs (asks first unless -f)."""
    api = Api.load()
    api.get(f"/v1/apps/{name}")  # a missing app is an error before any question
    agreed = True if force else CONSOLE.confirm(f"Delete {name}, its releases and its logs?")
    if agreed is None:
        raise CLIError(f"not deleting {name}: no terminal to confirm on; pass -f")
    if not agreed:
        raise CLIError(f"{name} not deleted")
    api.request("DELETE", f"/v1/apps/{name}")
    typer.echo(f"{name} deleted")


@app.command()
def logs(
    name: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", "--tail", help="keep printing new lines")
    ] = False,
    recent: Annotated[bool, typer.Option("--recent", help="print recent lines and exit")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, max=5000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Show an app's build and app log lines; -f (or --tail) follows with no gap."""
    del recent  # recent lines are what is shown without --follow
    for line in log_lines(Api.load(), name, lines, follow):
        typer.echo(json.dumps(line, sort_keys=True) if as_json else views.log_line(line))


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    name: str,
    command: Annotated[list[str], typer.Argument(help="the command, after --")],
    wait: Wait = True,
) -> None:
    """Run a one-off command with the app's droplet and config on a node; exits with its
    exit code (`foundry run NAME -- python manage.py migrate`)."""
    import shlex

    command = command[1:] if command and command[0] == "--" else command
    if not command:
        raise CLIError("give the command after --, e.g. foundry run NAME -- ls -la")
    api = Api.load()
    task = api.request("POST", f"/v1/apps/{name}/tasks", json={"command": shlex.join(command)})[
        "task"
    ]
    typer.echo(f"Running task {task} of {name}", err=True)
    if not wait:
        return
    state = follow_task(api, name, task, CONSOLE)
    if state["exit_code"] is None:
        raise CLIError(f"task {task} did not finish: {state['reason']}")
    raise typer.Exit(state["exit_code"])


@app.command("git-remote")
def git_remote(
    name: str,
    remote: Annotated[str, typer.Option(help="remote name")] = "foundry",
    directory: Annotated[Path, typer.Option("--dir", help="the git work tree")] = Path("."),
) -> None:
    """Add (or update) a git remote that deploys NAME on `git push REMOTE main`, with a
    deploy token limited to NAME (re-running replaces it and revokes the old one)."""
    from control.cli.gitremote import add_remote
    from control.names import app_name_problem

    if problem := app_name_problem(name):
        raise CLIError(problem)
    added = add_remote(Api.load(), name, remote, directory)
    typer.echo(f"remote {remote} -> {added.url}; deploy with: git push {remote} main")
    typer.echo(
        f"the remote uses deploy token {added.token_id} ({added.label}); "
        f"`foundry tokens revoke {added.token_id}` withdraws it",
        err=True,
    )
