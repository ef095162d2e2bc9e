"""The environment builds run with: a fixed base plus what the admin sets, nothing else.

A build runs the tenant's code, so it must not inherit the node agent's own
environment (the operator's `*_proxy`, `PIP_*`, `UV_*`, `npm_config_*`, tokens...).
It gets exactly:

* BASE: what the packs need to find their tools (PATH, LANG);
* the admin's staging environment (Cloud Foundry's staging environment variable
  group), read once at node start from an env file: `KEY=VALUE` lines, `#` comments
  and blank lines skipped, the value taken literally (no quotes, no expansion: the
  format of `docker run --env-file`). This is where a proxy or a package index that
  builds should use belongs;
* the node's tool paths (FOUNDRY_UV) and, per build, HOME, set by the stager.

The admin may override BASE but not HOME or FOUNDRY_* (the node's own names).
"""

from __future__ import annotations

import re
from pathlib import Path

BASE = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
ENV_FILE = "staging.env"  # in the node's home, used when no file is named
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_BYTES = 64 << 10


class StagingEnvError(ValueError):
    """An unusable staging env file; the message names the file and line."""


def _reserved(name: str) -> bool:
    return name == "HOME" or name.startswith("FOUNDRY_")


def parse_env_file(text: str, where: str = "staging env") -> dict[str, str]:
    """`KEY=VALUE` lines into a dict (pure); StagingEnvError names the bad line."""
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = raw.lstrip().partition("=")
        if not sep or not _NAME.match(name):
            raise StagingEnvError(f"{where} line {number} is not NAME=VALUE with a POSIX name")
        if _reserved(name):
            raise StagingEnvError(f"{where} line {number}: {name} is set by the node itself")
        env[name] = value
    return env


def load_staging_env(path: Path) -> dict[str, str]:
    """The admin's staging env file at `path`, parsed."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StagingEnvError(
            f"cannot read the staging env file {path}: {e.strerror or e}"
        ) from None
    if len(data) > MAX_BYTES:
        raise StagingEnvError(f"the staging env file {path} is larger than {MAX_BYTES} bytes")
    return parse_env_file(data.decode(errors="replace"), str(path))
