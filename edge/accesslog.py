"""One access-log line per request, and (optionally) shipping them to the app's logs.

Rules kept here:
  * Every finished request logs one `edge-request` line on the `edge.access` logger
    with its request id, app, instance, status, bytes sent, duration and the request
    path that served it (`via`, see `edge.record`), the code of an error the edge
    answered itself and how often the request was replayed, all read from its
    `RequestRecord`.
  * Shipping never blocks or slows a request: `record` only appends to a bounded
    queue; when the queue is full the line is dropped and counted
    (`dropped`), and the drop count is logged with the next batch that goes out.
  * `LogShipper.run` posts batches of at most `batch` lines to the control plane's
    `POST /v1/logs` as source `router`; a failed post drops that batch (counted)
    rather than piling up memory, and backs off before the next one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import httpx
import trio

from edge.record import RequestRecord

log = logging.getLogger("edge.access")
ship_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccessRecord:
    """What happened to one request."""

    request_id: str
    method: str
    host: str
    path: str
    app: str
    instance: str
    backend: str
    status: int
    bytes_sent: int
    ms: float
    via: str = "-"
    error: str = "-"  # the edge's own error code, when it answered with one
    replays: int = 0  # sends again on a fresh connection after one died unanswered


def access_line(record: AccessRecord) -> str:
    """The structured line the edge logs for one request."""
    return (
        f"edge-request id={record.request_id} method={record.method} host={record.host} "
        f"path={record.path[:200]} app={record.app} instance={record.instance} "
        f"backend={record.backend} status={record.status} bytes={record.bytes_sent} "
        f"ms={record.ms:.1f} error={record.error} replays={record.replays} via={record.via}"
    )


def app_line(record: AccessRecord) -> str:
    """The line an app's owner reads in `foundry logs` for one request."""
    return (
        f"{record.method} {record.host}{record.path[:200]} {record.status} "
        f"bytes={record.bytes_sent} ms={record.ms:.1f} instance={record.instance} "
        f"id={record.request_id}"
    )


def access_wanted(shipper: LogShipper | None) -> bool:
    """Whether a finished request is logged or shipped at all (else nothing need be built)."""
    return shipper is not None or log.isEnabledFor(logging.INFO)


def log_request(shipper: LogShipper | None, record: RequestRecord, now: float) -> None:
    """Log one finished request (and queue it for shipping); builds nothing when neither
    the log nor a shipper wants it."""
    if shipper is None and not log.isEnabledFor(logging.INFO):
        return
    backend = record.backend
    line = AccessRecord(
        request_id=record.request_id.decode("latin-1"),
        method=record.method.decode("latin-1"),
        host=record.host,
        path=record.path,
        app=record.app,
        instance=backend.instance if backend else "-",
        backend=backend.address if backend else "-",
        status=record.status,
        bytes_sent=record.bytes_sent,
        ms=(now - record.started) * 1000,
        via=record.via,
        error=record.error,
        replays=record.replays,
    )
    log.info("%s", access_line(line))
    if shipper is not None:
        shipper.record(line)


class LogShipper:
    """A bounded queue of router lines and the loop that posts them."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        control_url: str,
        token: str | None,
        *,
        capacity: int = 10_000,
        batch: int = 500,
        interval: float = 1.0,
    ) -> None:
        self._client = client
        self._url = control_url.rstrip("/") + "/v1/logs"
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._queue: deque[dict[str, object]] = deque()
        self._capacity = capacity
        self._batch = batch
        self._interval = interval
        self._wakeup = trio.Event()
        self.dropped = 0

    def record(self, record: AccessRecord) -> None:
        """Queue `record` for its app; drop it (counted) if the queue is full."""
        if record.app == "-":
            return  # no app to show it to
        if len(self._queue) >= self._capacity:
            self.dropped += 1
            return
        line = {"app": record.app, "source": "router", "line": app_line(record), "ts": time.time()}
        self._queue.append(line)
        if len(self._queue) >= self._batch:
            self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Post queued lines every `interval` (sooner when a batch is full), forever."""
        task_status.started()
        while True:
            with trio.move_on_after(self._interval):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            while self._queue:
                if not await self.flush_once():
                    await trio.sleep(self._interval)  # back off; the queue stays bounded
                    break

    async def flush_once(self) -> bool:
        """Post one batch; whether the control plane took it."""
        lines = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
        try:
            response = await self._client.post(
                self._url, json={"lines": lines}, headers=self._headers, timeout=10.0
            )
            response.raise_for_status()
        except httpx.HTTPError as error:
            self.dropped += len(lines)
            ship_log.warning(
                "edge-log-ship-failed lines=%d dropped_total=%d error=%r",
                len(lines),
                self.dropped,
                error,
            )
            return False
        return True
