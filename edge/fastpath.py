"""The hot path of a client connection: plain bodiless requests, Content-Length answers.

`Lane` runs a whole client connection in one loop with one cancel scope; its waits
(idle, request head, backend, response body) are bounded by the edge's watchdog
rather than by a trio deadline each (see `Lane`). The lane holds the client's bytes
itself: a head that `edge.fasthead.read_request` takes (a plain GET/HEAD/DELETE/
OPTIONS without a body) for a route with a running instance goes to a pooled backend
connection as built there, and an answer framed by one Content-Length is relayed
with only its hop-by-hop headers edited (`edge.fasthead.parse_head`). No per-header
objects are made either way.

Everything else goes to the general path (`edge.exchange.Exchange`) by way of the
general parser (`edge.http.RequestParser`): the lane feeds it the bytes it holds and
lets it read the connection until it is at rest between requests, then reads the
bytes itself again. An unusual answer (no length, chunked, 1xx, 101, 204/304,
anything llhttp might read another way) is handed over with the bytes already read,
fed to the general response parser. Edge errors (502, 504) are answered through an
Exchange too, so their replies, log lines and statuses are the general path's.
Access lines and in-flight counts are kept per request exactly as `Exchange` keeps them.
"""

from __future__ import annotations

import enum
import logging
import math
from typing import TYPE_CHECKING

import trio

from edge import headers as hdr
from edge.accesslog import access_wanted, log_request
from edge.balance import BALANCE
from edge.exchange import Exchange, new_request_id
from edge.fasthead import Parsed, PlainRequest, parse_head, read_request, request_head
from edge.fastio import receive, send_now
from edge.http import NEED_DATA, PAUSED, ProtocolError, RequestHead, ResponseParser
from edge.peer import CHUNK, Peer
from edge.routes import Backend, Route
from edge.upstream import ConnectFailed, connect_first

if TYPE_CHECKING:
    from edge.netio import Conn
    from edge.proxy import Session

log = logging.getLogger(__name__)

FAST_HEAD_LIMIT = 16 * 1024  # a head not complete by then goes to the general parser


class Phase(enum.Enum):
    """Which wait of its own a lane is in, and so what its deadline passing means."""

    IDLE = "idle"  # between requests: a timeout closes silently
    HEAD = "head"  # a request head is arriving: a timeout is a 408
    OTHER = "other"  # no bounded wait of ours
    BACKEND = "backend"  # waiting for a response head: a timeout is a 504
    BODY = "body"  # relaying a response body: a timeout aborts the connection


class _Expired(Exception):
    """A bounded wait returned after the watchdog had ended it (`Lane.fired` says which)."""


class Lane:
    """One client connection's request loop.

    Its waits are bounded without a trio deadline each (moving a deadline costs more
    than a whole request's parsing): before a bounded wait the lane notes `phase` and
    `deadline`, and the edge's watchdog (`Edge.watchdog`) calls `expire` on a lane
    whose deadline has passed, which cancels the lane's scope. A wait that completed
    in the same scheduler batch as its expiry is treated as expired too (`_Expired`),
    so a deadline is never seen late in the middle of later work."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.edge = session.edge
        self.config = config = session.config
        self.conn = session.client.stream
        self.scope = trio.CancelScope()
        self.phase = Phase.OTHER
        self.deadline = math.inf  # of the bounded wait in progress
        self.fired: Phase | None = None  # the phase whose deadline the watchdog enforced
        self.idle_from = trio.current_time()  # when the connection last went idle
        self.buffer = b""  # received client bytes the lane holds (none while `general`)
        self.general = False  # the general parser holds the client's bytes
        self.head_deadline: float | None = None  # the head arriving in `buffer` is due then
        self.head_limit = min(FAST_HEAD_LIMIT, config.max_header_bytes)
        self.limits = config.limits
        self.logged = access_wanted(self.edge.shipper)  # whether requests are logged at all
        self.client_ip = session.client_ip.encode("ascii")
        self.scheme = config.scheme.encode("ascii")
        # The fast exchange in progress (`request` is None between them).
        self.request: PlainRequest | None = None
        self.received = b""  # the bytes that held its head
        self.route: Route | None = None
        self.backend: Backend | None = None
        self.stream: Conn | None = None
        self.started = 0.0
        self.status = self.bytes_sent = 0
        self.pinned: str | None = None

    def expire(self) -> None:
        """End the bounded wait in progress (the watchdog's call, or a drain's on an idle lane)."""
        self.fired, self.deadline = self.phase, math.inf
        self.scope.cancel()

    async def run(self) -> None:
        """Serve requests until the connection should close."""
        lanes = self.edge.lanes
        lanes.add(self)
        try:
            while True:
                self.fired = None
                with trio.CancelScope() as self.scope:
                    try:
                        await self._loop()
                    except _Expired:
                        pass
                    finally:
                        self.phase, self.deadline = Phase.OTHER, math.inf
                        if self.request is not None and self.fired is None:
                            self._finish(reusable=False)  # an error (or outer cancel) ended it
                if self.fired is None or not await self._timed_out():
                    return
        finally:
            lanes.discard(self)

    async def _timed_out(self) -> bool:
        """The deadline of a wait in phase `fired` passed; whether to go on."""
        phase, self.fired = self.fired, None
        if phase is Phase.HEAD:
            await self.session._refuse(ProtocolError(408, "request head timed out"))
            return False
        if phase is Phase.IDLE or self.request is None:
            return False  # idle keep-alive (or draining): just close
        try:
            if phase is Phase.BACKEND:
                exchange = self._exchange()
                await exchange._reply(504, f"{exchange.app}: backend timed out", "backend-timeout")
                self.status, self.bytes_sent = exchange.status, exchange.bytes_sent
                return exchange.keep_alive and not self.edge.draining
            error = trio.TooSlowError()
            log.warning("edge-response-aborted app=%s error=%r", self._app, error)
            return False
        finally:
            self._finish(reusable=False)

    async def _read(self, conn: Conn, phase: Phase, deadline: float) -> bytes:
        """Up to CHUNK bytes from `conn` (b"" at its end or on a reset), by `deadline`."""
        self.phase, self.deadline = phase, deadline
        data = await receive(conn, CHUNK)
        self._unbound()
        return data

    def _unbound(self) -> None:
        """A bounded wait is over; `_Expired` if the watchdog ended it meanwhile."""
        self.phase, self.deadline = Phase.OTHER, math.inf
        if self.fired is not None:
            raise _Expired

    async def _loop(self) -> None:
        session, edge, limits = self.session, self.edge, self.limits
        parser = session.client.parser
        while not edge.draining:
            if self.general:
                head = await self._next_head()
                if head is None:
                    return
                if not await Exchange(session, head).run():
                    return
                self.general = not parser.at_rest()
                self.idle_from = trio.current_time()
                continue
            buffer = self.buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0 or end > self.head_limit:
                if not await self._read_more():
                    return
                continue
            request = read_request(buffer, limits, client_ip=self.client_ip,
                                   scheme=self.scheme, trusted=session.trusted,
                                   fresh_id=new_request_id())
            route = None if request is None else edge.fast_route(request.host, request.path)
            if route is None or not route.backends or (
                route.wakeable and edge.wakes.queued(route.app)
            ):
                self._to_general()
                continue
            assert request is not None
            self.buffer, self.received, self.head_deadline = buffer[request.size :], buffer, None
            if not await self._proxy(request, route):
                return

    async def _read_more(self) -> bool:
        """Read more of the next request head into `buffer`; False once the connection is done."""
        buffer, config = self.buffer, self.config
        if buffer:
            if len(buffer) > self.head_limit or buffer.count(b"\n") != buffer.count(b"\r\n"):
                self._to_general()  # a head this big, or with a bare LF, is the general parser's
                return True
            if self.head_deadline is None:
                self.head_deadline = trio.current_time() + config.header_timeout
            data = await self._read(self.conn, Phase.HEAD, self.head_deadline)
        elif self.edge.draining:
            return False
        else:
            self.phase, self.deadline = Phase.IDLE, self.idle_from + config.idle_timeout
            data = await receive(self.conn, CHUNK)  # (`_read` inlined: the commonest wait)
            self._unbound()
        if not data:
            if not buffer:
                return False
            self._to_general()  # the general parser says what a head cut short means
            self.session.client.parser.feed(b"")
            return True
        self.buffer = buffer + data if buffer else data
        return True

    def _to_general(self) -> None:
        """Hand the client's bytes to the general parser, which reads on until it is at rest."""
        if self.buffer:
            self.session.client.parser.feed(self.buffer)
            self.buffer = b""
        self.general = True

    async def _next_head(self) -> RequestHead | None:
        """The general parser's next request head, its waits bounded like the lane's."""
        client, config = self.session.client, self.config
        parser = client.parser
        head_deadline, self.head_deadline = self.head_deadline, None
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as error:
                await self.session._refuse(error)
                return None
            if isinstance(event, RequestHead):
                return event
            if event is PAUSED:
                parser.resume()
                continue
            if event is not NEED_DATA:
                return None
            if parser.in_head:
                if head_deadline is None:
                    head_deadline = trio.current_time() + config.header_timeout
                self.phase, self.deadline = Phase.HEAD, head_deadline
            elif self.edge.draining:
                return None
            else:
                self.phase, self.deadline = Phase.IDLE, self.idle_from + config.idle_timeout
            await client.receive()
            self._unbound()

    async def _proxy(self, request: PlainRequest, route: Route) -> bool:
        """Run one fast exchange; whether the client connection may carry another."""
        edge, config = self.edge, self.config
        self.request, self.route, self.backend, self.stream = request, route, None, None
        self.started = now = trio.current_time()
        self.status = self.bytes_sent = 0
        edge.concurrency.started(route.app, now)
        pinned = self.pinned = None
        if request.pinned is not None and route.options.sticky:
            pinned = self.pinned = request.pinned.decode("latin-1")
        candidates = edge.balancer.candidates(route, config.max_attempts, now=now, pinned=pinned)
        stream = edge.connector.take_recent(candidates[0], now)
        if stream is not None:
            backend, reused = candidates[0], True
        else:
            try:
                stream, backend, reused, failed = await connect_first(edge.connector, candidates)
            except ConnectFailed as error:
                for failed_backend, _ in error.failures:
                    edge.balancer.failed(failed_backend, now)
                return await self._fail(502, "backend failed", "backend-unavailable")
            for failed_backend in failed:
                edge.balancer.failed(failed_backend, now)
        self.backend, self.stream = backend, stream
        if route.options.balance != BALANCE:  # round-robin needs no in-flight counts
            edge.balancer.started(backend)
        timeout = route.options.timeout
        if timeout > config.response_timeout:
            timeout = config.response_timeout
        buffer, eof = await self._ask(stream, request.upstream, now + timeout)
        if eof and not buffer and reused:  # a pooled connection that had closed
            edge.connector.release(backend, stream, reusable=False)
            self.stream = None
            try:
                stream = self.stream = await edge.connector.fresh(backend)
            except (OSError, trio.TooSlowError):
                return await self._fail(502, "backend failed", "backend-unavailable")
            buffer, eof = await self._ask(stream, request.upstream, now + timeout)
        if buffer is None:
            return await self._fail(502, "backend failed", "backend-failed")
        if eof:
            return await self._general(buffer, closed=True)
        parsed = parse_head(buffer, request.method == b"HEAD", self.limits)
        if parsed is None:
            return await self._general(buffer, closed=False)
        return await self._relay(parsed, buffer, stream, timeout)

    async def _ask(
        self, stream: Conn, request: bytes, deadline: float
    ) -> tuple[bytes | None, bool]:
        """Send the request, read until a response head ends: (bytes, backend closed).

        (None, True) if the request could not be sent; (b"", True) if the backend
        closed before answering: either way a pooled connection was stale."""
        limit = self.config.max_header_bytes + 4
        sent = send_now(stream, request)
        if sent < len(request):
            self.phase, self.deadline = Phase.BACKEND, deadline
            try:
                await stream.send_all(memoryview(request)[sent:])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._unbound()
                return None, True
            self._unbound()
        buffer = b""
        while True:
            self.phase, self.deadline = Phase.BACKEND, deadline
            data = await receive(stream, CHUNK)  # (`_read` inlined: the commonest wait)
            self._unbound()
            if not data:
                return buffer, True
            buffer += data
            if b"\r\n\r\n" in buffer or len(buffer) > limit:
                return buffer, False

    async def _relay(self, parsed: Parsed, buffer: bytes, stream: Conn, timeout: float) -> bool:
        status, head_bytes, length, backend_keep_alive, end, session = parsed
        request, route, backend = self.request, self.route, self.backend
        assert request is not None and route is not None and backend is not None
        if (session or self.pinned is not None) and route.options.sticky and backend.instance:
            if session or self.pinned != backend.instance:
                head_bytes += b"%b: %b\r\n" % hdr.sticky_cookie(backend.instance)
        keep_alive = request.keep_alive and not self.edge.draining
        if not keep_alive:
            head_bytes += b"Connection: close\r\n"
        elif not request.http11:
            head_bytes += b"Connection: keep-alive\r\n"
        self.status = status
        total = end + length
        if len(buffer) >= total:  # the whole body came with the head: the commonest case
            pending = head_bytes + b"\r\n" + buffer[end:total]
            self.bytes_sent = len(pending)
            sent = send_now(self.conn, pending)
            if sent < len(pending):
                await self._send_last(pending, sent)
            self._finish(reusable=backend_keep_alive and len(buffer) == total)
            return keep_alive
        pending = head_bytes + b"\r\n" + buffer[end:]
        left = total - len(buffer)
        extra = False
        while left:
            self.bytes_sent += len(pending)
            await self.conn.send_all(pending)
            data = await self._read(stream, Phase.BODY, trio.current_time() + timeout)
            if not data:
                error = ProtocolError(502, "backend closed the connection mid-response")
                log.warning("edge-response-aborted app=%s error=%r", self._app, error)
                self._finish(reusable=False)
                return False
            extra = len(data) > left
            pending = data[:left]
            left -= len(pending)
        self.bytes_sent += len(pending)
        await self._send_last(pending)
        self._finish(reusable=backend_keep_alive and not extra)
        return keep_alive

    async def _send_last(self, data: bytes, sent: int | None = None) -> None:
        """Send `data` to the client: at once if the socket takes it all, else waiting as
        long as it takes; `sent` is how much of it a try already sent."""
        conn = self.conn
        if sent is None:
            sent = send_now(conn, data)
        if sent < len(data):
            await conn.send_all(memoryview(data)[sent:])

    def _exchange(self) -> Exchange:
        """A general `Exchange` standing in for the fast one, to end it the general way."""
        request, route = self.request, self.route
        assert request is not None and route is not None
        exchange = Exchange(self.session, request_head(self.received, request), end_queued=False)
        exchange.route, exchange.backend = route, self.backend
        exchange.host = request.host.decode("latin-1")
        exchange.path = request.path.decode("latin-1")
        exchange.timeout = min(route.options.timeout, self.config.response_timeout)
        exchange.request_id, exchange.pinned = request.request_id, self.pinned
        exchange.started = self.started
        return exchange  # not counted in flight: this lane counts (and logs) the request

    async def _fail(self, status: int, message: str, code: str) -> bool:
        """Answer an edge error before any response byte went out."""
        exchange = self._exchange()
        try:
            await exchange._reply(status, f"{exchange.app}: {message}", code)
            self.status, self.bytes_sent = exchange.status, exchange.bytes_sent
        finally:
            self._finish(reusable=False)
        return exchange.keep_alive and not self.edge.draining

    async def _general(self, received: bytes, *, closed: bool) -> bool:
        """Relay an answer this lane does not read itself, from the bytes read so far."""
        request, stream = self.request, self.stream
        assert request is not None and stream is not None
        exchange = self._exchange()
        upstream = Peer(stream, ResponseParser(self.config.limits, request_method=request.method))
        upstream.received = len(received)
        upstream.parser.feed(received)
        if closed:
            upstream.parser.feed(b"")
        reusable = False
        try:
            with trio.CancelScope() as exchange.timer:
                await exchange._relay_response(upstream, False)
            if exchange.timer.cancelled_caught:
                await exchange._reply(504, f"{exchange.app}: backend timed out", "backend-timeout")
            reusable = exchange._reusable(upstream)
        finally:
            self.status, self.bytes_sent = exchange.status, exchange.bytes_sent
            self._finish(reusable=reusable)
        return exchange.keep_alive and not self.edge.draining

    @property
    def _app(self) -> str:
        return self.route.app if self.route is not None else "-"

    def _finish(self, *, reusable: bool) -> None:
        """End the fast exchange: give the backend connection back, uncount, log."""
        edge, request, route = self.edge, self.request, self.route
        if request is None or route is None:
            return
        self.request = None
        self.idle_from = now = trio.current_time()
        if self.backend is not None:
            if self.stream is not None:
                edge.connector.release(self.backend, self.stream, reusable=reusable, now=now)
            if route.options.balance != BALANCE:
                edge.balancer.finished(self.backend)
        self.stream = None
        edge.concurrency.finished(route.app, now)
        if self.logged:
            log_request(edge.shipper, self.backend, request_id=request.request_id,
                        method=request.method, host=request.host.decode("latin-1"),
                        path=request.path.decode("latin-1"), app=route.app,
                        status=self.status, bytes_sent=self.bytes_sent,
                        ms=(now - self.started) * 1000)
