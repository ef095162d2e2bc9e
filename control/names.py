"""Validation of user-chosen names and values: pure, no I/O.

App names become DNS labels in `<app>.<domain>`, so they follow RFC 1123 label rules:
lower-case letters, digits and hyphens, 1-63 characters, not starting or ending
with a hyphen. Config var names follow POSIX environment names.
"""

from __future__ import annotations

import re

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PROCESS = re.compile(r"^[a-z0-9][a-z0-9_-]{0,29}$")
RESERVED_APP_NAMES = frozenset({"api"})
# Variables the platform sets for every instance; users may not override them.
RESERVED_ENV = frozenset(
    {
        "PORT",
        "FOUNDRY_APP_NAME",
        "FOUNDRY_INSTANCE_INDEX",
        "FOUNDRY_RELEASE",
        "VCAP_APPLICATION",
        "VCAP_SERVICES",
    }
)


def app_name_problem(name: str) -> str | None:
    """Why `name` cannot be an app name, or None when it can."""
    if not name:
        return "app name is empty"
    if len(name) > 63:
        return f"app name {name!r} is longer than 63 characters"
    if not _LABEL.match(name):
        return (
            f"app name {name!r} is not a DNS label: use lower-case letters, digits and "
            "hyphens, not starting or ending with a hyphen"
        )
    if name in RESERVED_APP_NAMES:
        return f"app name {name!r} is reserved"
    return None


def env_name_problem(key: str) -> str | None:
    """Why `key` cannot be a config var name, or None when it can."""
    if not _ENV_NAME.match(key):
        return f"config var name {key!r} must match [A-Za-z_][A-Za-z0-9_]*"
    if key in RESERVED_ENV:
        return f"config var {key!r} is set by the platform and cannot be changed"
    return None


def process_name_problem(name: str) -> str | None:
    """Why `name` cannot be a process type, or None when it can."""
    if not _PROCESS.match(name):
        return f"process type {name!r} must be lower-case letters, digits, '-' or '_'"
    return None


def parse_memory(text: str) -> int:
    """Memory like '256M', '1G', '512' (MiB) -> MiB; ValueError with a reason otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*([MmGg]i?[Bb]?)?\s*", text)
    if not m:
        raise ValueError(f"memory {text!r} is not a size like 256M or 1G")
    value = int(m.group(1))
    unit = (m.group(2) or "M")[0].upper()
    mib = value * 1024 if unit == "G" else value
    if not 16 <= mib <= 1024 * 1024:
        raise ValueError(f"memory {text!r} must be between 16M and 1024G")
    return mib


def parse_route(text: str) -> tuple[str, str]:
    """'Host[/path]' -> (lower-case host, path prefix '/...' without a trailing slash);
    ValueError with a reason."""
    host, slash, rest = text.strip().partition("/")
    host = host.lower().rstrip(".")
    labels = host.split(".")
    if not host or len(host) > 253 or any(not _LABEL.match(label) for label in labels):
        raise ValueError(f"route host {host!r} is not a DNS name")
    path = "/" + rest.strip("/") if slash else "/"
    if any(part in (".", "..") for part in path.split("/")) or not re.fullmatch(
        r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*", path
    ):
        raise ValueError(f"route path {path!r} is not a plain URL path")
    return host, path
