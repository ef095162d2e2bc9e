"""Connections from the edge to backends: a keep-alive pool, and when a failure may be retried.

Owns `Connector`: a pool of idle keep-alive connections per backend, and
`acquire`/`release`, the one way both request paths get a backend connection and
give it back, with the worker's balancer told about each failure, start and finish.
`acquire` is two steps, also callable apart: `take_pooled`, a plain call that hands
out a just-used connection (the common case under load), and `connect_first`, the
coroutine for when it must open one or peek at an older one; the fast path calls
them apart so that its common case makes no coroutine.

Rules kept here:
  * Only a failure that happened before any request byte was sent is retried on
    another backend (`is_retriable`). Once bytes are out, the backend may have
    acted on the request, and replaying a POST is not ours to decide. The one
    exception is `may_replay`: a bodiless idempotent request whose connection closed
    or was reset before any response byte (a stale pooled one, or a backend shedding
    a burst it has no room for) is sent again on a fresh connection, at most
    `MAX_REPLAYS` times, within what is left of the route's timeout; HTTP lets a
    client repeat an idempotent request whose answer it never saw.
  * Each attempt is bounded by the connect timeout; a backend that neither accepts
    nor refuses counts as a connect failure. A backend's kernel that completes the
    handshake but then drops what is sent (its accept queue overflowed under a burst)
    would otherwise leave the request waiting for the route's whole timeout: a
    backend connection breaks once its sent bytes stay unacknowledged for the
    connect timeout (TCP_USER_TIMEOUT), which unacknowledged bytes prove unread, so the
    request is replayed or answered 502. (Acknowledgement is the kernel's, so a slow
    application is not affected.)
  * Only a request `may_replay` allows takes a just-used pooled connection without
    the liveness peek (`Connector.take_pooled`): if it turns out stale, the request
    is sent again on a fresh one.
  * A connection goes back to the pool only when its exchange ended cleanly at a
    message boundary (the caller decides `reusable`). The pool keeps at most
    `max_idle` per backend address, newest reused first, and closes connections idle for
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


MAX_REPLAYS = 2  # sends after the first, each on a fresh connection


def may_replay(*, replays: int, response_bytes: int, method: bytes, has_body: bool) -> bool:
    """Whether a request whose connection died unanswered, already sent again `replays`
    times, may be sent once more on a fresh connection."""
    return replays < MAX_REPLAYS and response_bytes == 0 and not has_body and method in IDEMPOTENT


class Connector:
    """Hands out connections to backends, reusing idle keep-alive ones first, and tells
    `balancer` what became of each."""

    def __init__(
        self,
        connect_timeout: float,
        balancer: Balancer,
        *,
        max_idle: int = 256,
        idle_timeout: float = 4.0,
        recent: float = 0.005,
    ) -> None:
        self.balancer = balancer
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._recent = recent  # pooled this recently: taken without the liveness peek
        # Keyed by address: a str's hash is cached, a Backend's is a Python call.
        self._idle: dict[str, deque[tuple[float, Conn]]] = {}

    async def acquire(
        self, route: Route, candidates: Sequence[Backend], now: float, *, replayable: bool
    ) -> tuple[Conn, Backend, bool]:
        """A connection for a request on `route` to one of `candidates` (the balancer's,
        in order): (stream, backend, reused); ConnectFailed if none accepted. A
        `replayable` request (`may_replay`) may take a just-used one (`take_pooled`)."""
        stream = self.take_pooled(route, candidates, now) if replayable else None
        if stream is not None:
            return stream, candidates[0], True
        return await self.connect_first(route, candidates, now)

    def take_pooled(self, route: Route, candidates: Sequence[Backend], now: float) -> Conn | None:
        """The first candidate's newest idle connection if it was pooled within `recent`
        seconds, counted as started; else None. It is not peeked at: only for a request
        `may_replay` allows, which is sent again on a fresh one if it proves stale."""
        backend = candidates[0]
        idle = self._idle.get(backend.address)
        if not idle or now - idle[-1][0] > self._recent:
            return None
        if route.options.balance != BALANCE:  # (round-robin needs no in-flight counts)
            self.balancer.started(backend)
        return idle.pop()[1]

    async def connect_first(
        self, route: Route, candidates: Sequence[Backend], now: float
    ) -> tuple[Conn, Backend, bool]:
        """A checked idle or a new connection to the first candidate that accepts:
        (stream, backend, reused); ConnectFailed if none did. Candidates that failed are
        ejected; the backend counts as started."""
        failures: list[tuple[Backend, BaseException]] = []
        try:
            for backend in candidates:
                try:
                    stream, reused = await self._open(backend)
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
                    continue
                if route.options.balance != BALANCE:
                    self.balancer.started(backend)
                return stream, backend, reused
            raise ConnectFailed(failures)
        finally:
            for failed, _ in failures:
                self.balancer.failed(failed, now)

    async def fresh(self, backend: Backend, stale: Conn) -> Conn:
        """Close `stale` (a pooled stream found closed) and open a new one to `backend`;
        OSError/TooSlowError if it cannot be opened."""
        stale.close()
        with trio.fail_after(self._connect_timeout):
            return await _connect(backend, self._connect_timeout)

    def release(
        self,
        route: Route,
        backend: Backend,
        stream: Conn | None,
        reusable: bool,
        now: float | None = None,
    ) -> None:
        """End what `acquire` began: the stream (if still held) back to the pool if
        `reusable`, else closed."""
        if stream is not None:
            idle = self._idle.get(backend.address)
            if idle is None:
                idle = self._idle[backend.address] = deque()
            if reusable and len(idle) < self._max_idle:
                idle.append((trio.current_time() if now is None else now, stream))
            else:
                stream.close()
        if route.options.balance != BALANCE:
            self.balancer.finished(backend)

    def sweep(self, now: float) -> None:
        """Close idle connections past their idle timeout."""
        for address, idle in list(self._idle.items()):
            while idle and now - idle[0][0] > self._idle_timeout:
                idle.popleft()[1].close()
            if not idle:
                del self._idle[address]

    def close_all(self) -> None:
        """Close every idle connection (the edge is stopping)."""
        for idle in self._idle.values():
            for _, stream in idle:
                stream.close()
        self._idle.clear()

    async def _open(self, backend: Backend) -> tuple[Conn, bool]:
        """A live idle stream to `backend` or a new one, and whether it was reused;
        OSError/TooSlowError if none."""
        stream = self._take_idle(backend, trio.current_time())
        if stream is not None:
            return stream, True
        with trio.fail_after(self._connect_timeout):
            return await _connect(backend, self._connect_timeout), False

    def _take_idle(self, backend: Backend, now: float) -> Conn | None:
        idle = self._idle.get(backend.address)
        while idle:
            since, stream = idle.pop()
            if now - since <= self._idle_timeout and not stream.readable_now():
                return stream
            stream.close()
        return None


async def _connect(backend: Backend, unacked_timeout: float) -> Conn:
    """Connect, resolving the host first if it is a name rather than an address."""
    host, port = backend.host, backend.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except OSError:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        host = str(infos[0][4][0])
    return await connect(host, port, unacked_timeout=unacked_timeout)
