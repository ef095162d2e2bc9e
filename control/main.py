"""Runs the control plane: opens the store and serves the API with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from control.api import create_app
from control.config import ControlConfig
from control.store import Store


def bootstrap(config: ControlConfig) -> Store:
    """Open (creating if needed) the store under the control plane's home."""
    config.home.mkdir(parents=True, exist_ok=True)
    store = Store(config.db_path)
    store.grace_nodes()
    return store


def run(config: ControlConfig) -> None:
    """Serve the control API until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s control %(message)s")
    store = bootstrap(config)
    app = create_app(store, config)
    tls = {"ssl_certfile": str(config.tls_cert), "ssl_keyfile": str(config.tls_key)} \
        if config.tls_cert and config.tls_key else {}
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning",
                timeout_graceful_shutdown=3, **tls)  # type: ignore[arg-type]
    store.close()
