"""Runs the control plane: opens the store and serves the API with uvicorn; and the
control-side work of its commands (choosing TLS, rotating the config-var key)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from control.api import create_app
from control.config import ControlConfig, foundry_home, split_listen
from control.errors import BadOption
from control.reconciler import Policy
from control.rows import TokenRow
from control.store import Store
from control.tls import TLS, default_names, self_signed
from control.vault import secure_home

log = logging.getLogger("control")


def bootstrap(config: ControlConfig) -> Store:
    """Open (creating if needed) the store under the control plane's home, which holds
    secrets (database, keyring, blobs): nobody but its owner may read it."""
    tightened = secure_home(config.home)
    if tightened:
        log.warning(
            "home-permissions-tightened home=%s paths=%d (group/other access removed)",
            config.home,
            tightened,
        )
    store = Store(config.db_path, keyring=config.keyring)
    store.grace_nodes()
    return store


ADMIN_TOKEN_FILE = "admin-token"


def needs_first_admin(tokens: list[TokenRow], now: float) -> bool:
    """No admin token can be used (none made yet, or every one revoked or expired): the
    control plane makes one at start, or nobody could ever mint a token."""
    return not any(
        t["kind"] == "admin"
        and not t["revoked"]
        and (t["expires_at"] is None or t["expires_at"] > now)
        for t in tokens
    )


def first_admin(store: Store, home: Path) -> Path | None:
    """Mint the first admin token into `home`/admin-token (0600) when there is no usable
    admin token; returns the file when it wrote one."""
    if not needs_first_admin(store.list_tokens(), store.clock()):
        return None
    path = home / ADMIN_TOKEN_FILE
    _, secret = store.create_token("admin", label="first admin (control plane start)")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return path


def run(config: ControlConfig, announce: Callable[[Path | None], None] | None = None) -> None:
    """Serve the control API until SIGINT/SIGTERM; `announce` is told, once the store is
    open, which admin token file this start wrote (None: there was a usable one)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s control %(message)s")
    os.umask(0o077)  # everything this process creates in its home is private
    store = bootstrap(config)
    created = first_admin(store, config.home)
    if announce is not None:
        announce(created)
    app = create_app(store, config)
    tls = config.tls_cert is not None and config.tls_key is not None
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        timeout_graceful_shutdown=3,
        ssl_certfile=str(config.tls_cert) if tls else None,
        ssl_keyfile=str(config.tls_key) if tls else None,
    )
    store.close()


def pick_tls(home: Path, host: str, tls: bool, cert: Path | None, key: Path | None) -> TLS | None:
    """The certificate to serve HTTPS with: the files given, else (with --tls) a
    self-signed one made on first start under the home; None: plain HTTP."""
    if cert or key:
        if not (cert and key and cert.is_file() and key.is_file()):
            raise BadOption("--tls-cert and --tls-key must both name readable files")
        return TLS(cert, key)
    return self_signed(home / "tls", default_names(host)) if tls else None


def options_config(
    *,
    home: Path | None,
    listen: str,
    domain: str,
    api_address: str | None,
    apps_url: str | None,
    edge_port: int,
    tls: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    node_ttl: float,
    immediate_restarts: int,
    backoff: float,
    backoff_max: float,
    give_up_after: int,
    healthy_reset: float,
    keyring: Path | None,
    build_timeout: float,
) -> ControlConfig:
    """`foundry control`'s options as the control plane's config; BadOption for bad ones."""
    host, port = split_listen(listen)
    home = foundry_home() / "control" if home is None else home
    os.umask(0o077)  # the home is private from its first file on (the TLS key included)
    cert = pick_tls(home, host, tls, tls_cert, tls_key)
    return ControlConfig(
        home=home,
        domain=domain,
        host=host,
        port=port,
        keyring=keyring,
        api_address=api_address or f"{host}:{port}",
        apps_url=apps_url or default_apps_url(domain, edge_port),
        tls_cert=cert.cert if cert else None,
        tls_key=cert.key if cert else None,
        tls_fingerprint=cert.fingerprint if cert else None,
        policy=Policy(
            immediate_restarts=immediate_restarts,
            backoff_base=backoff,
            backoff_max=backoff_max,
            give_up_after=give_up_after,
            reset_after=healthy_reset,
            node_ttl=node_ttl,
            build_timeout=build_timeout,
        ),
    )


def banner(config: ControlConfig, created: Path | None) -> list[str]:
    """What `foundry control` says once its store is open (`created`: the admin token file
    this start wrote, if any)."""
    scheme = "https" if config.tls_cert else "http"
    shown = socket.gethostname() if config.host in ("0.0.0.0", "::", "") else config.host
    lines = [
        f"Foundry control plane (home {config.home})",
        f"  API:         {scheme}://{shown}:{config.port}  "
        f"(listening on {config.host}:{config.port})",
        f"  Apps:        {config.apps_url}",
    ]
    if config.tls_cert:
        lines.append(f"  Certificate: {config.tls_cert}  fingerprint {config.tls_fingerprint}")
    if created:
        lines.append(
            f"  Admin token: {created}  (made now, readable only by you; "
            "mint other tokens with it, then keep it safe)"
        )
    elif (config.home / ADMIN_TOKEN_FILE).exists():
        lines.append(f"  Admin token: {config.home / ADMIN_TOKEN_FILE}")
    return lines


def default_apps_url(domain: str, edge_port: int) -> str:
    """Where users reach apps: the edge's port in the URL unless it is HTTP's own."""
    return f"http://{{app}}.{domain}" + ("" if edge_port == 80 else f":{edge_port}")


@dataclass(frozen=True)
class Rotation:
    """What `foundry rotate-key` did."""

    label: str  # the key every value is now sealed with
    sealed: int  # values under it
    dropped: list[str]  # keys removed from the keyring
    keyring: Path


def rotate_key(home: Path, keyring: Path | None, new_key: bool) -> Rotation:
    """Reseal every config var under a new (or, without `new_key`, the current) key, then
    drop the keys nothing uses; BadOption when values under another key remain."""
    if not (home / "foundry.db").is_file():
        raise BadOption(f"no control plane database in {home} (give --home)")
    store = Store(home / "foundry.db", keyring=keyring)
    try:
        label = store.keyring.add_current() if new_key else store.keyring.keys.current
        store.reseal()
        dropped = store.drop_unused_keys()
        sealed = store.sealed_labels()
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
    others = sorted(set(sealed) - {label})
    if others:  # written meanwhile by a control plane that had not seen the new key yet
        raise BadOption(
            f"values under key(s) {', '.join(others)} remain; run rotate-key --no-new-key again"
        )
    return Rotation(label, len(sealed.get(label, [])), dropped, store.keyring.path)
