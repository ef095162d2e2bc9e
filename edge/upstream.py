"""Connections from the edge to backends: a keep-alive pool, and when a failure may be retried.

Owns `Connector` (a pool of idle keep-alive connections per backend), `connect_first`
(walk the balancer's candidates until one accepts), and `acquire`/`release`, the one
way both request paths get a backend connection and give it back, with the
balancer told about each failure, start and finish.

Rules kept here:
  * Only a failure that happened before any request byte was sent is retried on
    another backend (`is_retriable`). Once bytes are out, the backend may have
    acted on the request, and replaying a POST is not ours to decide. The one
    exception is `may_replay`: a reused idle connection the backend had already
    closed, for a bodiless idempotent request, is retried once on a fresh one.
  * Each attempt is bounded by the connect timeout; a backend that neither accepts
    nor refuses counts as a connect failure.
  * Only a request `may_replay` allows takes a just-used pooled connection without
    the liveness peek (`Connector.take_recent`): if it turns out stale, the request
    is sent again on a fresh one.
  * A connection goes back to the pool only when its exchange ended cleanly at a
    message boundary (the caller decides `reusable`). The pool keeps at most
    `max_idle` per backend, newest reused first, and closes connections idle for
    longer than `idle_timeout` (backends time idle connections out too; gunicorn
    after 2 s) or found readable while idle (closed, or speaking out of turn).
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Sequence

import trio

from edge.balance import BALANCE, Balancer
from edge.netio import Conn, connect
from edge.routes import Backend, Route

log = logging.getLogger(__name__)

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class ConnectFailed(Exception):
    """No candidate backend accepted a connection."""

    def __init__(self, failures: list[tuple[Backend, BaseException]]) -> None:
        super().__init__(f"{len(failures)} connect attempt(s) failed")
        self.failures = failures


def is_retriable(error: BaseException, bytes_sent: int) -> bool:
    """Whether a request that failed with `error` may go to another backend."""
    return bytes_sent == 0 and isinstance(error, OSError | trio.TooSlowError)


def may_replay(*, reused: bool, response_bytes: int, method: bytes, has_body: bool) -> bool:
    """Whether a request whose connection died unanswered may be sent again, fresh."""
    return reused and response_bytes == 0 and not has_body and method in IDEMPOTENT


class Connector:
    """Hands out connections to backends, reusing idle keep-alive ones first."""

    def __init__(
        self, connect_timeout: float, *, max_idle: int = 256, idle_timeout: float = 4.0
    ) -> None:
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._idle: dict[Backend, deque[tuple[float, Conn]]] = {}

    async def acquire(self, backend: Backend) -> tuple[Conn, bool]:
        """A stream to `backend` and whether it was reused; OSError/TooSlowError if none."""
        stream = self._take_idle(backend, trio.current_time())
        if stream is not None:
            return stream, True
        with trio.fail_after(self._connect_timeout):
            return await _connect(backend), False

    async def fresh(self, backend: Backend) -> Conn:
        """A newly opened stream to `backend`, never a pooled one."""
        with trio.fail_after(self._connect_timeout):
            return await _connect(backend)

    def release(
        self, backend: Backend, stream: Conn, *, reusable: bool, now: float | None = None
    ) -> None:
        """Give a stream back once its exchange is over: pooled if `reusable`, else closed."""
        idle = self._idle.get(backend)
        if idle is None:
            idle = self._idle[backend] = deque()
        if reusable and len(idle) < self._max_idle:
            idle.append((trio.current_time() if now is None else now, stream))
        else:
            stream.close()

    def idle_count(self, backend: Backend) -> int:
        """How many idle connections to `backend` are pooled."""
        return len(self._idle.get(backend, ()))

    def sweep(self, now: float) -> None:
        """Close idle connections past their idle timeout."""
        for backend, idle in list(self._idle.items()):
            while idle and now - idle[0][0] > self._idle_timeout:
                idle.popleft()[1].close()
            if not idle:
                del self._idle[backend]

    def close_all(self) -> None:
        """Close every idle connection (the edge is stopping)."""
        for idle in self._idle.values():
            for _, stream in idle:
                stream.close()
        self._idle.clear()

    def take_recent(self, backend: Backend, now: float, within: float = 0.005) -> Conn | None:
        """The newest idle connection to `backend` if it was used within `within` seconds,
        without the liveness peek (a stale one is replayed by the caller), else None."""
        idle = self._idle.get(backend)
        if idle and now - idle[-1][0] <= within:
            return idle.pop()[1]
        return None

    def _take_idle(self, backend: Backend, now: float) -> Conn | None:
        idle = self._idle.get(backend)
        while idle:
            since, stream = idle.pop()
            if now - since <= self._idle_timeout and not stream.readable_now():
                return stream
            stream.close()
        return None


async def _connect(backend: Backend) -> Conn:
    """Connect, resolving the host first if it is a name rather than an address."""
    host, port = backend.host, backend.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except OSError:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        host = str(infos[0][4][0])
    return await connect(host, port)


async def connect_first(
    connector: Connector, candidates: Sequence[Backend]
) -> tuple[Conn, Backend, bool, list[Backend]]:
    """Connect to the first candidate that accepts: (stream, backend, reused, failed)."""
    failures: list[tuple[Backend, BaseException]] = []
    for backend in candidates:
        try:
            stream, reused = await connector.acquire(backend)
            return stream, backend, reused, [b for b, _ in failures]
        except (OSError, trio.TooSlowError) as error:
            if not is_retriable(error, bytes_sent=0):
                raise
            log.warning(
                "edge-connect-failed backend=%s instance=%s error=%r",
                backend.address,
                backend.instance,
                error,
            )
            failures.append((backend, error))
    raise ConnectFailed(failures)


async def acquire(
    connector: Connector,
    balancer: Balancer,
    route: Route,
    *,
    limit: int,
    now: float,
    pinned: str | None,
    replayable: bool,
) -> tuple[Conn, Backend, bool]:
    """A connection for a request on `route`: (stream, backend, reused); ConnectFailed if
    no candidate accepted. Failed candidates are ejected; the backend counts as started."""
    candidates = balancer.candidates(route, limit, now=now, pinned=pinned)
    stream = connector.take_recent(candidates[0], now) if replayable else None
    if stream is not None:
        backend, reused = candidates[0], True
    else:
        try:
            stream, backend, reused, failed = await connect_first(connector, candidates)
        except ConnectFailed as error:
            for failed_backend, _ in error.failures:
                balancer.failed(failed_backend, now)
            raise
        for failed_backend in failed:
            balancer.failed(failed_backend, now)
    if route.options.balance != BALANCE:  # round-robin needs no in-flight counts
        balancer.started(backend)
    return stream, backend, reused


def release(
    connector: Connector,
    balancer: Balancer,
    route: Route,
    backend: Backend,
    stream: Conn | None,
    *,
    reusable: bool,
    now: float | None = None,
) -> None:
    """End what `acquire` began: the stream (if still held) back to the pool or closed."""
    if stream is not None:
        connector.release(backend, stream, reusable=reusable, now=now)
    if route.options.balance != BALANCE:
        balancer.finished(backend)
