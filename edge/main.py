"""Runs a whole edge process: route sync plus the proxy, until SIGTERM or SIGINT.

Rules kept here:
  * Both services live in one nursery; if either fails, the other is cancelled and
    the error surfaces (nothing runs unparented).
  * SIGTERM and SIGINT are a clean stop: the nursery is cancelled and `run` returns,
    so the process exits with status 0.
  * Without a control URL the edge serves an empty table (every host is a 404).
"""

from __future__ import annotations

import logging
import signal

import httpx
import trio

from edge.proxy import EdgeConfig, serve
from edge.routes import RouteSource, RouteTable
from edge.routesync import RouteSync, StaticSource

log = logging.getLogger(__name__)


def run(config: EdgeConfig) -> None:
    """Run the edge described by `config` until SIGTERM or SIGINT."""
    trio.run(_main, config)


async def _main(config: EdgeConfig) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
            source = await _start_routes(nursery, client, config)
            port = await nursery.start(serve, config, source)
            log.info("edge-started port=%d control=%s", port, config.control_url or "-")
            async for signum in signals:
                log.info("edge-stopping signal=%s", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


async def _start_routes(
    nursery: trio.Nursery, client: httpx.AsyncClient, config: EdgeConfig
) -> RouteSource:
    if config.control_url is None:
        return StaticSource(RouteTable())
    sync = RouteSync(client, config.control_url, config.token)
    await nursery.start(sync.run)
    return sync
