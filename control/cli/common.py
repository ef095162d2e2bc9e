"""What every command module shares: the console the client side reports to, the one
renderer of lists and `--json`, and options that mean the same in every command.

The CLI prints here and in the command modules only; the client side below them (client,
deploy, follow, sources) reports through a Reporter and raises CLIError.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from control.cli import views

AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="watch the rollout until it finishes")]
Route = Annotated[str, typer.Argument(help=r"HOST\[/PATH]")]  # \[: not rich markup


class Console:
    """Prints what the client side reports (control.client.Reporter)."""

    def say(self, text: str) -> None:
        typer.echo(text, err=True)

    def tell(self, text: str) -> None:
        typer.echo(text)

    def uploading(self, sent: int, total: int) -> None:
        typer.echo(
            f"\rUploading {sent / 1024:.1f} KiB / {total / 1024:.1f} KiB", err=True, nl=False
        )

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
