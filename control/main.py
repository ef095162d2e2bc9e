"""Runs the control plane: opens the store and serves the API with uvicorn."""

from __future__ import annotations

import logging
import os

import uvicorn

from control.api import create_app
from control.config import ControlConfig
from control.store import Store
from control.vault import secure_home

log = logging.getLogger("control")


def bootstrap(config: ControlConfig) -> Store:
    """Open (creating if needed) the store under the control plane's home, which holds
    secrets (database, keyring, blobs): nobody but its owner may read it."""
    tightened = secure_home(config.home)
    if tightened:
        log.warning("home-permissions-tightened home=%s paths=%d (group/other access removed)",
                    config.home, tightened)
    store = Store(config.db_path, keyring=config.keyring)
    store.grace_nodes()
    return store


def run(config: ControlConfig) -> None:
    """Serve the control API until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s control %(message)s")
    os.umask(0o077)     # everything this process creates in its home is private
    store = bootstrap(config)
    app = create_app(store, config)
    tls = {"ssl_certfile": str(config.tls_cert), "ssl_keyfile": str(config.tls_key)} \
        if config.tls_cert and config.tls_key else {}
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning",
                timeout_graceful_shutdown=3, **tls)  # type: ignore[arg-type]
    store.close()
