"""Runs the node agent until SIGINT/SIGTERM, then stops its instances and exits."""

from __future__ import annotations

import hmac
import logging
import signal
import ssl
import sys

import httpx
import trio

from node.agent import Agent, JoinError, NodeConfig
from node.client import fingerprint, pinned_context, server_certificate


def tls_verification(config: NodeConfig) -> ssl.SSLContext | bool:
    """How to trust an https control plane: the certificate pinned by the join token
    (kept in the node's home for restarts), else the system's CAs."""
    if not config.control_url.startswith("https://"):
        return True
    saved = config.home / "control-cert.pem"
    if saved.exists():
        return pinned_context(saved.read_text())
    token = config.join_token or ""
    if "#sha256:" not in token:
        return True
    pin = token.split("#", 1)[1]
    try:
        pem = server_certificate(config.control_url)
    except OSError as e:
        raise JoinError(f"cannot reach {config.control_url}: {e}") from None
    if not hmac.compare_digest(fingerprint(pem), pin):
        raise JoinError(f"{config.control_url} presented a certificate that does not match "
                        "the join token's fingerprint; refusing to join")
    config.home.mkdir(parents=True, exist_ok=True)
    saved.write_text(pem)
    return pinned_context(pem)


async def _main(config: NodeConfig) -> None:
    verify = tls_verification(config)
    async with httpx.AsyncClient(base_url=config.control_url, timeout=30, verify=verify) as http:
        agent = Agent(config, http)
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for sig in signals:
                    logging.getLogger("foundry.node").info("node-stopping signal=%s", sig)
                    await agent.shutdown()
                    nursery.cancel_scope.cancel()
                    break


def run(config: NodeConfig) -> None:
    """Run the agent; JoinError (a refused or missing token) propagates as one line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s node %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        trio.run(_main, config)
    except BaseExceptionGroup as group:
        joins = group.subgroup(JoinError)
        if joins is None:
            raise
        raise joins.exceptions[0] from None
