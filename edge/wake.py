"""Requests for apps at zero: holding them, and asking the control plane to wake the app.

A route marked `wakeable` belongs to an app that scales to zero. When it has no
backends, a request for it is held here instead of answered 503, and the control
plane is asked (`POST /v1/apps/<app>/wake`) to start one instance; the routing
table then gains a backend and the held requests go on.

Rules kept here:
  * Held requests are released in arrival order: each app has a fair (FIFO)
    lock, and a held request keeps its turn until its head has been sent to the
    backend (`Turn.release`), so the next one cannot overtake it. Requests that
    arrive while others are still queued for the app queue behind them.
  * Holding is bounded: at most `max_held` requests per app wait (the next get
    503 `wake-queue-full`), each for at most `timeout` seconds from its arrival
    (then 503 `wake-timeout`). Nothing here blocks other apps or connections.
  * One wake call per wake, not per request: an app is asked for at most once
    while a call is in flight or within `timeout` of a successful one; a failed
    call may be repeated after RETRY_SECONDS (the control endpoint is idempotent
    too). The call runs in `run_calls`, never in a request's task.
  * Once a held request finds backends, the app's wake is over: the next time it
    is at zero, a new call is made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import trio

from edge.routes import Route

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # after a failed wake call; also how often a held head re-asks
CALL_TIMEOUT = 5.0


class QueueFull(Exception):
    """Too many requests are already held for this app."""


@dataclass
class _Queue:
    lock: trio.Lock = field(default_factory=trio.Lock)
    waiting: int = 0  # held requests that do not yet have their turn and a backend


class Turn:
    """A released request's place in line; `release` lets the next one go."""

    __slots__ = ("_app", "_queue", "_wakes")

    def __init__(self, wakes: Wakes, app: str, queue: _Queue) -> None:
        self._wakes, self._app = wakes, app
        self._queue: _Queue | None = queue

    def release(self) -> None:
        """Let the next held request of this app go (idempotent)."""
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.lock.release()
            self._wakes._forget_if_idle(self._app, queue)


class Wakes:
    """Held requests per app and the wake calls they cause, for one edge worker."""

    def __init__(self, *, timeout: float = 30.0, max_held: int = 1000) -> None:
        self.timeout = timeout
        self.max_held = max_held
        self._queues: dict[str, _Queue] = {}
        self._replaced = trio.Event()  # set when the routing table changes
        self._called: dict[str, float] = {}  # app -> when a wake call may be made again
        self._wanted: list[str] = []  # apps to call for, in order
        self._want = trio.Event()
        self.calls = 0  # wake calls made (successful or not)

    def queued(self, app: str) -> bool:
        """Whether requests for `app` are held or still being released."""
        return app in self._queues

    def held(self, app: str) -> int:
        """How many requests for `app` are waiting."""
        queue = self._queues.get(app)
        return queue.waiting if queue is not None else 0

    def table_changed(self) -> None:
        """The routing table was replaced: held requests look again."""
        self._replaced.set()
        self._replaced = trio.Event()

    async def hold(self, app: str, lookup: Callable[[], Route | None]) -> tuple[Route | None, Turn]:
        """Wait for `app`'s turn and a route with backends (`lookup()` gives the current
        route); the route (None if it was removed) and the turn to release once the
        request is on its way. QueueFull, or TooSlowError after `timeout`."""
        queue = self._queues.get(app)
        if queue is None:
            queue = self._queues[app] = _Queue()
        elif queue.waiting >= self.max_held:
            raise QueueFull(app)
        queue.waiting += 1
        try:
            with trio.fail_after(self.timeout):
                await queue.lock.acquire()
                try:
                    route = await self._until_routable(app, lookup)
                except BaseException:
                    queue.lock.release()
                    raise
        except BaseException:
            queue.waiting -= 1
            self._forget_if_idle(app, queue)
            raise
        queue.waiting -= 1
        return route, Turn(self, app, queue)

    async def _until_routable(self, app: str, lookup: Callable[[], Route | None]) -> Route | None:
        while True:
            replaced = self._replaced
            route = lookup()
            if route is None or route.backends:
                self._called.pop(app, None)  # this wake is over
                return route
            if not route.wakeable:
                return route  # no longer scales to zero: the caller answers 503
            self.want_wake(app)
            with trio.move_on_after(RETRY_SECONDS):
                await replaced.wait()

    def want_wake(self, app: str) -> None:
        """Ask for a wake call for `app` unless one is under way or was just made."""
        now = trio.current_time()
        if self._called.get(app, -1.0) > now or app in self._wanted:
            return
        self._called[app] = now + self.timeout
        self._wanted.append(app)
        self._want.set()

    async def run_calls(
        self,
        client: httpx.AsyncClient,
        control_url: str,
        token: str | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Make the wanted wake calls, each in a task of its own, forever."""
        base = control_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                await self._want.wait()
                self._want = trio.Event()
                wanted, self._wanted = self._wanted, []
                for app in wanted:
                    nursery.start_soon(self._call, client, f"{base}/v1/apps/{app}/wake", headers)

    async def _call(self, client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        app = url.rsplit("/", 2)[-2]
        self.calls += 1
        try:
            response = await client.post(url, headers=headers, timeout=CALL_TIMEOUT)
            response.raise_for_status()
            waking = response.json().get("waking")
        except (httpx.HTTPError, ValueError, AttributeError) as error:
            log.warning("edge-wake-failed app=%s error=%r retry_in=%.1f", app, error, RETRY_SECONDS)
            self._called[app] = trio.current_time() + RETRY_SECONDS
            return
        log.info("edge-wake-requested app=%s waking=%s held=%d", app, waking, self.held(app))

    def _forget_if_idle(self, app: str, queue: _Queue) -> None:
        if queue.waiting == 0 and not queue.lock.locked() and self._queues.get(app) is queue:
            del self._queues[app]
