"""Keeps the edge's routing table fresh by long-polling the control plane.

`RouteSync.run` loops on `GET {control_url}/v1/routes?etag=<last>&wait=<s>`: the
control plane answers at once when its table differs from `etag`, otherwise it holds
the request up to `wait` seconds and answers with the same table.

Rules kept here:
  * `table` always holds the last good table; it is replaced whole, never patched,
    and never emptied because the control plane is down or answered garbage.
  * Failures back off 0.5 s, 1 s, 2 s, 4 s, then every 5 s; one success resets it.
  * The service reports ready once it has a first table or has failed once, so an
    edge starts (and answers 404) even while the control plane is away.
  * `health()` says whether the last poll reached the control plane and how old the
    table is, for the edge's /healthz; a failure after a success is logged as
    `route-sync-stale`, meaning "still serving the last table".
"""

from __future__ import annotations

import logging

import httpx
import trio

from edge.routes import RouteTable, RouteTableError

log = logging.getLogger(__name__)

FIRST_DELAY = 0.5
MAX_DELAY = 5.0


def next_delay(previous: float | None) -> float:
    """The wait before the next retry, given the wait before this one (None: first failure)."""
    if previous is None:
        return FIRST_DELAY
    return min(previous * 2, MAX_DELAY)


class _Changes:
    """Lets tasks wait for the table to be replaced (held requests wait for a wake)."""

    table: RouteTable

    def __init__(self) -> None:
        self._replaced = trio.Event()

    async def changed(self, since: RouteTable) -> None:
        """Return once `table` is no longer `since`."""
        while self.table is since:
            await self._replaced.wait()

    def _replace(self, table: RouteTable) -> None:
        self.table = table
        self._replaced.set()
        self._replaced = trio.Event()


class StaticSource(_Changes):
    """A route source changed only by hand (tests, or an edge without a control plane)."""

    def __init__(self, table: RouteTable) -> None:
        super().__init__()
        self.table = table

    def update(self, table: RouteTable) -> None:
        """Serve `table` from now on."""
        self._replace(table)


class RouteSync(_Changes):
    """Holds the current RouteTable in `table`, kept fresh by `run`."""

    def __init__(
        self, client: httpx.AsyncClient, control_url: str, token: str | None, *, wait: float = 25.0
    ) -> None:
        super().__init__()
        self.table = RouteTable()
        self._client = client
        self._url = control_url.rstrip("/") + "/v1/routes"
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._wait = wait
        self.reachable: bool | None = None  # None until the first poll ends
        self.last_success: float | None = None  # trio.current_time() of the last good poll

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll forever; reports started after the first answer or the first failure."""
        failed_delay: float | None = None
        ready = False
        while True:
            asked = trio.current_time()
            try:
                changed = self._apply(await self._poll())
                failed_delay = None
                self.reachable, self.last_success = True, trio.current_time()
                # A control plane that answers "unchanged" at once instead of holding
                # the request must not turn this loop into a busy one.
                quick = trio.current_time() - asked < self._wait / 2
                delay = FIRST_DELAY if quick and not changed else 0.0
            except (httpx.HTTPError, RouteTableError, ValueError) as error:
                failed_delay = delay = next_delay(failed_delay)
                log.warning("route-sync-failed error=%r retry_in=%.1f", error, delay)
                if self.reachable and self.table.routes:
                    log.warning(
                        "route-sync-stale routes=%d etag=%s",
                        len(self.table.routes),
                        self.table.etag,
                    )
                self.reachable = False
            if not ready:
                task_status.started()
                ready = True
            await trio.sleep(delay)

    def health(self) -> dict[str, object]:
        """What /healthz reports about the routing table."""
        age = None if self.last_success is None else trio.current_time() - self.last_success
        return {
            "control": {None: "unknown", True: "reachable", False: "unreachable"}[self.reachable],
            "routes": len(self.table.routes),
            "etag": self.table.etag,
            "table_age_seconds": None if age is None else round(age, 1),
            "serving_last_table": self.reachable is False,
        }

    async def _poll(self) -> RouteTable:
        """One long-poll; the table it returns (perhaps the same one)."""
        response = await self._client.get(
            self._url,
            params={"etag": self.table.etag, "wait": str(int(self._wait))},
            headers=self._headers,
            timeout=self._wait + 10.0,
        )
        response.raise_for_status()
        data = response.json()
        if not isinstance(data, dict):
            raise RouteTableError("route table is not a JSON object")
        return RouteTable.from_json(data)

    def _apply(self, table: RouteTable) -> bool:
        """Make `table` current; whether it differs from the one before."""
        if table == self.table:
            return False
        self._replace(table)
        log.info("route-sync-updated etag=%s routes=%d", table.etag, len(table.routes))
        return True
