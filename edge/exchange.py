"""One proxied request: route it, pass it to a backend, relay the answer, log it.

Rules kept here:
  * The client connection is kept alive only if the whole request body was read,
    the response was framed so its end is known, both sides asked for it and the
    edge is not draining. The backend connection goes back to the pool only if
    both messages ended cleanly and the backend did not ask to close.
  * The request body is streamed to the backend while its response is read, so a
    backend may answer early (or send 100 Continue) without a deadlock; nothing is
    buffered whole. A bodiless request (most) skips that second task.
  * The path is routed and forwarded in normal form (`edge.routes.routable_target`).
  * Statuses the edge makes itself, each with ERROR_HEADER naming the reason:
    400 malformed / no Host / a refused path, 404 unknown host, 503 no instance, 502 no backend
    would connect or it broke the protocol, 504 no response within the route's
    timeout, 408 a stalled request body, plus the parser's 413 and 431. Once a
    response has started, a failure can only be reported by closing the connection.
  * Only connect failures are retried on another instance (`edge.upstream`). A
    bodiless idempotent request whose backend connection closed or reset before any
    answer byte is sent again on a fresh one (`edge.upstream.may_replay`: at most
    `MAX_REPLAYS` times, all within one response deadline); when it may not be, the
    client gets 502 `backend-failed`, and the access line names that reason.
  * A websocket handshake is forwarded as is; a 101 turns both connections into a
    tunnel (counted in flight, closable by the edge), any other answer is relayed
    as plain HTTP and the session goes on.
  * A response that sets a session cookie gets the sticky cookie for its instance.
  * A request for a `wakeable` route without backends is held (`edge.wake`) until
    the app is up, then proxied with COLD_START_HEADER saying how long it waited;
    it keeps its turn in the app's queue until its head is on the way upstream.
  * Every routed request counts as in flight for its app (held ones too) until it
    ends or becomes a tunnel, which counts as a tunnel instead (`edge.metrics`).
  * What happened is kept in the request's `RequestRecord` (`edge.record`), which the
    access log and metrics read. An Exchange the fast path made to finish one of its
    requests (`Exchange(..., record=...)`) fills that record but leaves counting
    and logging to the lane; the lane uses only the public methods (`fail`, `relay`,
    `goes_on`).
"""

from __future__ import annotations

import itertools
import logging
import math
import os

import trio

from edge import headers as hdr
from edge.encode import (
    encode_body,
    encode_request_head,
    encode_response_head,
    end_of_body,
    error_response,
    framing_headers,
    relay_framing,
)
from edge.http import (
    NEED_DATA,
    Body,
    EndOfMessage,
    Event,
    Framing,
    ProtocolError,
    RequestHead,
    ResponseHead,
    ResponseParser,
    Signal,
    origin_form,
)
from edge.netio import Conn
from edge.peer import Peer
from edge.record import GENERAL, RequestRecord
from edge.routes import Backend, PathError, Route, routable_target
from edge.session import Session
from edge.tunnel import tunnel
from edge.upstream import ConnectFailed, may_replay
from edge.wake import QueueFull, Turn

log = logging.getLogger(__name__)


COLD_START_HEADER = b"X-Foundry-Cold-Start"


class RequestIds:
    """X-Request-Id values: 48 random bits drawn when the generator is made, then a
    counter, so each id costs no syscall. Two generators (two workers, or an edge before
    and after a restart) share a prefix with odds of 2^-48."""

    def __init__(self) -> None:
        self.prefix = os.urandom(6).hex().encode()
        self.counter = itertools.count()

    def next(self) -> bytes:
        """A fresh id (24 hex digits)."""
        return b"%b%012x" % (self.prefix, next(self.counter))


_IDS = RequestIds()


def _reseed_request_ids() -> None:
    # Edge workers are forked from the parent after this module is imported: without a
    # fresh generator every worker would repeat the parent's prefix and count from 0,
    # handing out the same ids as its siblings.
    global _IDS
    _IDS = RequestIds()


os.register_at_fork(after_in_child=_reseed_request_ids)


def new_request_id() -> bytes:
    """A fresh X-Request-Id value (24 hex digits), unique across workers and restarts."""
    ids = _IDS  # (`RequestIds.next`, inline: one is drawn for every request)
    return b"%b%012x" % (ids.prefix, next(ids.counter))


class _StaleConnection(Exception):
    """A pooled connection turned out closed before answering; try a fresh one."""


class Exchange:
    """One request on a client connection."""

    def __init__(
        self, session: Session, head: RequestHead, *, record: RequestRecord | None = None
    ) -> None:
        self.session = session
        self.edge = session.edge
        self.config = session.config
        self.client = session.client
        self.head = head
        self.websocket = head.upgrade and hdr.is_websocket_upgrade(head.headers)
        self.client_http11 = head.version == b"1.1"
        self.keep_alive = head.keep_alive
        self.bodiless = self.request_done = head.framing is Framing.NONE
        self.timeout = self.config.response_timeout
        # Whether this exchange counts and logs its request (not when it finishes one
        # the fast path read: the lane does that for its own record).
        self.owned = record is None
        if record is None:
            record = RequestRecord(GENERAL, head.method, trio.current_time())
            if self.bodiless:
                # A bodiless request's end is queued together with its head (a head
                # from the fast path never went through the parser).
                end = self.client.parser.next_event()
                assert isinstance(end, EndOfMessage), end
        elif record.route is not None:
            self.timeout = min(record.route.options.timeout, self.timeout)
        self.record = record
        self.response_started = self.response_done = self.backend_keep_alive = False
        self.request_error: ProtocolError | None = None
        self.timer = trio.CancelScope()
        self.turn: Turn | None = None  # held for a wake: the next held one waits for this
        self.answer_due: float | None = None  # the response head is due by then (every try)
        self.upstream_head: bytes | None = None  # as sent to the backend
        self.cold_ms: int | None = None  # how long it was held for a wake

    def _arm(self) -> None:
        """Let the wait for the response head last until `answer_due` (set on the first
        try, so a replay gets only what is left of the route's timeout)."""
        if self.answer_due is None:
            self.answer_due = trio.current_time() + self.timeout
        self.timer.deadline = self.answer_due

    def _disarm(self) -> None:
        self.timer.deadline = math.inf

    async def run(self) -> bool:
        """Handle the request; whether the client connection may carry another."""
        try:
            # One scope for the whole exchange; each wait on the backend moves its
            # deadline (`_arm`) instead of opening a scope of its own.
            with trio.CancelScope() as self.timer:
                await self._route_and_proxy()
            if self.timer.cancelled_caught:
                await self._reply(504, f"{self.app}: backend timed out", "backend-timeout")
        finally:
            self._pass_turn()
            if self.owned:
                self.edge.end_request(self.record, trio.current_time(), self.session.logged)
        return self.goes_on()

    def goes_on(self) -> bool:
        """Whether the client connection may carry another request after this one."""
        return self.keep_alive and self.request_done and not self.edge.draining

    async def fail(self, status: int, message: str, code: str) -> None:
        """Answer an edge error about the routed app, unless a response is underway."""
        await self._reply(status, f"{self.app}: {message}", code)

    async def relay(self, upstream: Peer) -> bool:
        """Relay the response `upstream` is sending (a 504 if it stalls before its head);
        whether the backend connection may be pooled again."""
        with trio.CancelScope() as self.timer:
            await self._relay_response(upstream, None)
        if self.timer.cancelled_caught:
            await self.fail(504, "backend timed out", "backend-timeout")
        return self._reusable(upstream)

    async def _route_and_proxy(self) -> None:
        record = self.record
        try:
            host, path, target = self._destination()
        except ProtocolError as error:
            self.keep_alive = False  # a client this confused is not worth a second request
            return await self._reply(error.status, error.reason, error.code)
        record.host, record.path = host, path
        route = self.edge.route(host, path)
        if route is None:
            return await self._reply(404, f"no app is routed at {host}", "unknown-route")
        self.edge.begin_request(record, route)
        if route.wakeable and (not route.backends or self.edge.wakes.queued(route.app)):
            found = record.route = await self._hold(route)
            if found is None:
                return
            route = found
        if not route.backends:
            return await self._reply(503, f"{route.app} has no running instance", "no-instance")
        self.timeout = min(route.options.timeout, self.config.response_timeout)
        pinned = hdr.cookie(self.head.headers, hdr.STICKY_COOKIE) if route.options.sticky else None
        record.pinned = pinned.decode("latin-1") if pinned else None
        edge, now = self.edge, trio.current_time()
        candidates = edge.balancer.candidates(
            route, self.config.max_attempts, now=now, pinned=record.pinned
        )
        try:
            stream, backend, _ = await edge.connector.acquire(
                route, candidates, now, replayable=self._may_replay(0, response_bytes=0)
            )
        except ConnectFailed:
            return await self.fail(502, "backend failed", "backend-unavailable")
        record.backend = backend
        await self._proxy_via(route, backend, stream, target)

    def _may_replay(self, replays: int | None, *, response_bytes: int) -> bool:
        """Whether this request, sent again `replays` times so far (None: it may not be
        at all), may be sent again on a fresh connection (`may_replay`)."""
        return replays is not None and may_replay(
            replays=replays,
            response_bytes=response_bytes,
            method=self.head.method,
            has_body=not self.bodiless,
        )

    async def _hold(self, route: Route) -> Route | None:
        """Wait for the app to wake (and for the requests held before this one); the
        route to use, or None once an error has been answered."""
        app, host, path = route.app, self.record.host, self.record.path
        try:
            found, self.turn = await self.edge.wakes.hold(app, lambda: self.edge.route(host, path))
        except QueueFull:
            message = f"{app}: too many requests wait for it to wake"
            await self._reply(503, message, "wake-queue-full")
            return None
        except trio.TooSlowError:
            waited = self.config.wake_timeout
            await self._reply(
                503, f"{app}: no instance came up within {waited:g} s of a wake", "wake-timeout"
            )
            return None
        self.cold_ms = round((trio.current_time() - self.record.started) * 1000)
        if found is None:
            await self._reply(404, f"no app is routed at {host}", "unknown-route")
        return found

    def _pass_turn(self) -> None:
        if self.turn is not None:
            self.turn.release()
            self.turn = None

    def _destination(self) -> tuple[str, str, bytes]:
        """(host, path, origin-form target) of the request; ProtocolError if unroutable."""
        authority, _, target = origin_form(self.head.target)
        hosts = hdr.get_all(self.head.headers, b"host")
        if len(hosts) > 1:
            raise ProtocolError(400, "more than one Host header")
        if authority is None and not hosts:
            raise ProtocolError(400, "missing Host header")
        host = authority if authority is not None else hosts[0]
        if not host.strip() or b" " in host.strip():
            raise ProtocolError(400, "bad Host header")
        try:
            path, target = routable_target(target)  # matched and forwarded in normal form
        except PathError as error:
            raise ProtocolError(400, str(error)) from None
        return host.decode("latin-1"), path.decode("latin-1"), target

    async def _proxy_via(self, route: Route, backend: Backend, stream: Conn, target: bytes) -> None:
        upstream = Peer(stream, ResponseParser(self.config.limits, request_method=self.head.method))
        try:
            while True:
                try:
                    return await self._proxy(upstream, target, replays=self.record.replays)
                except _StaleConnection:
                    self.record.replays += 1
                try:
                    stream = await self.edge.connector.fresh(backend, upstream.stream)
                except (OSError, trio.TooSlowError):
                    return await self.fail(502, "backend failed", "backend-unavailable")
                upstream = Peer(
                    stream, ResponseParser(self.config.limits, request_method=self.head.method)
                )
        finally:
            self.edge.connector.release(route, backend, upstream.stream, self._reusable(upstream))

    def _reusable(self, upstream: Peer) -> bool:
        return (
            self.response_done
            and self.request_done
            and self.backend_keep_alive
            and self.request_error is None
            and upstream.parser.at_rest()
        )

    async def _proxy(self, upstream: Peer, target: bytes, *, replays: int) -> None:
        """Send the request (already sent `replays` times) and relay the answer;
        `_StaleConnection` if the connection proved closed before any answer byte and
        `may_replay` allows another try."""
        try:
            if self.upstream_head is None:  # (a replay sends the same head, with the same id)
                self.upstream_head = self._upstream_head(target)
            await upstream.send(self.upstream_head)
            self._pass_turn()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if self._may_replay(replays, response_bytes=0):
                raise _StaleConnection() from None
            return await self._reply(502, f"{self.app}: backend failed", "backend-failed")
        if self.bodiless:
            return await self._relay_response(upstream, replays)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_body, upstream, nursery.cancel_scope)
            await self._relay_response(upstream, None)
            nursery.cancel_scope.cancel()  # an unfinished pump leaves the body unread
        if self.request_error is not None:
            error = self.request_error
            await self._reply(error.status, error.reason, error.code)

    def _upstream_head(self, target: bytes) -> bytes:
        headers, self.record.request_id = hdr.forward_request(
            self.head.headers,
            host=self.record.host.encode("latin-1"),
            client_ip=self.session.client_ip,
            proto=self.config.scheme,
            trusted=self.session.trusted,
            fresh_id=new_request_id(),
            websocket=self.websocket,
        )
        if not self.bodiless:
            codings = hdr.get(self.head.headers, b"transfer-encoding")
            headers = framing_headers(headers, self.head.framing, codings=codings)
        return encode_request_head(self.head.method, target, headers)

    async def _pump_body(self, upstream: Peer, exchange: trio.CancelScope) -> None:
        """Stream the request body to the backend as it arrives from the client."""
        framing = self.head.framing
        try:
            while True:
                event = await self.client.next_event(self.config.idle_timeout)
                if isinstance(event, Body):
                    await upstream.send(encode_body(framing, event.data))
                elif isinstance(event, EndOfMessage):
                    await upstream.send(end_of_body(framing))
                    self.request_done = True
                    return
                else:
                    raise ProtocolError(400, f"unexpected {event!r} in a request body")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the backend stopped reading; its response (or its absence) tells
        except trio.TooSlowError:
            self.request_error = ProtocolError(408, "request body timed out")
            exchange.cancel()
        except ProtocolError as error:
            self.request_error = error  # answered once the relay has stopped
            exchange.cancel()

    async def _relay_response(self, upstream: Peer, replays: int | None) -> None:
        """Relay the answer; `_StaleConnection` if there was none and the request, sent
        again `replays` times so far (None: it may not be), may be sent once more."""
        try:
            head = await self._response_head(upstream)
        except trio.TooSlowError:
            return await self._reply(504, f"{self.app}: backend timed out", "backend-timeout")
        except ProtocolError as error:
            if self._may_replay(replays, response_bytes=upstream.received):
                raise _StaleConnection() from None
            log.warning("edge-bad-response app=%s reason=%r", self.app, error.reason)
            return await self._reply(502, f"{self.app}: backend failed", "backend-failed")
        if head.status == 101:
            return await self._switch_protocols(upstream, head)
        self.backend_keep_alive = head.keep_alive
        framing = relay_framing(head.framing, receiver_http11=self.client_http11)
        headers, codings, session = hdr.forward_response(head.headers)
        if framing is not head.framing or framing is Framing.CHUNKED:
            headers = framing_headers(headers, framing, codings=codings)
        headers = self._with_stickiness(headers, session)
        if framing is Framing.CLOSE:
            self.keep_alive = False
        await self._relay_body(
            upstream, framing, self._head_bytes(head.status, head.reason, headers)
        )

    async def _response_head(self, upstream: Peer) -> ResponseHead:
        """The backend's final response head; interim 1xx answers go to the client."""
        self._arm()
        while True:
            head = await upstream.next_event()
            if not isinstance(head, ResponseHead):
                raise ProtocolError(502, f"expected a response head, got {head!r}")
            if head.status == 101 or head.status >= 200:
                self._disarm()
                return head
            await upstream.next_event()  # its EndOfMessage
            if self.client_http11:  # HTTP/1.0 clients never see 1xx
                headers = hdr.strip_hop_by_hop(head.headers)
                await self._send(encode_response_head(head.status, head.reason, headers))

    async def _relay_body(self, upstream: Peer, framing: Framing, pending: bytes) -> None:
        """Send the head in `pending` and the body after it, coalescing what is queued."""
        try:
            while True:
                event = upstream.parser.next_event()
                if event is NEED_DATA:
                    await self._send(pending)
                    pending = b""
                    event = await self._next_body_event(upstream)
                if isinstance(event, Body):
                    pending += encode_body(framing, event.data)
                elif isinstance(event, EndOfMessage):
                    await self._send(pending + end_of_body(framing))
                    self.response_done = True
                    return
                else:
                    raise ProtocolError(502, f"unexpected {event!r} in a response body")
        except (trio.TooSlowError, ProtocolError) as error:
            # The status line is out; closing is the only way left to say "broken".
            log.warning("edge-response-aborted app=%s error=%r", self.app, error)
            self.keep_alive = False
            await self._send(pending)

    async def _next_body_event(self, upstream: Peer) -> Event | Signal:
        """The next response event; TooSlowError if the backend stalls mid-body."""
        with trio.move_on_after(self.timeout):
            return await upstream.next_event()
        raise trio.TooSlowError

    def _with_stickiness(self, headers: hdr.Headers, session: bool) -> hdr.Headers:
        route, backend = self.record.route, self.record.backend
        if route is None or backend is None or not route.options.sticky or not backend.instance:
            return headers
        pinned = self.record.pinned
        repin = pinned is not None and pinned != backend.instance
        if repin or session:
            return [*headers, hdr.sticky_cookie(backend.instance)]
        return headers

    async def _switch_protocols(self, upstream: Peer, head: ResponseHead) -> None:
        if not (self.websocket and hdr.is_websocket_upgrade(head.headers)):
            return await self._reply(
                502, f"{self.app}: backend switched protocols unasked", "backend-failed"
            )
        headers = hdr.strip_hop_by_hop(head.headers, keep_websocket=True)
        headers = self._with_stickiness(headers, hdr.sets_session_cookie(headers))
        self.keep_alive = False  # the client connection now belongs to the tunnel
        await self._send(self._head_bytes(101, head.reason, headers))
        from_client = self.client.parser.detach()
        from_backend = upstream.parser.detach()
        record, backend = self.record, self.record.backend
        app = record.counted
        assert backend is not None
        assert app is not None
        scopes = self.edge.tunnels.setdefault(backend, set())
        concurrency = self.edge.concurrency
        concurrency.finished(app, trio.current_time())
        concurrency.tunnel_opened(app)
        record.counted = None
        with trio.CancelScope() as scope:
            scopes.add(scope)
            try:
                await tunnel(self.client.stream, from_client, upstream.stream, from_backend)
            finally:
                concurrency.tunnel_closed(app)
                scopes.discard(scope)
                if not scopes:
                    self.edge.tunnels.pop(backend, None)

    def _head_bytes(self, status: int, reason: bytes, headers: hdr.Headers) -> bytes:
        if self.edge.draining:
            self.keep_alive = False
        if not self.client_http11 and self.keep_alive:
            headers = [*headers, (b"Connection", b"keep-alive")]
        elif not self.keep_alive:
            headers = [*headers, (b"Connection", b"close")]
        if self.cold_ms is not None:
            headers = [*headers, (COLD_START_HEADER, b"%dms" % self.cold_ms)]
        self.record.status, self.response_started = status, True
        return encode_response_head(status, reason, headers)

    async def _send(self, data: bytes) -> None:
        self.record.bytes_sent += len(data)
        await self.client.send(data)

    async def _reply(self, status: int, message: str, code: str) -> None:
        """Answer with an edge-made error, unless a response is already underway."""
        if self.response_started:
            self.keep_alive = False
            return
        self.keep_alive = self.keep_alive and self.request_done and not self.edge.draining
        self.record.status, self.response_started = status, True
        self.record.error = code
        log.info("edge-error status=%d code=%s app=%s reason=%r", status, code, self.app, message)
        await self._send(error_response(status, message, close=not self.keep_alive, code=code))

    @property
    def app(self) -> str:
        """The routed app's name, or "-"."""
        return self.record.app
