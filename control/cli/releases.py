"""Commands over an app's config vars, releases, rollouts and events."""

from __future__ import annotations

from typing import Annotated

import typer

from control.cli import views
from control.cli.client import Api, CLIError
from control.cli.common import CONSOLE, AsJson, Wait, show
from control.cli.follow import finish

app = typer.Typer()


@app.command("env")
def show_env(name: str, as_json: AsJson = False) -> None:
    """Show an app's config vars."""
    show(
        Api.load().get(f"/v1/apps/{name}/env")["env"],
        as_json,
        lambda env: [f"{key}={env[key]}" for key in sorted(env)],
    )


@app.command("set-env")
def set_env(
    name: str, pairs: Annotated[list[str], typer.Argument(help="KEY=VALUE ...")], wait: Wait = True
) -> None:
    """Set config vars (a new release, instances replaced; values already set change nothing)."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CLIError(f"{pair!r} is not KEY=VALUE")
        values[key] = value
    api = Api.load()
    answer = api.request("PATCH", f"/v1/apps/{name}/env", json={"set": values})
    typer.echo(
        views.env_change_line(
            name,
            "set",
            list(values),
            answer.get("unchanged", []),
            "already has that value",
            "already have those values",
        )
    )
    finish(api, name, answer["release"], wait, 180, CONSOLE)


@app.command("unset-env")
def unset_env(name: str, keys: list[str], wait: Wait = True) -> None:
    """Remove config vars (a new release, instances replaced; unset ones change nothing)."""
    api = Api.load()
    answer = api.request("PATCH", f"/v1/apps/{name}/env", json={"unset": keys})
    typer.echo(
        views.env_change_line(
            name, "unset", keys, answer.get("unchanged", []), "is not set", "are not set"
        )
    )
    finish(api, name, answer["release"], wait, 180, CONSOLE)


@app.command()
def rollback(
    name: str,
    version: Annotated[str, typer.Argument(help="release to return to, e.g. v3")],
    wait: Wait = True,
) -> None:
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
    typer.echo(
        f"{name}: deployment {answer['canceled']} canceled; rolling back as v{answer['release']}"
    )
    finish(api, name, answer["release"], wait, 180, CONSOLE)


@app.command()
def releases(name: str, as_json: AsJson = False) -> None:
    """List an app's releases, newest first."""
    show(Api.load().get(f"/v1/apps/{name}/releases")["releases"], as_json, views.RELEASES)


@app.command()
def events(
    name: str,
    as_json: AsJson = False,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=10000, help="show the newest N")
    ] = 100,
) -> None:
    """List what happened to an app (the newest 100 unless --limit), oldest first."""
    show(
        Api.load().get(f"/v1/apps/{name}/events", params={"limit": limit})["events"],
        as_json,
        views.EVENTS,
    )
