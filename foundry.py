"""The `foundry` command: assembles the command groups and reports every failure.

Commands live in control/cli/ by group (apps, releases, platform, roles) over the client
side there (client, deploy, follow, sources); the three that start a role needing node or
edge code (`edge`, `node join`, `up`) are here, because only this module may import every
role. Errors reach the user in one place (`main`): one line on stderr and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from control.cli import apps, platform, releases, roles
from control.cli.client import CLIError
from control.cli.upprocs import die_with_up
from control.config import foundry_home, split_listen

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Foundry: push source, get a running app at a URL.",
)
here = typer.Typer()  # this module's commands, listed after the groups' in --help
for group in (apps.app, releases.app, platform.app, roles.app, here):
    app.add_typer(group)
app.add_typer(platform.node_app, name="node")
app.add_typer(platform.tokens_app, name="tokens")


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
def _global(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Foundry: push source, get a running app at a URL."""


@here.command()
def edge(
    listen: Annotated[str, typer.Option()] = "127.0.0.1:8080",
    control_url: Annotated[str, typer.Option("--control")] = ...,  # type: ignore[assignment]
    token: Annotated[str, typer.Option(envvar="FOUNDRY_EDGE_TOKEN")] = ...,  # type: ignore[assignment]
    workers: Annotated[
        int, typer.Option(min=0, max=64, help="worker processes; 0: one per core")
    ] = 0,
    admin: Annotated[str | None, typer.Option(help="HOST:PORT serving GET /healthz")] = None,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(help="CIDR whose X-Forwarded-* headers are believed; repeatable"),
    ] = None,
    access_logs: Annotated[
        bool,
        typer.Option(
            "--access-logs/--no-access-logs", help="ship access lines to `foundry logs` (router)"
        ),
    ] = True,
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
        run(
            EdgeConfig(
                host=host,
                port=port,
                control_url=control_url.rstrip("/"),
                token=token,
                workers=workers,
                admin_host=admin_host,
                admin_port=admin_port,
                trusted_proxies=tuple(trusted_proxy or ()),
                ship_access_logs=access_logs,
            )
        )
    except (WorkerDied, PortInUse) as e:
        raise CLIError(str(e)) from None


@platform.node_app.command("join")
def node_join(
    control_url: Annotated[str, typer.Argument(help="control plane URL")],
    token: Annotated[
        str | None,
        typer.Option(
            help="join token (only needed the first time; "
            "visible in `ps`: prefer --token-file or "
            "FOUNDRY_JOIN_TOKEN)"
        ),
    ] = None,
    token_file: Annotated[
        str | None, typer.Option(help="read the join token from this file, or from stdin with -")
    ] = None,
    home: Annotated[Path | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option()] = None,
    advertise: Annotated[str, typer.Option(help="address instances are reached at")] = "127.0.0.1",
    memory: Annotated[
        str, typer.Option(help="memory offered to instances, e.g. 8G (auto: 90% of this machine's)")
    ] = "auto",
    grace: Annotated[float, typer.Option(help="seconds between SIGTERM and SIGKILL")] = 10.0,
    tier: Annotated[
        str | None,
        typer.Option(
            envvar="FOUNDRY_JAIL_TIER", help="force a weaker jail tier: rootless or plain"
        ),
    ] = None,
    start_timeout: Annotated[
        float, typer.Option(envvar="FOUNDRY_START_TIMEOUT", help="seconds to become healthy")
    ] = 60.0,
    liveness_interval: Annotated[
        float, typer.Option(envvar="FOUNDRY_LIVENESS_INTERVAL", help="seconds between checks")
    ] = 30.0,
    staging_env: Annotated[
        Path | None,
        typer.Option(
            envvar="FOUNDRY_STAGING_ENV_FILE",
            help="KEY=VALUE file of variables every build gets "
            "(proxies, package indexes); default: staging.env in the node's home, if present",
        ),
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
        if token is not None:  # (join_token refuses --token with --token-file)
            typer.echo(
                "warning: --token is visible to every user in `ps`; use --token-file "
                "FILE, --token-file - (stdin) or FOUNDRY_JOIN_TOKEN",
                err=True,
            )
        memory_mb = machine_memory_mb() * 9 // 10 if memory == "auto" else parse_memory(memory)
        run(
            NodeConfig(
                home=home,
                control_url=control_url.rstrip("/"),
                packs_dir=PACKS_DIR,
                join_token=join,
                name=name or socket.gethostname(),
                address=advertise,
                memory_mb=memory_mb,
                base_env=dict(BASE),
                grace=grace,
                tier=tier,
                build_env=build_env(home, staging_env),
                start_timeout=start_timeout,
                liveness_interval=liveness_interval,
            )
        )
    except (ValueError, JoinError) as e:  # a bad --memory or staging env; a refused join
        raise CLIError(str(e)) from None


# --- up -----------------------------------------------------------------------------
@here.command()
def up(
    home: Annotated[
        Path | None, typer.Option(help="state directory (default $FOUNDRY_HOME or ~/.foundry)")
    ] = None,
    http_port: Annotated[int, typer.Option(min=1, max=65535, help="the edge's port")] = 8080,
    api_port: Annotated[int, typer.Option(min=1, max=65535, help="the control API's port")] = 7070,
    domain: Annotated[str, typer.Option(help="apps are <app>.<domain>")] = "localhost",
) -> None:
    """Run control plane, edge and one node on this machine, in the foreground."""
    from control.cli.supervisor import Machine, Up
    from edge.listen import PortInUse, check_port_free
    from node import main as node_main
    from node.proctree import MARKER

    def port_problem(host: str, port: int) -> str | None:
        try:
            check_port_free(host, port)
        except PortInUse as e:
            return str(e)
        return None

    machine = Machine(
        MARKER,
        node_main.sweep_cgroups,
        port_problem,
        lambda: node_main.isolation(os.environ.get("FOUNDRY_JAIL_TIER")),
    )
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
