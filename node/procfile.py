"""Parsing of Procfiles and of a pack's `bin/release` output: pure, no I/O.

A Procfile line is `<type>: <command>`; blank lines and `#` comments are skipped;
a later line for the same type wins, as on Heroku. `bin/release` prints YAML whose
`default_process_types` mapping supplies commands the Procfile does not override.
Both are written by the app's own build, so an error says where and why, never what
the text holds (a build could make them say anything the build could not read).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_LINE = re.compile(r"^([A-Za-z0-9_-]+)\s*:\s*(.+?)\s*$")


class ProcfileError(ValueError):
    """A Procfile or release document that cannot be used, with the reason."""


def parse_procfile(text: str) -> dict[str, str]:
    """Process types from Procfile text; ProcfileError names the bad line."""
    processes: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise ProcfileError(f"Procfile line {number} is not '<type>: <command>'")
        name = match.group(1).lower()
        processes[name] = match.group(2)
    return processes


def parse_release(text: str) -> dict[str, str]:
    """`default_process_types` from a pack's `bin/release` YAML (empty when absent)."""
    if not text.strip():
        return {}
    try:
        doc: Any = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ProcfileError(f"bin/release printed invalid YAML{where}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ProcfileError("bin/release must print a YAML mapping")
    types = doc.get("default_process_types") or {}
    if not isinstance(types, dict):
        raise ProcfileError("default_process_types must be a mapping")
    return {str(k).lower(): str(v) for k, v in types.items() if v is not None}


def process_types(procfile: str | None, release: str) -> dict[str, str]:
    """The release's process types: the pack's defaults, overridden by the Procfile."""
    merged = parse_release(release)
    if procfile is not None:
        merged.update(parse_procfile(procfile))
    return merged
