"""Ships log lines (build output, app stdout/stderr) to the control plane in batches.

`emit` never blocks the caller: lines queue in memory (bounded; past the bound the
oldest lines are dropped whole, never cut, and counted; once a batch is taken again, one
marker line per stream says how many were dropped). The
shipper posts whatever has queued, at most every `interval` seconds. `flush()`
returns once every line emitted before it was called has been delivered, so a
build's log is complete before its result is reported.

A batch is retried until stored (`client.deliver`), under one Idempotency-Key per
batch, so a batch whose answer was lost is stored once, not twice. A batch the
control plane refuses outright (a 4xx) is logged once and dropped: retrying it
would block every later line behind it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque

import trio

from node.client import ControlClient, ControlError
from node.wire import LogLine

log = logging.getLogger("foundry.node")


class LogShipper:
    def __init__(
        self, client: ControlClient, *, limit: int = 10_000, interval: float = 0.1
    ) -> None:
        self.client = client
        self.limit = limit
        self.interval = interval
        self.queue: deque[LogLine] = deque()
        self.emitted = 0
        self.delivered = 0
        self.dropped = 0
        # (app, source, build) -> lines dropped there and not yet told in a marker line
        self.untold: dict[tuple[str, str, str | None], int] = {}
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._keys = f"{uuid.uuid4().hex[:16]}-"  # + batch number: unique across restarts
        self._batches = 0

    def emit(self, app: str, source: str, line: str, build: str | None = None) -> None:
        record: LogLine = {"app": app, "source": source, "line": line[:8192], "ts": time.time()}
        if build:
            record["build"] = build
        if len(self.queue) >= self.limit:
            old = self.queue.popleft()
            key = (old["app"], old["source"], old.get("build"))
            self.untold[key] = self.untold.get(key, 0) + 1
            self.dropped += 1
            self.delivered += 1
        self.queue.append(record)
        self.emitted += 1
        self._wake.set()

    async def flush(self, timeout: float = 10.0) -> None:
        target = self.emitted
        with trio.move_on_after(timeout):
            while self.delivered < target:
                self._wake.set()
                await self._progress.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch = [self.queue.popleft() for _ in range(min(500, len(self.queue)))]
            if not batch:
                continue
            told = dict(self.untold)
            self._batches += 1
            try:
                await self.client.post_logs(markers(told) + batch, f"{self._keys}{self._batches}")
            except ControlError as e:  # refused for good: dropped, said once
                log.warning("log-batch-dropped lines=%d error=%s", len(batch), e)
                self.dropped += len(batch)
                told = {}  # the markers went nowhere either: they are still to be told
            self.delivered += len(batch)
            for key, count in told.items():
                left = self.untold.pop(key) - count
                if left:
                    self.untold[key] = left
            self._progress.set()
            self._progress = trio.Event()
            if self.queue:
                self._wake.set()
            await trio.sleep(self.interval)


def markers(dropped: dict[tuple[str, str, str | None], int]) -> list[LogLine]:
    """One line per stream saying how many of its lines were dropped."""
    lines: list[LogLine] = []
    for (app, source, build), count in dropped.items():
        record: LogLine = {
            "app": app,
            "source": source,
            "line": f"[foundry] {count} log line(s) dropped: the control plane could not "
            "take them in time (full disk or unreachable)",
            "ts": time.time(),
        }
        if build:
            record["build"] = build
        lines.append(record)
    return lines
