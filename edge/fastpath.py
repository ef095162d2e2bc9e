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
Exchange too, so their replies and statuses are the general path's; the lane drives
it only through its public methods (`fail`, `relay`, `goes_on`).

Both paths fill one `RequestRecord` per request (`edge.record`), count and log it
through `Edge.begin_request`/`end_request` and get backend connections through
`edge.upstream.Connector` (`take_pooled` then, only if that found none, `connect_first`: the two
steps of `acquire`) and `release`; the access line says which path served it (`via`).
A lane's modes and what its waits' deadlines mean are the tables of `edge.lanestate`.

Cost is the point of this module: the edge spends most of its CPU here. Hot code
keeps to plain calls (no coroutine that never waits), module constants instead of
enum members (`edge.lanestate` says why), and locals for what it reads twice.
"""

from __future__ import annotations

import logging
import math

import trio

from edge import headers as hdr
from edge.exchange import Exchange, new_request_id
from edge.fasthead import (
    FAST_METHODS,
    Parsed,
    PlainRequest,
    parse_head,
    read_request,
    request_head,
)
from edge.fastio import receive, send_now
from edge.http import NEED_DATA, PAUSED, ProtocolError, RequestHead, ResponseParser
from edge.lanestate import (
    BACKEND,
    BODY,
    CLOSED,
    FAST_READ,
    GENERAL_EXCHANGE,
    GENERAL_READ,
    HEAD,
    IDLE,
    ON_EXPIRY,
    OTHER,
    PHASES_IN,
    TO_FAST_EXCHANGE,
    TO_FAST_READ,
    Expiry,
    LaneStateError,
    Phase,
    next_mode,
)
from edge.netio import Conn
from edge.peer import CHUNK, Peer
from edge.record import FAST, HANDED, RequestRecord
from edge.routes import Route
from edge.session import Session
from edge.upstream import ConnectFailed, may_replay

log = logging.getLogger(__name__)

FAST_HEAD_LIMIT = 16 * 1024  # a head not complete by then goes to the general parser

# Whether a request the fast reader took may take a just-used pooled connection
# unchecked: `may_replay`'s answer for each method it takes, asked once.
_TAKES_RECENT = {
    method: may_replay(replays=0, response_bytes=0, method=method, has_body=False)
    for method in FAST_METHODS
}


class _Expired(Exception):
    """A bounded wait returned after the watchdog had ended it (`Lane.fired` says which)."""


class Lane:
    """One client connection's request loop.

    Its waits are bounded without a trio deadline each (moving a deadline costs more
    than a whole request's parsing): before a bounded wait the lane notes `phase` and
    `deadline`, and the edge's watchdog (`Edge.watchdog`) calls `expire` on a lane
    whose deadline has passed, which cancels the lane's scope. A wait that completed
    in the same scheduler batch as its expiry is treated as expired too (`_Expired`),
    so a deadline is never seen late in the middle of later work. Its modes and what
    each phase's expiry means are the tables of `edge.lanestate`."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.edge = session.edge
        self.config = config = session.config
        self.conn = session.client.stream
        self.scope = trio.CancelScope()
        self.phase = OTHER
        self.deadline = math.inf  # of the bounded wait in progress
        self.fired: Phase | None = None  # the phase whose deadline the watchdog enforced
        self.idle_from = trio.current_time()  # when the connection last went idle
        self.buffer = b""  # received client bytes the lane holds (none in general modes)
        self.mode = FAST_READ  # moved only through `edge.lanestate`'s tables
        self.head_deadline: float | None = None  # the head arriving in `buffer` is due then
        self.head_limit = min(FAST_HEAD_LIMIT, config.max_header_bytes)
        self.limits = config.limits
        self.logged = session.logged
        self.client_ip = session.client_ip.encode("ascii")
        self.scheme = config.scheme.encode("ascii")
        # The fast exchange in progress (`record` and `request` are None between them).
        self.record: RequestRecord | None = None
        self.request: PlainRequest | None = None
        self.received = b""  # the bytes that held its head
        self.stream: Conn | None = None  # its backend connection, while the lane holds one

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
                        self.phase, self.deadline = OTHER, math.inf
                        if self.record is not None and self.fired is None:
                            self._finish(reusable=False)  # an error (or outer cancel) ended it
                if self.fired is None or not await self._timed_out():
                    return
        finally:
            self.mode = next_mode(self.mode, CLOSED)
            lanes.discard(self)

    async def _timed_out(self) -> bool:
        """The deadline of a wait in phase `fired` passed; whether to go on."""
        phase, self.fired = self.fired, None
        assert phase is not None
        if phase not in PHASES_IN[self.mode]:
            raise LaneStateError(f"a lane in {self.mode.name} waited in phase {phase.value}")
        expiry = ON_EXPIRY[phase]
        if expiry is Expiry.REFUSE_408:
            await self.session.refuse(ProtocolError(408, "request head timed out"))
            return False
        record = self.record
        if expiry is Expiry.CLOSE or record is None:
            return False  # idle keep-alive (or draining): just close
        try:
            if expiry is Expiry.ANSWER_504:
                exchange = self._exchange(record)
                await exchange.fail(504, "backend timed out", "backend-timeout")
                return exchange.goes_on()
            error = trio.TooSlowError()
            log.warning("edge-response-aborted app=%s error=%r", record.app, error)
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
        self.phase, self.deadline = OTHER, math.inf
        if self.fired is not None:
            raise _Expired

    async def _loop(self) -> None:
        session, edge, limits = self.session, self.edge, self.limits
        parser = session.client.parser
        while not edge.draining:
            if self.mode is GENERAL_READ:
                head = await self._next_head()
                if head is None:
                    return
                self.mode = next_mode(self.mode, GENERAL_EXCHANGE)
                if not await Exchange(session, head).run():
                    return
                at_rest = parser.at_rest()
                self.mode = next_mode(self.mode, FAST_READ if at_rest else GENERAL_READ)
                self.idle_from = trio.current_time()
                continue
            buffer = self.buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0 or end > self.head_limit:
                if not await self._read_more():
                    return
                continue
            request = read_request(
                buffer,
                limits,
                client_ip=self.client_ip,
                scheme=self.scheme,
                trusted=session.trusted,
                fresh_id=new_request_id(),
            )
            route = None if request is None else edge.fast_route(request.host, request.path)
            if (
                route is None
                or not route.backends
                or (route.wakeable and edge.wakes.queued(route.app))
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
            data = await self._read(self.conn, HEAD, self.head_deadline)
        elif self.edge.draining:
            return False
        else:
            self.phase, self.deadline = IDLE, self.idle_from + config.idle_timeout
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
        self.mode = next_mode(self.mode, GENERAL_READ)

    async def _next_head(self) -> RequestHead | None:
        """The general parser's next request head, its waits bounded like the lane's."""
        client, config = self.session.client, self.config
        parser = client.parser
        head_deadline, self.head_deadline = self.head_deadline, None
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as error:
                await self.session.refuse(error)
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
                self.phase, self.deadline = HEAD, head_deadline
            elif self.edge.draining:
                return None
            else:
                self.phase, self.deadline = IDLE, self.idle_from + config.idle_timeout
            await client.receive()
            self._unbound()

    async def _proxy(self, request: PlainRequest, route: Route) -> bool:
        """Run one fast exchange; whether the client connection may carry another."""
        edge = self.edge
        record = self._begin(request, route)
        now = record.started
        candidates = edge.balancer.candidates(
            route, self.config.max_attempts, now=now, pinned=record.pinned
        )
        connector = edge.connector
        stream = None
        if _TAKES_RECENT[request.method]:  # the common case: no coroutine, no syscall
            stream = connector.take_pooled(route, candidates, now)
        if stream is not None:
            backend = candidates[0]
        else:
            try:
                stream, backend, _ = await connector.connect_first(route, candidates, now)
            except ConnectFailed:
                return await self._fail(502, "backend failed", "backend-unavailable")
        record.backend, self.stream = backend, stream
        timeout = route.options.timeout
        if timeout > self.config.response_timeout:
            timeout = self.config.response_timeout
        buffer, eof = await self._ask(stream, request.upstream, now + timeout)
        while eof and may_replay(
            replays=record.replays,
            response_bytes=len(buffer or b""),
            method=request.method,
            has_body=False,
        ):
            # Closed unanswered (stale, or shed under a burst): again on a new connection,
            # by the same deadline.
            record.replays += 1
            try:
                stream = self.stream = await connector.fresh(backend, stream)
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

    def _begin(self, request: PlainRequest, route: Route) -> RequestRecord:
        """Start the fast exchange of `request`: its record, counted in flight."""
        self.mode = TO_FAST_EXCHANGE[self.mode]
        pinned = request.pinned
        record = self.record = RequestRecord(
            FAST,
            request.method,
            self.edge.now(),
            route,
            request.request_id,
            pinned.decode("latin-1") if pinned is not None and route.options.sticky else None,
        )
        self.request, self.stream = request, None
        self.edge.begin_request(record, route)
        return record

    async def _ask(
        self, stream: Conn, request: bytes, deadline: float
    ) -> tuple[bytes | None, bool]:
        """Send the request, read until a response head ends: (bytes, backend closed).

        (None, True) if the request could not be sent; (b"", True) if the backend
        closed before answering: either way a pooled connection was stale."""
        limit = self.config.max_header_bytes + 4
        sent = send_now(stream, request)
        if sent < len(request):
            self.phase, self.deadline = BACKEND, deadline
            try:
                await stream.send_all(memoryview(request)[sent:])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._unbound()
                return None, True
            self._unbound()
        buffer = b""
        while True:
            self.phase, self.deadline = BACKEND, deadline
            data = await receive(stream, CHUNK)  # (`_read` inlined: the commonest wait)
            self._unbound()
            if not data:
                return buffer, True
            buffer += data
            if b"\r\n\r\n" in buffer or len(buffer) > limit:
                return buffer, False

    async def _relay(self, parsed: Parsed, buffer: bytes, stream: Conn, timeout: float) -> bool:
        status, head_bytes, length, backend_keep_alive, end, session = parsed
        request, record = self.request, self.record
        assert request is not None
        assert record is not None
        route, backend, pinned = record.route, record.backend, record.pinned
        assert route is not None
        assert backend is not None
        # (the first test fails at once for the commonest request: no cookie either way)
        if (
            (session or pinned is not None)
            and (session or pinned != backend.instance)
            and route.options.sticky
            and backend.instance
        ):
            head_bytes += b"%b: %b\r\n" % hdr.sticky_cookie(backend.instance)
        keep_alive = request.keep_alive and not self.edge.draining
        if not keep_alive:
            head_bytes += b"Connection: close\r\n"
        elif not request.http11:
            head_bytes += b"Connection: keep-alive\r\n"
        record.status = status
        total = end + length
        if len(buffer) >= total:  # the whole body came with the head: the commonest case
            pending = head_bytes + b"\r\n" + buffer[end:total]
            record.bytes_sent = len(pending)
            sent = send_now(self.conn, pending)
            if sent < len(pending):
                await self._send_last(pending, sent)
            self._finish(reusable=backend_keep_alive and len(buffer) == total)
            return keep_alive
        pending = head_bytes + b"\r\n" + buffer[end:]
        left = total - len(buffer)
        extra = False
        while left:
            record.bytes_sent += len(pending)
            await self.conn.send_all(pending)
            data = await self._read(stream, BODY, trio.current_time() + timeout)
            if not data:
                error = ProtocolError(502, "backend closed the connection mid-response")
                log.warning("edge-response-aborted app=%s error=%r", record.app, error)
                self._finish(reusable=False)
                return False
            extra = len(data) > left
            pending = data[:left]
            left -= len(pending)
        record.bytes_sent += len(pending)
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

    def _exchange(self, record: RequestRecord) -> Exchange:
        """A general `Exchange` to end the fast exchange of `record` the general way; it
        fills `record`, and this lane still counts and logs it."""
        request = self.request
        assert request is not None
        record.via = HANDED
        return Exchange(self.session, request_head(self.received, request), record=record)

    async def _fail(self, status: int, message: str, code: str) -> bool:
        """Answer an edge error before any response byte went out."""
        record = self.record
        assert record is not None
        exchange = self._exchange(record)
        try:
            await exchange.fail(status, message, code)
        finally:
            self._finish(reusable=False)
        return exchange.goes_on()

    async def _general(self, received: bytes, *, closed: bool) -> bool:
        """Relay an answer this lane does not read itself, from the bytes read so far."""
        request, stream, record = self.request, self.stream, self.record
        assert request is not None
        assert stream is not None
        assert record is not None
        exchange = self._exchange(record)
        upstream = Peer(stream, ResponseParser(self.config.limits, request_method=request.method))
        upstream.received = len(received)
        upstream.parser.feed(received)
        if closed:
            upstream.parser.feed(b"")
        reusable = False
        try:
            reusable = await exchange.relay(upstream)
        finally:
            self._finish(reusable=reusable)
        return exchange.goes_on()

    def _finish(self, *, reusable: bool) -> None:
        """End the fast exchange: give the backend connection back, uncount, log."""
        edge, record, request = self.edge, self.record, self.request
        if record is None or request is None:
            return
        self.record = self.request = None
        self.mode = TO_FAST_READ[self.mode]
        self.idle_from = now = edge.now()
        backend = record.backend
        if backend is not None:
            route = record.route
            assert route is not None
            edge.connector.release(route, backend, self.stream, reusable, now)
        self.stream = None
        logged = self.logged
        if logged:  # (decoded only for the log line)
            record.host = request.host.decode("latin-1")
            record.path = request.path.decode("latin-1")
        edge.end_request(record, now, logged)
