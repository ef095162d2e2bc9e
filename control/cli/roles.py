"""Commands that run the control plane, or work on its home while it is stopped."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from control.cli.upprocs import die_with_up
from control.config import foundry_home

app = typer.Typer()

Keyring = Annotated[
    Path | None,
    typer.Option(
        envvar="FOUNDRY_KEYRING",
        help="file of the keys that seal config vars (default: "
        "keyring.json in the home, made on first start)",
    ),
]


@app.command()
def control(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(help="state directory")] = None,
    listen: Annotated[str, typer.Option()] = "127.0.0.1:7070",
    domain: Annotated[str, typer.Option()] = "localhost",
    api_address: Annotated[
        str | None, typer.Option(help="HOST:PORT the edge routes api.<domain> to")
    ] = None,
    apps_url: Annotated[
        str | None,
        typer.Option(
            help="URL pattern of apps, with {app} (default http://{app}.DOMAIN:EDGE_PORT)"
        ),
    ] = None,
    edge_port: Annotated[
        int,
        typer.Option(
            min=1, max=65535, help="the port the edge listens on, for app URLs (80: none shown)"
        ),
    ] = 8080,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls", help="serve HTTPS with a self-signed certificate made on first start"
        ),
    ] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="serve HTTPS with this certificate")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="...and this private key")] = None,
    node_ttl: Annotated[
        float,
        typer.Option(min=1, help="seconds of silence before a node is lost and its instances move"),
    ] = 15.0,
    immediate_restarts: Annotated[int, typer.Option(min=0, help="crashes restarted at once")] = 3,
    backoff: Annotated[
        float, typer.Option(min=0, help="first restart delay after those, seconds (doubling)")
    ] = 30.0,
    backoff_max: Annotated[float, typer.Option(min=0, help="longest restart delay")] = 960.0,
    give_up_after: Annotated[int, typer.Option(min=1, help="restarts before giving up")] = 200,
    healthy_reset: Annotated[
        float, typer.Option(min=1, help="seconds of healthy running that reset the crash count")
    ] = 300.0,
    build_timeout: Annotated[
        float,
        typer.Option(
            min=1,
            envvar="FOUNDRY_BUILD_TIMEOUT",
            help="seconds a build may go without a node taking it or reporting on it "
            "before it fails (the node's own compile limit is 900)",
        ),
    ] = 1200.0,
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
    home: Annotated[Path | None, typer.Option(help="the control plane's state directory")] = None,
    keyring: Keyring = None,
    new_key: Annotated[
        bool,
        typer.Option(
            "--new-key/--no-new-key",
            help="add a new current key first (--no-new-key: reseal "
            "under the current key of a keyring you edited yourself)",
        ),
    ] = True,
) -> None:
    """Reseal every config var under a new key, then drop the keys nothing uses.

    Safe to interrupt and run again, and to run while the control plane serves: each value
    is rewritten in its own transaction, and an old key stays until no value names it.
    """
    from control.main import rotate_key

    done = rotate_key(foundry_home(home) / "control" if home is None else home, keyring, new_key)
    typer.echo(
        f"{done.sealed} value(s) sealed with key {done.label}; dropped "
        f"key(s): {', '.join(done.dropped) or 'none'} ({done.keyring})"
    )
