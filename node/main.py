"""Runs the node agent until SIGINT/SIGTERM, then stops its instances and exits."""

from __future__ import annotations

import logging
import signal
import sys

import httpx
import trio

from node.agent import Agent, JoinError, NodeConfig


async def _main(config: NodeConfig) -> None:
    async with httpx.AsyncClient(base_url=config.control_url, timeout=30) as http:
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
