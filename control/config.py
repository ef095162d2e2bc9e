"""The control plane's configuration, built once in `main` and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from control.errors import BadOption
from control.limits import RequestLimits
from control.reconciler import Policy
from control.uploads import ArchiveLimits


@dataclass(frozen=True)
class ControlConfig:
    home: Path  # holds foundry.db, keyring.json, blobs/
    domain: str = "localhost"
    host: str = "127.0.0.1"
    port: int = 7070
    api_address: str | None = None  # host:port the edge routes api.<domain> to
    apps_url: str = "http://{app}.localhost"  # how users reach an app through the edge
    max_upload: int = 1 << 30  # source packages, buildpacks, droplets, files
    long_poll_max: float = 30.0
    policy: Policy = field(default_factory=Policy)
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    requests: RequestLimits = field(default_factory=RequestLimits)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_fingerprint: str | None = None  # carried by join tokens while TLS is on
    keyring: Path | None = None  # key file for config vars (default: in home)
    # bytes of the home's disk kept free for the store (uploads are refused below it);
    # None: 32 MiB or 5 % of the filesystem, whichever is smaller
    disk_reserve: int | None = None

    @property
    def self_url(self) -> str:
        """How processes on this machine (the git hook) reach this API."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.home / "foundry.db"


def foundry_home(home: Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The home given, else $FOUNDRY_HOME, else ~/.foundry."""
    env = os.environ if env is None else env
    return (home or Path(env.get("FOUNDRY_HOME") or Path.home() / ".foundry")).expanduser()


def split_listen(listen: str) -> tuple[str, int]:
    """--listen HOST:PORT (HOST defaults to 127.0.0.1)."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise BadOption(f"--listen {listen!r} must look like HOST:PORT")
    return host or "127.0.0.1", int(port)
