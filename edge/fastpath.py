"""The hot path of a client connection: bodiless requests answered with a Content-Length body.

`Lane` runs a whole client connection in one loop with one cancel scope, whose
deadline is moved for each wait (idle, request head, backend) instead of opening a
scope per wait. A request it can take whole (GET/HEAD/DELETE without a body, not an
upgrade, to a plain route with a running instance) goes to a pooled backend
connection with the same header rules as `edge.exchange`; an answer framed by one
Content-Length is relayed with only its hop-by-hop headers edited (`fastresponse`).

Everything else goes to the general path (`edge.exchange.Exchange`): requests it
does not take are handed over before anything is done with them, and an unusual
answer (no length, chunked, 1xx, 101, 204/304, anything llhttp might read another
way) is handed over with the bytes already read, fed to the general parser. Edge
errors (502, 504) are answered through an Exchange too, so their replies, log lines
and statuses are the general path's. Access lines and in-flight counts are kept
per request exactly as `Exchange` keeps them.
"""

from __future__ import annotations

import enum
import logging
import math
from typing import TYPE_CHECKING

import trio

from edge import headers as hdr
from edge.accesslog import log_request
from edge.encode import encode_request_head
from edge.exchange import Exchange, new_request_id
from edge.fastio import receive, send_now
from edge.fastresponse import Parsed, parse_head
from edge.http import NEED_DATA, PAUSED, Framing, ProtocolError, RequestHead, ResponseParser
from edge.peer import CHUNK, Peer
from edge.routes import Backend, Route
from edge.upstream import ConnectFailed, connect_first

if TYPE_CHECKING:
    from edge.netio import Conn
    from edge.proxy import Session

log = logging.getLogger(__name__)

FAST_METHODS = frozenset({b"GET", b"HEAD", b"DELETE"})


class Phase(enum.Enum):
    """What the connection's one scope is bounding right now."""

    IDLE = "idle"  # between requests: a timeout closes silently
    HEAD = "head"  # a request head is arriving: a timeout is a 408
    OTHER = "other"  # no wait of ours: a deadline left armed is lifted before any await
    BACKEND = "backend"  # waiting for a response head: a timeout is a 504
    BODY = "body"  # relaying a response body: a timeout aborts the connection


class Lane:
    """One client connection's request loop."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.edge = session.edge
        self.config = session.config
        self.scope = trio.CancelScope()
        self.phase = Phase.OTHER
        # The fast exchange in progress (None between them).
        self.head: RequestHead | None = None
        self.route: Route | None = None
        self.backend: Backend | None = None
        self.stream: Conn | None = None
        self.host = self.path = "-"
        self.started = 0.0
        self.status = self.bytes_sent = 0
        self.request_id = b"-"
        self.pinned: str | None = None
        self.end_pending = False

    async def run(self) -> None:
        """Serve requests until the connection should close."""
        while True:
            with trio.CancelScope() as self.scope:
                try:
                    await self._loop()
                    return
                finally:
                    self.edge.idle_waits.discard(self.scope)
                    if self.head is not None and not self.scope.cancel_called:
                        self._finish(reusable=False)  # an error (or outer cancel) ended it
            if not await self._timed_out():
                return

    async def _timed_out(self) -> bool:
        """Our scope's deadline passed in `self.phase`; whether to go on."""
        phase, self.phase = self.phase, Phase.OTHER
        if phase is Phase.HEAD:
            await self.session._refuse(ProtocolError(408, "request head timed out"))
            return False
        if phase is Phase.IDLE or self.head is None:
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

    async def _loop(self) -> None:
        session, edge = self.session, self.edge
        while not edge.draining:
            head = await self._next_head()
            if head is None:
                return
            route = self._fast_route(head)
            if route is None:
                self._disarm()
                if not await Exchange(session, head).run():
                    return
            elif not await self._proxy(head, route):
                return

    async def _next_head(self) -> RequestHead | None:
        """As `Session._next_head`, bounded by the connection's scope."""
        client, scope, config = self.session.client, self.scope, self.config
        parser = client.parser
        idle_deadline = trio.current_time() + config.idle_timeout
        head_deadline: float | None = None
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as error:
                self._disarm()
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
                self.phase, scope.deadline = Phase.HEAD, head_deadline
                await client.receive()
            else:
                if self.edge.draining:
                    return None
                self.phase, scope.deadline = Phase.IDLE, idle_deadline
                self.edge.idle_waits.add(scope)
                await client.receive()
                self.edge.idle_waits.discard(scope)
            self.phase = Phase.OTHER  # its deadline stays until the next wait moves it

    def _disarm(self) -> None:
        """Lift the scope's deadline, left armed by the last wait, before an unbounded one."""
        if self.scope.deadline != math.inf:
            self.scope.deadline = math.inf

    def _fast_route(self, head: RequestHead) -> Route | None:
        """The route if this lane takes the request whole; None hands it to `Exchange`."""
        if head.framing is not Framing.NONE or head.upgrade:
            return None
        if head.method not in FAST_METHODS or not head.target.startswith(b"/"):
            return None
        host = None
        for name, value in head.headers:
            if len(name) == 4 and name.lower() == b"host":
                if host is not None:
                    return None
                host = value
        if host is None or not host.strip() or b" " in host.strip():
            return None
        self.host = host.decode("latin-1")
        self.path = head.target.split(b"?", 1)[0].decode("latin-1")
        route = self.edge.route(self.host, self.path)
        if route is None or not route.backends:
            return None
        if route.wakeable and self.edge.wakes.queued(route.app):
            return None
        return route

    async def _proxy(self, head: RequestHead, route: Route) -> bool:
        """Run one fast exchange; whether the client connection may carry another."""
        edge, config, session = self.edge, self.config, self.session
        self.head, self.route, self.backend, self.stream = head, route, None, None
        self.started = now = trio.current_time()
        self.status = self.bytes_sent = 0
        self.request_id = b"-"
        self.end_pending = True  # the EndOfMessage queued with the bodiless head
        edge.concurrency.started(route.app, now)
        self.pinned = None
        if route.options.sticky:
            pinned = hdr.cookie(head.headers, hdr.STICKY_COOKIE)
            self.pinned = pinned.decode("latin-1") if pinned else None
        candidates = edge.balancer.candidates(
            route, config.max_attempts, now=now, pinned=self.pinned
        )
        stream = edge.connector.take_recent(candidates[0], now) if candidates else None
        if stream is not None:
            backend, reused = candidates[0], True
        else:
            self._disarm()
            try:
                stream, backend, reused, failed = await connect_first(edge.connector, candidates)
            except ConnectFailed as error:
                for failed_backend, _ in error.failures:
                    edge.balancer.failed(failed_backend, now)
                return await self._fail(502, "backend failed", "backend-unavailable")
            for failed_backend in failed:
                edge.balancer.failed(failed_backend, now)
        self.backend, self.stream = backend, stream
        edge.balancer.started(backend)
        headers, self.request_id = hdr.forward_request(
            head.headers,
            host=self.host.encode("latin-1"),
            client_ip=session.client_ip,
            proto=config.scheme,
            trusted=session.trusted,
            fresh_id=new_request_id(),
            websocket=False,
        )
        request = encode_request_head(head.method, head.target, headers)
        timeout = min(route.options.timeout, config.response_timeout)
        buffer, eof = await self._ask(stream, request, timeout)
        if eof and not buffer and reused:  # a pooled connection that had closed
            edge.connector.release(backend, stream, reusable=False)
            self.stream = None
            self._disarm()
            try:
                stream = self.stream = await edge.connector.fresh(backend)
            except (OSError, trio.TooSlowError):
                return await self._fail(502, "backend failed", "backend-unavailable")
            buffer, eof = await self._ask(stream, request, timeout)
        if buffer is None:
            return await self._fail(502, "backend failed", "backend-failed")
        if eof:
            return await self._general(buffer, closed=True)
        parsed = parse_head(buffer, head.method == b"HEAD", config.limits)
        if parsed is None:
            return await self._general(buffer, closed=False)
        return await self._relay(parsed, buffer, stream, timeout)

    async def _ask(
        self, stream: Conn, request: bytes, timeout: float
    ) -> tuple[bytes | None, bool]:
        """Send the request, read until a response head ends: (bytes, backend closed).

        (None, True) if the request could not be sent; (b"", True) if the backend
        closed before answering: either way a pooled connection was stale."""
        scope, limit = self.scope, self.config.max_header_bytes + 4
        self.phase, scope.deadline = Phase.BACKEND, trio.current_time() + timeout
        try:
            await stream.send_all(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.phase = Phase.OTHER
            return None, True
        buffer = b""
        while True:
            try:
                data = await receive(stream, CHUNK)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                self.phase = Phase.OTHER
                return buffer, True
            buffer += data
            if b"\r\n\r\n" in buffer or len(buffer) > limit:
                self.phase = Phase.OTHER
                return buffer, False

    async def _relay(self, parsed: Parsed, buffer: bytes, stream: Conn, timeout: float) -> bool:
        status, head_bytes, length, backend_keep_alive, end, session = parsed
        head, client, route, backend = self.head, self.session.client, self.route, self.backend
        assert head is not None and route is not None and backend is not None
        if route.options.sticky and backend.instance:
            repin = self.pinned is not None and self.pinned != backend.instance
            if repin or session:
                head_bytes += b"%b: %b\r\n" % hdr.sticky_cookie(backend.instance)
        keep_alive = head.keep_alive and not self.edge.draining
        client_http11 = head.version == b"1.1"
        if not client_http11 and keep_alive:
            head_bytes += b"Connection: keep-alive\r\n"
        elif not keep_alive:
            head_bytes += b"Connection: close\r\n"
        self.status = status
        body = buffer[end:]
        extra = len(body) > length
        pending = head_bytes + b"\r\n" + body[:length]
        left = length - min(len(body), length)
        scope = self.scope
        while left:
            self.bytes_sent += len(pending)
            self._disarm()
            await client.stream.send_all(pending)
            self.phase, scope.deadline = Phase.BODY, trio.current_time() + timeout
            try:
                data = await stream.receive_some(CHUNK)
            except trio.BrokenResourceError:
                data = b""
            self.phase = Phase.OTHER
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

    async def _send_last(self, data: bytes) -> None:
        """Send to the client: at once if the socket takes it all, else without a deadline."""
        conn = self.session.client.stream
        sent = send_now(conn, data)
        if sent < len(data):
            self._disarm()
            await conn.send_all(memoryview(data)[sent:])

    def _exchange(self) -> Exchange:
        """A general `Exchange` standing in for the fast one, to end it the general way."""
        head, route = self.head, self.route
        assert head is not None and route is not None
        self.end_pending = False  # the Exchange takes the EndOfMessage
        exchange = Exchange(self.session, head)
        exchange.route, exchange.backend = route, self.backend
        exchange.host, exchange.path = self.host, self.path
        exchange.timeout = min(route.options.timeout, self.config.response_timeout)
        exchange.request_id, exchange.pinned = self.request_id, self.pinned
        exchange.started = self.started
        return exchange  # not counted in flight: this lane counts (and logs) the request

    async def _fail(self, status: int, message: str, code: str) -> bool:
        """Answer an edge error before any response byte went out."""
        self._disarm()
        exchange = self._exchange()
        try:
            await exchange._reply(status, f"{exchange.app}: {message}", code)
            self.status, self.bytes_sent = exchange.status, exchange.bytes_sent
        finally:
            self._finish(reusable=False)
        return exchange.keep_alive and not self.edge.draining

    async def _general(self, received: bytes, *, closed: bool) -> bool:
        """Relay an answer this lane does not read itself, from the bytes read so far."""
        head, stream = self.head, self.stream
        assert head is not None and stream is not None
        self._disarm()
        exchange = self._exchange()
        upstream = Peer(stream, ResponseParser(self.config.limits, request_method=head.method))
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
        edge, head, route = self.edge, self.head, self.route
        if head is None or route is None:
            return
        self.head = None
        if self.end_pending:
            self.end_pending = False
            self.session.client.parser.next_event()
        now = trio.current_time()
        if self.backend is not None:
            if self.stream is not None:
                edge.connector.release(self.backend, self.stream, reusable=reusable)
            edge.balancer.finished(self.backend)
        self.stream = None
        edge.concurrency.finished(route.app, now)
        log_request(edge.shipper, self.backend, request_id=self.request_id,
                    method=head.method, host=self.host, path=self.path, app=route.app,
                    status=self.status, bytes_sent=self.bytes_sent,
                    ms=(now - self.started) * 1000)
