"""Every CLI command, given bad arguments, answers with one stderr line and a usage exit.

The cases are generated from the command tree typer builds from `foundry.app`, so a new
command (or subcommand group) is covered without touching this file: for each command an
unknown option; where it takes a required argument or option, none of them; for each int or
float option, a value that is not a number. Each case runs `python -m foundry` in its own
process, as a user would, with FOUNDRY_API pointing at a closed loopback port so nothing is
ever contacted, and a throwaway FOUNDRY_HOME.
"""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

import foundry

ROOT = Path(__file__).resolve().parents[2]
NUMBERS = (int, float)


def commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (path, command) in the tree, groups included (a group has `.commands`)."""
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from commands(sub, (*path, name))


def annotation(cmd: Any, param: Any) -> Any:
    """The Python type a parameter was declared with (typer builds params from hints), seen
    through `X | None` (an option without a default is declared that way)."""
    hint = typing.get_type_hints(inspect.unwrap(cmd.callback)).get(param.name)
    given = [a for a in typing.get_args(hint) if a is not type(None)]
    return given[0] if isinstance(hint, types.UnionType) and len(given) == 1 else hint


def filler(cmd: Any, param: Any) -> list[str]:
    """A well-formed value for a required parameter, so another mistake is the one tested."""
    value = "1" if annotation(cmd, param) in NUMBERS else "x"
    return [param.opts[0], value] if param.param_type_name == "option" else [value]


def bad_invocations(root: Any) -> Iterator[tuple[str, ...]]:
    for path, cmd in commands(root):
        yield (*path, "--no-such-option")
        if hasattr(cmd, "commands"):
            yield path  # a group without its subcommand
            yield (*path, "no-such-command")
            continue
        required = [p for p in cmd.params if p.required]
        if required:
            yield path
        filled = [word for p in required for word in filler(cmd, p)]
        for param in cmd.params:
            if param.param_type_name == "option" and annotation(cmd, param) in NUMBERS:
                yield (*path, param.opts[0], "abc", *filled)


# the mistakes new users made (issue 19), on top of the generated ones
KNOWN = [
    ("scale", "app", "-i", "-1"),
    ("scale", "app", "-i", "abc"),
    ("logs", "app", "--tail", "3"),
    ("lgs",),
    ("app",),
]
CASES = sorted(set(bad_invocations(typer.main.get_command(foundry.app))) | set(KNOWN))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], Any]:
    """Run every case once (a few at a time: each is a fresh interpreter, ~0.5 s)."""
    env = {
        **os.environ,
        "FOUNDRY_API": f"http://127.0.0.1:{closed_port()}",
        "FOUNDRY_TOKEN": "not-a-token",
        "FOUNDRY_HOME": str(tmp_path_factory.mktemp("home")),
    }

    def run(args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "foundry", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(CASES, pool.map(run, CASES), strict=True))


def test_the_tree_is_walked() -> None:
    # the generator must see the groups and their commands, not just the top level
    assert ("node", "join") in {c[:2] for c in CASES}
    assert ("tokens", "create") in {c[:2] for c in CASES}
    assert ("scale", "--instances", "abc", "x") in CASES


@pytest.mark.parametrize("args", CASES, ids=" ".join)
def test_bad_arguments_get_one_line(
    args: tuple[str, ...], answers: dict[tuple[str, ...], Any]
) -> None:
    done = answers[args]
    lines = done.stderr.splitlines()
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr + done.stdout
    assert len(lines) == 1, lines
    assert lines[0].startswith("foundry: "), lines
    assert lines[0][9:].strip(), lines


HELPS = [path for path, _ in commands(typer.main.get_command(foundry.app))]


@pytest.mark.parametrize("path", HELPS, ids=lambda path: " ".join(path) or "foundry")
def test_every_help_is_shown(path: tuple[str, ...]) -> None:
    # help text is rich markup to typer: "[/PATH]" once made `map-route --help` a traceback
    done = CliRunner().invoke(foundry.app, [*path, "--help"])
    assert done.exit_code == 0, done.output
    assert done.exception is None, done.output
    assert "Usage:" in done.output
