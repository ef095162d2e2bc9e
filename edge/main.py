"""Runs a whole edge: N worker processes sharing the port, until SIGTERM or SIGINT.

Rules kept here:
  * `workers` (0 = one per core) processes each run the full edge — route sync,
    proxy, optional admin listener and log shipper — in one trio nursery, on their
    own SO_REUSEPORT socket bound to the same port. They share nothing; each polls
    the control plane and keeps its own pool and balancer.
  * Before any worker binds, `run` claims the port (and the admin port) with
    `edge.listen.claim_port`: if another process has it, the edge refuses to start
    (PortInUse, "port 8080 is in use by another process") instead of sharing it
    through SO_REUSEPORT. The claim is held until the edge exits; it also resolves
    port 0 once for all workers.
  * With more than one worker the parent forks them before it starts trio (a fork
    inside a trio run would copy its state), logs `edge-started` when every
    worker listens, and passes SIGTERM/SIGINT on. If a worker dies on its own the
    parent stops the rest and `run` raises WorkerDied, for a supervisor to restart.
  * SIGTERM and SIGINT are a graceful stop: stop accepting, let in-flight requests
    finish within `drain_timeout`, exit 0.
  * Without a control URL the edge serves an empty table (every host is a 404).
    With one, each worker also makes its own wake calls (`edge.wake`) and reports
    its own per-app concurrency (`edge.metrics`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from dataclasses import replace
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import httpx
import trio

from edge.accesslog import LogShipper
from edge.admin import serve_admin
from edge.config import EdgeConfig
from edge.listen import claim_port
from edge.metrics import report
from edge.proxy import Edge, serve
from edge.routes import RouteSource, RouteTable
from edge.routesync import RouteSync, StaticSource

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG = 1


def run(config: EdgeConfig) -> None:
    """Run the edge described by `config` until SIGTERM or SIGINT.

    Raises PortInUse, before anything starts, if another process has one of its ports.
    """
    workers = config.workers or os.cpu_count() or 1
    holders = [claim_port(config.host, config.port)]
    try:
        config = replace(config, port=holders[0].getsockname()[1])
        if config.admin_port is not None:
            holders.append(claim_port(config.admin_host, config.admin_port))
            config = replace(config, admin_port=holders[1].getsockname()[1])
        if workers == 1:
            trio.run(_worker_main, config, None)
        elif _run_workers(config, workers):
            raise WorkerDied("an edge worker exited on its own; the others were stopped")
    finally:
        for holder in holders:
            holder.close()


class WorkerDied(RuntimeError):
    """A worker process ended without being asked to."""


def _run_workers(config: EdgeConfig, workers: int) -> int:
    """Fork `workers` edge processes on the claimed port and supervise them; the exit
    status."""
    context = multiprocessing.get_context("fork")
    procs: list[BaseProcess] = []
    ready: list[Connection] = []
    for _ in range(workers):
        receiver, sender = context.Pipe(duplex=False)
        proc = context.Process(target=_worker, args=(config, sender, os.getpid()), daemon=False)
        proc.start()
        sender.close()
        procs.append(proc)
        ready.append(receiver)
    return trio.run(_supervise, config, procs, ready)


async def _supervise(config: EdgeConfig, procs: list[BaseProcess], ready: list[Connection]) -> int:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        for receiver in ready:
            await trio.lowlevel.wait_readable(receiver.fileno())
            if not receiver.poll() or receiver.recv() != "ready":
                _signal_all(procs, signal.SIGTERM)
                return 1
        log.info(
            "edge-started port=%d workers=%d control=%s",
            config.port,
            len(procs),
            config.control_url or "-",
        )
        asked = False
        async with trio.open_nursery() as nursery:
            for proc in procs:
                nursery.start_soon(_watch, proc, nursery.cancel_scope)
            async for signum in signals:
                log.info("edge-stopping signal=%s", signal.Signals(signum).name)
                asked = True
                nursery.cancel_scope.cancel()  # from here on, workers exiting is expected
                break
        _signal_all(procs, signal.SIGTERM)
        for proc in procs:
            await trio.to_thread.run_sync(proc.join)
        return 0 if asked else 1


async def _watch(proc: BaseProcess, stop: trio.CancelScope) -> None:
    await trio.lowlevel.wait_readable(proc.sentinel)
    log.error("edge-worker-exited pid=%s code=%s", proc.pid, proc.exitcode)
    stop.cancel()


def _signal_all(procs: list[BaseProcess], signum: int) -> None:
    for proc in procs:
        if proc.pid is not None and proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)


def _worker(config: EdgeConfig, ready: Connection, parent: int) -> None:
    """One worker process (forked): run the edge until told to stop."""
    _die_with(parent)
    trio.run(_worker_main, config, ready)


def _die_with(parent: int) -> None:
    """A worker must not outlive the edge parent (killed by -9, say): an orphan would keep
    taking connections on the shared port with a routing table nobody refreshes for it.
    The workers are forked from the parent's main thread, so the kernel's parent-death
    signal fires exactly when the parent process ends."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it ended before the signal was armed
        os._exit(1)


async def _worker_main(config: EdgeConfig, ready: Connection | None) -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
            source = await _start_routes(nursery, client, config)
            shipper = None
            if config.ship_access_logs and config.control_url is not None:
                shipper = LogShipper(client, config.control_url, config.token)
                await nursery.start(shipper.run)
            shutdown, drained = trio.Event(), trio.Event()
            edge = Edge(config, source, shipper)
            if config.control_url is not None:
                url, token = config.control_url, config.token
                await nursery.start(edge.wakes.run_calls, client, url, token)
                await nursery.start(
                    partial(report, interval=config.metrics_interval),
                    edge.concurrency,
                    client,
                    url,
                    token,
                )
            port = await nursery.start(_serve_then_flush, config, source, shutdown, edge, drained)
            if config.admin_port is not None:
                health = partial(_health, source, edge)
                await nursery.start(serve_admin, config.admin_host, config.admin_port, health)
            if ready is not None:
                ready.send("ready")
            else:
                log.info("edge-started port=%d control=%s", port, config.control_url or "-")
            async for signum in signals:
                log.info("edge-stopping signal=%s pid=%d", signal.Signals(signum).name, os.getpid())
                shutdown.set()
                break
            await drained.wait()
            nursery.cancel_scope.cancel()  # route sync, shipper and admin go with it


async def _serve_then_flush(
    config: EdgeConfig,
    source: RouteSource,
    shutdown: trio.Event,
    edge: Edge,
    drained: trio.Event,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the proxy until it has drained, ship the last access lines, set `drained`."""
    await serve(config, source, shutdown=shutdown, edge=edge, task_status=task_status)
    if edge.shipper is not None:
        with trio.move_on_after(2.0):
            await edge.shipper.flush_once()  # best effort
    drained.set()


def _health(source: RouteSource, edge: Edge) -> dict[str, object]:
    report: dict[str, object] = {"status": "draining" if edge.draining else "ok"}
    if isinstance(source, RouteSync):
        report.update(source.health())
    else:
        report.update({"control": "none", "routes": len(source.table.routes)})
    return report


async def _start_routes(
    nursery: trio.Nursery, client: httpx.AsyncClient, config: EdgeConfig
) -> RouteSource:
    if config.control_url is None:
        return StaticSource(RouteTable())
    sync = RouteSync(client, config.control_url, config.token)
    await nursery.start(sync.run)
    return sync
