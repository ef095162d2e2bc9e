"""The `foundry` command: every user command, `foundry up`, and the role entry points.

Commands are thin: the client side lives in control/ (client, deploy, follow, sources,
gitremote, supervisor) and the roles' own entry points; this module parses the command
line and formats what comes back. Errors reach the user in one place (`main`): one line
on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from control import views
from control.client import Api, CLIError, foundry_home, split_listen
from control.deploy import PushOptions, plan_push, push_all
from control.follow import finish, follow_task, log_lines, watch_rollout
from control.upprocs import die_with_up

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Foundry: push source, get a running app at a URL.")
node_app = typer.Typer(no_args_is_help=True, help="Run a node agent.")
app.add_typer(node_app, name="node")
tokens_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API tokens.")
app.add_typer(tokens_app, name="tokens")

AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]
Wait = Annotated[bool, typer.Option("--wait/--no-wait",
                                    help="watch the rollout until it finishes")]
Keyring = Annotated[Path | None, typer.Option(
    envvar="FOUNDRY_KEYRING", help="file of the keys that seal config vars (default: "
    "keyring.json in the home, made on first start)")]
Route = Annotated[str, typer.Argument(help=r"HOST\[/PATH]")]  # \[: not rich markup


def foundry_version() -> str:
    """This checkout's version (its pyproject.toml), else the installed distribution's."""
    import importlib.metadata
    import tomllib

    pyproject = Path(__file__).resolve().parent / "pyproject.toml"
    with contextlib.suppress(OSError, tomllib.TOMLDecodeError, KeyError):
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    try:
        return importlib.metadata.version("foundry-paas")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"foundry {foundry_version()}")
        raise typer.Exit()


@app.callback()
def _global(version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True,
        help="print the version and exit")] = False) -> None:
    """Foundry: push source, get a running app at a URL."""


# --- output -------------------------------------------------------------------------
class Console:
    """Prints what the client side reports (control.client.Reporter)."""

    def say(self, text: str) -> None:
        typer.echo(text, err=True)

    def tell(self, text: str) -> None:
        typer.echo(text)

    def uploading(self, sent: int, total: int) -> None:
        typer.echo(f"\rUploading {sent / 1024:.1f} KiB / {total / 1024:.1f} KiB", err=True,
                   nl=False)

    def uploaded(self) -> None:
        typer.echo("", err=True)

    def confirm(self, question: str) -> bool | None:
        return typer.confirm(question, err=True) if sys.stdin.isatty() else None


CONSOLE = Console()


def show(data: Any, as_json: bool, view: views.Columns | Callable[[Any], Any]) -> None:
    """Every list/show command's output: with --json the API's answer as it is; else a
    table of `view`'s columns, or the lines `view` makes of it."""
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    for line in views.table(data, view) if isinstance(view, dict) else view(data):
        typer.echo(line)


# --- push and apps ------------------------------------------------------------------
@app.command()
def push(
    path: Annotated[Path, typer.Argument(help="app directory")] = Path("."),
    name: Annotated[str | None, typer.Option(
        "--name", "-n", help="app name (default: dir name)")] = None,
    instances: Annotated[int | None, typer.Option("--instances", "-i", min=0, max=100)] = None,
    memory: Annotated[str | None, typer.Option("--memory", "-m", help="e.g. 256M, 1G")] = None,
    env: Annotated[list[str] | None, typer.Option(
        "--env", "-e", help="KEY=VALUE, repeatable")] = None,
    health_check: Annotated[str | None, typer.Option(
        help="port, process or http:/PATH")] = None,
    max_in_flight: Annotated[int | None, typer.Option(
        min=1, max=100, help="instances replaced at once (default 1)")] = None,
    buildpack: Annotated[str | None, typer.Option(
        "--buildpack", "-b", help="an installed pack's name, a directory or a git URL")] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="build from an empty cache")] = False,
    manifest_file: Annotated[Path | None, typer.Option(
        "--manifest", "-f", help="manifest (default DIR/manifest.yml)")] = None,
    no_manifest: Annotated[bool, typer.Option(
        "--no-manifest", help="ignore manifest.yml")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="make each app exactly what the "
                                         "manifest says (shows every change and asks first)")
                      ] = False,
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", help="apply --strict's changes without asking")] = False,
    wait: Wait = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the rollout")] = 180,
    watch: Annotated[bool, typer.Option("--watch", help="stay running and push again "
                                        "whenever a file changes")] = False,
) -> None:
    """Build DIR and run it; prints the app's URL once every instance runs."""
    opts = PushOptions(path, name, instances, memory, tuple(env or ()), health_check,
                       max_in_flight, buildpack, no_cache, manifest_file, no_manifest, strict,
                       yes, wait, timeout, watch)
    jobs = plan_push(opts, CONSOLE)
    push_all(Api.load(), jobs, opts, CONSOLE)


@app.command()
def buildpacks(as_json: AsJson = False) -> None:
    """List the installed buildpacks in detection order."""
    show(Api.load().get("/v1/buildpacks")["buildpacks"], as_json, views.BUILDPACKS)


@app.command("apps")
def list_apps(as_json: AsJson = False) -> None:
    """List apps."""
    show(Api.load().get("/v1/apps")["apps"], as_json, views.APPS)


@app.command("app")
def show_app(name: str, as_json: AsJson = False) -> None:
    """Show an app: release and each instance."""
    show(Api.load().get(f"/v1/apps/{name}"), as_json,
         lambda view: views.app_lines(view) + views.table(view["instances"], views.INSTANCES))


@app.command()
def scale(
    name: str,
    instances: Annotated[int | None, typer.Option("--instances", "-i", min=0, max=100)] = None,
    process: Annotated[str | None, typer.Option("--process", "-p", help="process type "
                                                "(default: web, or the app's only type)")
                       ] = None,
    memory: Annotated[str | None, typer.Option("--memory", "-m")] = None,
    min_: Annotated[int | None, typer.Option("--min", min=0, max=100, help="autoscale: fewest "
                                             "instances (0 scales to zero when idle)")] = None,
    max_: Annotated[int | None, typer.Option("--max", min=1, max=100,
                                             help="autoscale: most")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="autoscale: in-flight "
                                                    "requests per instance to aim for")] = None,
    idle: Annotated[str | None, typer.Option(
        help="autoscale: idle time before zero, e.g. 60s")] = None,
    window: Annotated[str | None, typer.Option(help="autoscale: averaging window, e.g. 60s "
                                               "(bursts are judged over a tenth of it)")] = None,
) -> None:
    """Set how many instances of a process type run, or autoscale web on concurrency."""
    auto = {"min": min_, "max": max_, "concurrency": concurrency, "idle": idle, "window": window}
    autoscaling = any(v is not None for v in auto.values())
    if autoscaling == (instances is not None):
        raise CLIError("give either -i N, or autoscaling with --min/--max/--concurrency/--idle")
    body = {"process": process, "instances": instances, **auto, "memory": memory or None}
    view = Api.load().request("POST", f"/v1/apps/{name}/scale",
                              json={k: v for k, v in body.items() if v is not None})
    if autoscaling:
        a = view["autoscale"]
        typer.echo(f"{name}: web autoscales between {a['min']} and {a['max']} at "
                   f"{a['concurrency']} in flight per instance (idle {a['idle']:.0f} s)")
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
    name: str, wait: Wait = True,
    instance: Annotated[int | None, typer.Option(
        "--instance", "-i", min=0, help="restart only this instance index")] = None,
    process: Annotated[str, typer.Option(
        "--process", "-p", help="with -i: the instance's process type")] = "web",
) -> None:
    """Replace every instance of an app, one at a time (or, with -i N, just instance N)."""
    api = Api.load()
    if instance is not None:
        api.request("POST", f"/v1/apps/{name}/actions/restart",
                    json={"process": process, "index": instance})
        typer.echo(f"{name}: {process}.{instance} restarting (stopped, then started again)")
        return
    view = api.request("POST", f"/v1/apps/{name}/actions/restart")
    typer.echo(f"{name}: restarting")
    if wait and view["release"]:
        watch_rollout(api, name, view["release"], 180, CONSOLE)
        typer.echo(f"{name}: every instance replaced")


@app.command()
def delete(name: str, force: Annotated[bool, typer.Option(
        "--force", "-f", help="do not ask for confirmation")] = False) -> None:
    """Delete an app, its releases and its logs (asks first unless -f)."""
    api = Api.load()
    api.get(f"/v1/apps/{name}")             # a missing app is an error before any question
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
    follow: Annotated[bool, typer.Option("--follow", "-f", "--tail",
                                         help="keep printing new lines")] = False,
    recent: Annotated[bool, typer.Option("--recent",
                                         help="print recent lines and exit")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, max=5000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Show an app's build and app log lines; -f (or --tail) follows with no gap."""
    del recent  # recent lines are what is shown without --follow
    for line in log_lines(Api.load(), name, lines, follow):
        typer.echo(json.dumps(line, sort_keys=True) if as_json else views.log_line(line))


@app.command("env")
def show_env(name: str, as_json: AsJson = False) -> None:
    """Show an app's config vars."""
    show(Api.load().get(f"/v1/apps/{name}/env")["env"], as_json,
         lambda env: [f"{key}={env[key]}" for key in sorted(env)])


@app.command("set-env")
def set_env(name: str, pairs: Annotated[list[str], typer.Argument(help="KEY=VALUE ...")],
            wait: Wait = True) -> None:
    """Set config vars (a new release, instances replaced; values already set change nothing)."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CLIError(f"{pair!r} is not KEY=VALUE")
        values[key] = value
    api = Api.load()
    answer = api.request("PATCH", f"/v1/apps/{name}/env", json={"set": values})
    typer.echo(views.env_change_line(name, "set", list(values), answer.get("unchanged", []),
                               "already has that value", "already have those values"))
    finish(api, name, answer["release"], wait, 180, CONSOLE)


@app.command("unset-env")
def unset_env(name: str, keys: list[str], wait: Wait = True) -> None:
    """Remove config vars (a new release, instances replaced; unset ones change nothing)."""
    api = Api.load()
    answer = api.request("PATCH", f"/v1/apps/{name}/env", json={"unset": keys})
    typer.echo(views.env_change_line(name, "unset", keys, answer.get("unchanged", []),
                               "is not set", "are not set"))
    finish(api, name, answer["release"], wait, 180, CONSOLE)


@app.command()
def rollback(name: str, version: Annotated[str, typer.Argument(
        help="release to return to, e.g. v3")], wait: Wait = True) -> None:
    """Make a new release from an earlier release's droplet and config vars."""
    number = version.lower().lstrip("v")
    if not number.isdigit():
        raise CLIError(f"{version!r} is not a release like v3")
    api = Api.load()
    answer = api.request("POST", f"/v1/apps/{name}/rollback", json={"version": int(number)})
    typer.echo(f"{name}: rolling back to v{number} as v{answer['release']}")
    finish(api, name, answer["release"], wait, 180, CONSOLE)


@app.command()
def deployments(name: str, as_json: AsJson = False) -> None:
    """Show an app's rollouts, newest first."""
    show(Api.load().get(f"/v1/apps/{name}/deployments")["deployments"], as_json, views.DEPLOYMENTS)


@app.command("cancel-deploy")
def cancel_deploy(name: str, wait: Wait = True) -> None:
    """Stop a rollout and go back to the release it started from."""
    api = Api.load()
    answer = api.request("POST", f"/v1/apps/{name}/deployments/cancel")
    typer.echo(f"{name}: deployment {answer['canceled']} canceled; rolling back as "
               f"v{answer['release']}")
    finish(api, name, answer["release"], wait, 180, CONSOLE)


@app.command()
def releases(name: str, as_json: AsJson = False) -> None:
    """List an app's releases, newest first."""
    show(Api.load().get(f"/v1/apps/{name}/releases")["releases"], as_json, views.RELEASES)


@app.command()
def events(name: str, as_json: AsJson = False,
           limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10000,
                                              help="show the newest N")] = 100) -> None:
    """List what happened to an app (the newest 100 unless --limit), oldest first."""
    show(Api.load().get(f"/v1/apps/{name}/events", params={"limit": limit})["events"], as_json,
         views.EVENTS)


@app.command()
def nodes(as_json: AsJson = False) -> None:
    """List nodes with state, isolation tier, seccomp filter, capacity and instances."""
    show(Api.load().get("/v1/nodes")["nodes"], as_json, views.nodes(time.time()))


@app.command()
def routes(as_json: AsJson = False) -> None:
    """List every route the edge serves, with its running backends."""
    show(Api.load().get("/v1/routes")["routes"], as_json, views.ROUTES)


@app.command("map-route")
def map_route(
    name: str, route: Route,
    balance: Annotated[str | None, typer.Option(help="round-robin or least-in-flight")] = None,
    timeout: Annotated[int | None, typer.Option(
        help="backend response timeout, seconds")] = None,
    sticky: Annotated[bool | None, typer.Option(
        "--sticky/--no-sticky", help="pin a client to its instance")] = None,
) -> None:
    """Route another host (and optional path prefix) to an app."""
    body = {"route": route, "balance": balance, "timeout": timeout, "sticky": sticky}
    Api.load().request("POST", f"/v1/apps/{name}/routes", json=body)
    typer.echo(f"{route} -> {name}")


@app.command("unmap-route")
def unmap_route(name: str, route: Route) -> None:
    """Remove a route added with map-route."""
    Api.load().request("DELETE", f"/v1/apps/{name}/routes", json={"route": route})
    typer.echo(f"{route} no longer routed to {name}")


@app.command(context_settings={"allow_interspersed_args": False})
def run(name: str, command: Annotated[list[str], typer.Argument(help="the command, after --")],
        wait: Wait = True) -> None:
    """Run a one-off command with the app's droplet and config on a node; exits with its
    exit code (`foundry run NAME -- python manage.py migrate`)."""
    import shlex

    command = command[1:] if command and command[0] == "--" else command
    if not command:
        raise CLIError("give the command after --, e.g. foundry run NAME -- ls -la")
    api = Api.load()
    task = api.request("POST", f"/v1/apps/{name}/tasks",
                       json={"command": shlex.join(command)})["task"]
    typer.echo(f"Running task {task} of {name}", err=True)
    if not wait:
        return
    state = follow_task(api, name, task, CONSOLE)
    if state["exit_code"] is None:
        raise CLIError(f"task {task} did not finish: {state['reason']}")
    raise typer.Exit(state["exit_code"])


@app.command("git-remote")
def git_remote(name: str,
               remote: Annotated[str, typer.Option(help="remote name")] = "foundry",
               directory: Annotated[Path, typer.Option("--dir", help="the git work tree")
                                    ] = Path(".")) -> None:
    """Add (or update) a git remote that deploys NAME on `git push REMOTE main`, with a
    deploy token limited to NAME (re-running replaces it and revokes the old one)."""
    from control.gitremote import add_remote
    from control.names import app_name_problem

    if problem := app_name_problem(name):
        raise CLIError(problem)
    added = add_remote(Api.load(), name, remote, directory)
    typer.echo(f"remote {remote} -> {added.url}; deploy with: git push {remote} main")
    typer.echo(f"the remote uses deploy token {added.token_id} ({added.label}); "
               f"`foundry tokens revoke {added.token_id}` withdraws it", err=True)


# --- tokens -------------------------------------------------------------------------
@tokens_app.command("create")
def tokens_create(
    kind: Annotated[str, typer.Option(help="join, deploy, read, edge or admin")],
    apps: Annotated[str | None, typer.Option(help="limit to these apps: a,b")] = None,
    ttl: Annotated[str | None, typer.Option(help="expire after e.g. 1h, 7d")] = None,
    uses: Annotated[int | None, typer.Option(
        min=1, help="usable for this many requests")] = None,
    label: Annotated[str | None, typer.Option(help="a note to recognise it by")] = None,
    as_json: AsJson = False,
) -> None:
    """Mint a token; its secret is printed once and never again."""
    body: dict[str, Any] = {"kind": kind, "ttl": ttl, "uses": uses, "label": label}
    if apps:
        body["apps"] = [a.strip() for a in apps.split(",") if a.strip()]
    answer = Api.load().request("POST", "/v1/tokens", json=body)
    if as_json:
        return show(answer, True, list)
    typer.echo(answer["token"])
    typer.echo(f"{kind} token {answer['id']} created; the secret above is not shown again",
               err=True)


@tokens_app.command("list")
def tokens_list(as_json: AsJson = False) -> None:
    """List tokens (never their secrets)."""
    show(Api.load().get("/v1/tokens")["tokens"], as_json, views.tokens(time.time()))


@tokens_app.command("revoke")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token: it stops working at once."""
    Api.load().request("DELETE", f"/v1/tokens/{token_id}")
    typer.echo(f"token {token_id} revoked")


# --- roles --------------------------------------------------------------------------
@app.command()
def control(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(help="state directory")] = None,
    listen: Annotated[str, typer.Option()] = "127.0.0.1:7070",
    domain: Annotated[str, typer.Option()] = "localhost",
    api_address: Annotated[str | None, typer.Option(
        help="HOST:PORT the edge routes api.<domain> to")] = None,
    apps_url: Annotated[str | None, typer.Option(help="URL pattern of apps, with {app} "
                                                 "(default http://{app}.DOMAIN:EDGE_PORT)")
                        ] = None,
    edge_port: Annotated[int, typer.Option(min=1, max=65535, help="the port the edge "
                                           "listens on, for app URLs (80: none shown)")] = 8080,
    tls: Annotated[bool, typer.Option("--tls", help="serve HTTPS with a self-signed "
                                      "certificate made on first start")] = False,
    tls_cert: Annotated[Path | None, typer.Option(
        help="serve HTTPS with this certificate")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="...and this private key")] = None,
    node_ttl: Annotated[float, typer.Option(min=1, help="seconds of silence before a "
                                            "node is lost and its instances move")] = 15.0,
    immediate_restarts: Annotated[int, typer.Option(
        min=0, help="crashes restarted at once")] = 3,
    backoff: Annotated[float, typer.Option(min=0, help="first restart delay after those, "
                                           "seconds (doubling)")] = 30.0,
    backoff_max: Annotated[float, typer.Option(min=0, help="longest restart delay")] = 960.0,
    give_up_after: Annotated[int, typer.Option(
        min=1, help="restarts before giving up")] = 200,
    healthy_reset: Annotated[float, typer.Option(min=1, help="seconds of healthy "
                                                 "running that reset the crash count")] = 300.0,
    keyring: Keyring = None,
) -> None:
    """Run the control plane; its first start writes an admin token into its home."""
    die_with_up()
    from control.main import banner, options_config, run

    config = options_config(**ctx.params)

    def announce(created: Path | None) -> None:
        typer.echo("\n".join(banner(config, created)))
        sys.stdout.flush()

    run(config, announce)


@app.command("rotate-key")
def rotate_key(
    home: Annotated[Path | None, typer.Option(
        help="the control plane's state directory")] = None,
    keyring: Keyring = None,
    new_key: Annotated[bool, typer.Option(
        "--new-key/--no-new-key", help="add a new current key first (--no-new-key: reseal "
        "under the current key of a keyring you edited yourself)")] = True,
) -> None:
    """Reseal every config var under a new key, then drop the keys nothing uses.

    Safe to interrupt and run again, and to run while the control plane serves: each value
    is rewritten in its own transaction, and an old key stays until no value names it.
    """
    from control.main import rotate_key

    done = rotate_key(foundry_home(home) / "control" if home is None else home, keyring, new_key)
    typer.echo(f"{done.sealed} value(s) sealed with key {done.label}; dropped "
               f"key(s): {', '.join(done.dropped) or 'none'} ({done.keyring})")


@app.command()
def edge(
    listen: Annotated[str, typer.Option()] = "127.0.0.1:8080",
    control_url: Annotated[str, typer.Option("--control")] = ...,  # type: ignore[assignment]
    token: Annotated[str, typer.Option(envvar="FOUNDRY_EDGE_TOKEN")] = ...,  # type: ignore[assignment]
    workers: Annotated[int, typer.Option(
        min=0, max=64, help="worker processes; 0: one per core")] = 0,
    admin: Annotated[str | None, typer.Option(help="HOST:PORT serving GET /healthz")] = None,
    trusted_proxy: Annotated[list[str] | None, typer.Option(
        help="CIDR whose X-Forwarded-* headers are believed; repeatable")] = None,
    access_logs: Annotated[bool, typer.Option(
        "--access-logs/--no-access-logs",
        help="ship access lines to `foundry logs` (router)")] = True,
) -> None:
    """Run the edge proxy."""
    die_with_up()
    import ipaddress

    from edge.config import EdgeConfig
    from edge.listen import PortInUse
    from edge.main import WorkerDied, run

    host, port = split_listen(listen)
    admin_host, admin_port = split_listen(admin) if admin else ("127.0.0.1", None)
    for cidr in trusted_proxy or ():
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise CLIError(f"--trusted-proxy {cidr!r} is not a network like 10.0.0.0/8") from None
    try:
        run(EdgeConfig(host=host, port=port, control_url=control_url.rstrip("/"), token=token,
                       workers=workers, admin_host=admin_host, admin_port=admin_port,
                       trusted_proxies=tuple(trusted_proxy or ()), ship_access_logs=access_logs))
    except (WorkerDied, PortInUse) as e:
        raise CLIError(str(e)) from None


@node_app.command("join")
def node_join(
    control_url: Annotated[str, typer.Argument(help="control plane URL")],
    token: Annotated[str | None, typer.Option(help="join token (only needed the first time; "
                                              "visible in `ps`: prefer --token-file or "
                                              "FOUNDRY_JOIN_TOKEN)")] = None,
    token_file: Annotated[str | None, typer.Option(help="read the join token from this file, "
                                                   "or from stdin with -")] = None,
    home: Annotated[Path | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option()] = None,
    advertise: Annotated[str, typer.Option(help="address instances are reached at")
                         ] = "127.0.0.1",
    memory: Annotated[str, typer.Option(help="memory offered to instances, e.g. 8G (auto: "
                                        "90% of this machine's)")] = "auto",
    grace: Annotated[float, typer.Option(help="seconds between SIGTERM and SIGKILL")] = 10.0,
    tier: Annotated[str | None, typer.Option(envvar="FOUNDRY_JAIL_TIER", help="force a weaker "
                                             "jail tier: rootless or plain")] = None,
    start_timeout: Annotated[float, typer.Option(
        envvar="FOUNDRY_START_TIMEOUT", help="seconds to become healthy")] = 60.0,
    liveness_interval: Annotated[float, typer.Option(
        envvar="FOUNDRY_LIVENESS_INTERVAL", help="seconds between checks")] = 30.0,
    staging_env: Annotated[Path | None, typer.Option(
        envvar="FOUNDRY_STAGING_ENV_FILE", help="KEY=VALUE file of variables every build gets "
        "(proxies, package indexes); default: staging.env in the node's home, if present")
    ] = None,
) -> None:
    """Join a control plane (or rejoin with the saved identity) and run instances."""
    die_with_up()
    import socket

    from control.names import parse_memory
    from node.agent import JoinError, NodeConfig
    from node.main import build_env, join_token, machine_memory_mb, run
    from node.staging import BASE
    from packs import PACKS_DIR

    home = home or foundry_home() / "node"
    try:
        join = join_token(token, token_file, os.environ.get("FOUNDRY_JOIN_TOKEN"))
        if token is not None:   # (join_token refuses --token with --token-file)
            typer.echo("warning: --token is visible to every user in `ps`; use --token-file "
                       "FILE, --token-file - (stdin) or FOUNDRY_JOIN_TOKEN", err=True)
        memory_mb = machine_memory_mb() * 9 // 10 if memory == "auto" else parse_memory(memory)
        run(NodeConfig(home=home, control_url=control_url.rstrip("/"), packs_dir=PACKS_DIR,
                       join_token=join, name=name or socket.gethostname(), address=advertise,
                       memory_mb=memory_mb, base_env=dict(BASE), grace=grace, tier=tier,
                       build_env=build_env(home, staging_env), start_timeout=start_timeout,
                       liveness_interval=liveness_interval))
    except (ValueError, JoinError) as e:    # a bad --memory or staging env; a refused join
        raise CLIError(str(e)) from None


def _node_state(name: str, state: str) -> None:
    Api.load().request("POST", f"/v1/nodes/{name}/state", json={"state": state})


@node_app.command("drain")
def node_drain(name: str) -> None:
    """Move a node's instances elsewhere (started there first, then stopped here)."""
    _node_state(name, "draining")
    typer.echo(f"node {name} is draining; `foundry nodes` shows its instances leave")


@node_app.command("ready")
def node_ready(name: str) -> None:
    """Let a drained node receive instances again."""
    _node_state(name, "ready")
    typer.echo(f"node {name} is ready")


@node_app.command("remove")
def node_remove(name: str, force: Annotated[bool, typer.Option(
        "--force", help="remove a node that is not lost or drained; what still runs on it is "
        "placed elsewhere and that node can no longer reach the control plane")] = False
                ) -> None:
    """Forget a lost or drained node; it must join again with a join token to come back."""
    done = Api.load().request("DELETE", f"/v1/nodes/{name}",
                              params={"force": "1"} if force else None)
    typer.echo(f"node {name} removed" + (f"; {done['instances']} instance(s) on it are placed "
                                         "elsewhere" if done["instances"] else ""))


# --- up -----------------------------------------------------------------------------
@app.command()
def up(
    home: Annotated[Path | None, typer.Option(help="state directory (default $FOUNDRY_HOME "
                                              "or ~/.foundry)")] = None,
    http_port: Annotated[int, typer.Option(min=1, max=65535, help="the edge's port")] = 8080,
    api_port: Annotated[int, typer.Option(
        min=1, max=65535, help="the control API's port")] = 7070,
    domain: Annotated[str, typer.Option(help="apps are <app>.<domain>")] = "localhost",
) -> None:
    """Run control plane, edge and one node on this machine, in the foreground."""
    from control.supervisor import Machine, Up
    from edge.listen import PortInUse, check_port_free
    from node import main as node_main
    from node.proctree import MARKER

    def port_problem(host: str, port: int) -> str | None:
        try:
            check_port_free(host, port)
        except PortInUse as e:
            return str(e)
        return None

    machine = Machine(MARKER, node_main.sweep_cgroups, port_problem,
                      lambda: node_main.isolation(os.environ.get("FOUNDRY_JAIL_TIER")))
    Up(foundry_home(home), http_port, api_port, domain, machine, typer.echo).run()


def usage_errors() -> tuple[type[Exception], type[Exception], tuple[type[Exception], ...]]:
    """(UsageError, ClickException, NoArgsIsHelpError or ()) as the installed typer raises them.

    typer 0.29 vendors click as `typer._click` and raises its own copies of click's
    exceptions, which `click.UsageError` does not catch; older typer raises click's own.
    Its public `BadParameter` is a UsageError either way, so the classes are taken from its
    ancestry instead of from a module path that changes between versions.
    """
    ancestry = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
    usage, base = ancestry["UsageError"], ancestry["ClickException"]
    no_args = getattr(sys.modules[usage.__module__], "NoArgsIsHelpError", None)
    return usage, base, (no_args,) if no_args else ()


def one_line(error: Exception) -> str:
    """A click error's message as one stderr line: its hints may span lines ("Choose from:")."""
    return " ".join(getattr(error, "format_message", error.__str__)().split())


def main() -> None:
    """Entry point: run a command; report any failure as one line on stderr."""
    from control.errors import FoundryError

    usage_error, click_error, no_args_error = usage_errors()
    try:
        code = app(standalone_mode=False)
    except (CLIError, FoundryError) as e:
        typer.echo(f"foundry: {e}", err=True)
        sys.exit(1)
    except no_args_error as e:
        # `foundry` or `foundry node` alone: the help is what was asked for, on stdout;
        # the missing command is still a usage error (click's own exit code for it)
        typer.echo(getattr(e, "format_message", e.__str__)())
        typer.echo("foundry: missing command (listed above)", err=True)
        sys.exit(2)
    except usage_error as e:
        typer.echo(f"foundry: {one_line(e)}", err=True)
        sys.exit(2)
    except click_error as e:
        typer.echo(f"foundry: {one_line(e)}", err=True)
        sys.exit(getattr(e, "exit_code", 1))
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
