"""Commands over what apps share: buildpacks, nodes, routes and API tokens."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from control.cli import views
from control.cli.client import Api
from control.cli.common import AsJson, Route, show

app = typer.Typer()
node_app = typer.Typer(no_args_is_help=True, help="Run a node agent.")
tokens_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API tokens.")


@app.command()
def buildpacks(as_json: AsJson = False) -> None:
    """List the installed buildpacks in detection order."""
    show(Api.load().get("/v1/buildpacks")["buildpacks"], as_json, views.BUILDPACKS)


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
    name: str,
    route: Route,
    balance: Annotated[str | None, typer.Option(help="round-robin or least-in-flight")] = None,
    timeout: Annotated[int | None, typer.Option(help="backend response timeout, seconds")] = None,
    sticky: Annotated[
        bool | None, typer.Option("--sticky/--no-sticky", help="pin a client to its instance")
    ] = None,
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


# --- tokens -------------------------------------------------------------------------
@tokens_app.command("create")
def tokens_create(
    kind: Annotated[str, typer.Option(help="join, deploy, read, edge or admin")],
    apps: Annotated[str | None, typer.Option(help="limit to these apps: a,b")] = None,
    ttl: Annotated[str | None, typer.Option(help="expire after e.g. 1h, 7d")] = None,
    uses: Annotated[int | None, typer.Option(min=1, help="usable for this many requests")] = None,
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
    typer.echo(
        f"{kind} token {answer['id']} created; the secret above is not shown again", err=True
    )


@tokens_app.command("list")
def tokens_list(as_json: AsJson = False) -> None:
    """List tokens (never their secrets)."""
    show(Api.load().get("/v1/tokens")["tokens"], as_json, views.tokens(time.time()))


@tokens_app.command("revoke")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token: it stops working at once."""
    Api.load().request("DELETE", f"/v1/tokens/{token_id}")
    typer.echo(f"token {token_id} revoked")


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
def node_remove(
    name: str,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="remove a node that is not lost or drained; what still runs on it is "
            "placed elsewhere and that node can no longer reach the control plane",
        ),
    ] = False,
) -> None:
    """Forget a lost or drained node; it must join again with a join token to come back."""
    done = Api.load().request(
        "DELETE", f"/v1/nodes/{name}", params={"force": "1"} if force else None
    )
    typer.echo(
        f"node {name} removed"
        + (
            f"; {done['instances']} instance(s) on it are placed elsewhere"
            if done["instances"]
            else ""
        )
    )
