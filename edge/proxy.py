"""The edge's trio server: accepts client connections and proxies each request to a backend.

The protocol lives in `edge.http` and the routing decisions in `edge.routes`; this
module only reads, writes, waits and applies them. One `Session` runs per client
connection, one `Exchange` per request on it.

Rules kept here:
  * One request at a time per client connection (pipelined requests wait their
    turn in the parser). The connection is kept alive only if the whole request
    body was read, the response was framed so its end is known, and both sides
    asked for it.
  * The request body is streamed to the backend while its response is read, so a
    backend may answer early (or send 100 Continue) without a deadlock; nothing is
    buffered whole.
  * Statuses the edge makes itself: 400 malformed / no Host, 404 unknown host,
    503 no instance, 502 no backend would connect or it broke the protocol, 504 no
    response head within `response_timeout`, plus the parser's 413 and 431. Once a
    response has started, a failure can only be reported by closing the connection.
  * Only connect failures are retried (see `edge.upstream`).
  * A websocket handshake is forwarded as is; a 101 turns both connections into a
    tunnel, any other answer is relayed as plain HTTP and the session goes on.
  * Every request ends with one `edge-request` log line.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass

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
    PAUSED,
    Body,
    EndOfMessage,
    Framing,
    Limits,
    ProtocolError,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    origin_form,
)
from edge.peer import Peer
from edge.routes import Backend, Balancer, Route, RouteSource, RouteTable
from edge.tunnel import tunnel
from edge.upstream import ConnectFailed, Connector, connect_first

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EdgeConfig:
    """How an edge listens, where its routes come from, and the limits it enforces."""

    host: str
    port: int
    control_url: str | None
    token: str | None
    connect_timeout: float = 5.0
    response_timeout: float = 60.0  # for the response head, then between body reads
    idle_timeout: float = 60.0  # for the client's next bytes (a request head or body)
    max_attempts: int = 3
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_body_bytes: int | None = 100 * 1024 * 1024
    scheme: str = "http"  # what X-Forwarded-Proto says

    @property
    def limits(self) -> Limits:
        """The per-message limits both parsers enforce."""
        return Limits(self.max_header_bytes, self.max_headers, self.max_body_bytes)


async def serve(
    config: EdgeConfig,
    source: RouteSource,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on config.host:config.port and proxy until cancelled; reports the bound port."""
    listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    port = listeners[0].socket.getsockname()[1]
    edge = Edge(config, source)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, edge.handle_connection, listeners)
        log.info("edge-listening host=%s port=%d", config.host, port)
        task_status.started(port)


class Edge:
    """What all connections share: config, routes, balancer and upstream connector."""

    def __init__(self, config: EdgeConfig, source: RouteSource) -> None:
        self.config = config
        self.connector = Connector(config.connect_timeout)
        self._source = source
        self._balancer = Balancer()
        self._table: RouteTable | None = None

    def route(self, host: str, path: str) -> Route | None:
        """Look the request up in the current table."""
        table = self._source.table
        if table is not self._table:
            self._balancer.forget_missing(table)
            self._table = table
        return table.lookup(host, path)

    def candidates(self, route: Route) -> list[Backend]:
        """The backends to try for one request, in order."""
        return self._balancer.candidates(route, self.config.max_attempts)

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        """Serve one client connection; never lets an error escape to the listener."""
        async with stream:
            try:
                await self._run_session(stream)
            except Exception:
                log.exception("edge-connection-crashed")

    async def _run_session(self, stream: trio.SocketStream) -> None:
        try:
            await Session(self, stream).run()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away, perhaps mid-response; nothing is owed to it


class Session:
    """One client connection: read requests and run them one after another."""

    def __init__(self, edge: Edge, stream: trio.SocketStream) -> None:
        self.edge = edge
        self.client = Peer(stream, RequestParser(edge.config.limits))
        self.client_ip = str(stream.socket.getpeername()[0])

    async def run(self) -> None:
        while True:
            try:
                event = await self.client.next_event(self.edge.config.idle_timeout)
            except trio.TooSlowError:
                return  # idle keep-alive (or a stalled head): just close
            except ProtocolError as error:
                log.info("edge-bad-request status=%d reason=%r", error.status, error.reason)
                await self.client.send(error_response(error.status, error.reason, close=True))
                return
            if event is PAUSED:
                self.client.parser.resume()  # the backend declined to switch protocols
                continue
            if not isinstance(event, RequestHead):
                return  # ConnectionClosed: the client is done
            if not await Exchange(self, event).run():
                return


class Exchange:
    """One request: route it, pass it to a backend, relay the answer."""

    def __init__(self, session: Session, head: RequestHead) -> None:
        self.edge = session.edge
        self.config = session.edge.config
        self.session = session
        self.client = session.client
        self.head = head
        self.websocket = hdr.is_websocket_upgrade(head.headers)
        self.client_http11 = head.version == b"1.1"
        self.keep_alive = head.keep_alive
        self.request_done = head.framing is Framing.NONE
        if self.request_done:
            # A bodiless request's end is queued together with its head.
            end = self.client.parser.next_event()
            assert isinstance(end, EndOfMessage), end
        self.response_started = False
        self.status = 0
        self.app = "-"
        self.backend = "-"
        self.host = "-"
        self.path = "-"
        self.request_error: ProtocolError | None = None
        self.request_id = b"-"
        self.started = time.monotonic()

    async def run(self) -> bool:
        """Handle the request; whether the client connection may carry another."""
        try:
            await self._route_and_proxy()
        finally:
            self._log()
        return self.keep_alive and self.request_done

    async def _route_and_proxy(self) -> None:
        try:
            host, path, target = self._destination()
        except ProtocolError as error:
            self.keep_alive = False  # a client this confused is not worth a second request
            return await self._reply(error.status, error.reason)
        self.host, self.path = host, path
        route = self.edge.route(host, path)
        if route is None:
            return await self._reply(404, f"no app is routed at {host}")
        self.app = route.app
        if not route.backends:
            return await self._reply(503, f"{route.app} has no running instance")
        try:
            candidates = self.edge.candidates(route)
            upstream, backend = await connect_first(self.edge.connector, candidates)
        except ConnectFailed:
            return await self._reply(502, f"{route.app}: backend failed")
        self.backend = backend.address
        try:
            await self._proxy(upstream, target)
        finally:
            await self.edge.connector.release(upstream, reusable=False)

    def _destination(self) -> tuple[str, str, bytes]:
        """(host, path, origin-form target) of the request; ProtocolError if unroutable."""
        authority, path, target = origin_form(self.head.target)
        hosts = hdr.get_all(self.head.headers, b"host")
        if len(hosts) > 1:
            raise ProtocolError(400, "more than one Host header")
        if authority is None and not hosts:
            raise ProtocolError(400, "missing Host header")
        host = authority if authority is not None else hosts[0]
        if not host.strip():
            raise ProtocolError(400, "empty Host header")
        return host.decode("latin-1"), path.decode("latin-1"), target

    async def _proxy(self, stream: trio.SocketStream, target: bytes) -> None:
        method = self.head.method
        upstream = Peer(stream, ResponseParser(self.config.limits, request_method=method))
        try:
            await upstream.send(self._upstream_head(target))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return await self._reply(502, f"{self.app}: backend failed")
        async with trio.open_nursery() as nursery:
            if not self.request_done:
                nursery.start_soon(self._pump_body, upstream, nursery.cancel_scope)
            await self._relay_response(upstream)
            nursery.cancel_scope.cancel()  # an unfinished pump leaves the body unread
        if self.request_error is not None:
            await self._reply(self.request_error.status, self.request_error.reason)

    def _upstream_head(self, target: bytes) -> bytes:
        host = self.host.encode("latin-1")
        headers = hdr.strip_hop_by_hop(self.head.headers, keep_websocket=self.websocket)
        headers = hdr.remove(headers, b"host") + [(b"Host", host)]
        headers = hdr.add_forwarded(
            headers, client_ip=self.session.client_ip, proto=self.config.scheme, host=host
        )
        headers, self.request_id = hdr.with_request_id(headers, uuid.uuid4().hex.encode())
        codings = hdr.get(self.head.headers, b"transfer-encoding")
        headers = framing_headers(headers, self.head.framing, codings=codings)
        if not self.websocket:
            headers.append((b"Connection", b"close"))  # no upstream pool yet
        return encode_request_head(self.head.method, target, headers)

    async def _pump_body(self, upstream: Peer, exchange: trio.CancelScope) -> None:
        """Stream the request body to the backend as it arrives from the client."""
        framing = self.head.framing
        try:
            while not self.request_done:
                event = await self.client.next_event(self.config.idle_timeout)
                if isinstance(event, Body):
                    await upstream.send(encode_body(framing, event.data))
                elif isinstance(event, EndOfMessage):
                    self.request_done = True
                    await upstream.send(end_of_body(framing))
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

    async def _relay_response(self, upstream: Peer) -> None:
        try:
            head = await self._response_head(upstream)
        except trio.TooSlowError:
            return await self._reply(504, f"{self.app}: backend timed out")
        except ProtocolError as error:
            log.warning("edge-bad-response app=%s reason=%r", self.app, error.reason)
            return await self._reply(502, f"{self.app}: backend failed")
        if head.status == 101:
            return await self._switch_protocols(upstream, head)
        framing = relay_framing(head.framing, receiver_http11=self.client_http11)
        headers = hdr.strip_hop_by_hop(head.headers)
        codings = hdr.get(head.headers, b"transfer-encoding")
        headers = framing_headers(headers, framing, codings=codings)
        if framing is Framing.CLOSE:
            self.keep_alive = False
        await self._send_head(head.status, head.reason, headers)
        await self._relay_body(upstream, framing)

    async def _response_head(self, upstream: Peer) -> ResponseHead:
        """The backend's final response head; interim 1xx answers go to the client."""
        with trio.fail_after(self.config.response_timeout):
            while True:
                head = await upstream.next_event(math.inf)
                if not isinstance(head, ResponseHead):
                    raise ProtocolError(502, f"expected a response head, got {head!r}")
                if head.status == 101 or head.status >= 200:
                    return head
                await upstream.next_event(math.inf)  # its EndOfMessage
                if self.client_http11:  # HTTP/1.0 clients never see 1xx
                    headers = hdr.strip_hop_by_hop(head.headers)
                    await self.client.send(encode_response_head(head.status, head.reason, headers))

    async def _relay_body(self, upstream: Peer, framing: Framing) -> None:
        try:
            while True:
                event = await upstream.next_event(self.config.response_timeout)
                if isinstance(event, Body):
                    await self.client.send(encode_body(framing, event.data))
                elif isinstance(event, EndOfMessage):
                    return await self.client.send(end_of_body(framing))
                else:
                    raise ProtocolError(502, f"unexpected {event!r} in a response body")
        except (trio.TooSlowError, ProtocolError) as error:
            # The status line is out; closing is the only way left to say "broken".
            log.warning("edge-response-aborted app=%s error=%r", self.app, error)
            self.keep_alive = False

    async def _switch_protocols(self, upstream: Peer, head: ResponseHead) -> None:
        if not (self.websocket and hdr.is_websocket_upgrade(head.headers)):
            return await self._reply(502, f"{self.app}: backend switched protocols unasked")
        headers = hdr.strip_hop_by_hop(head.headers, keep_websocket=True)
        await self._send_head(101, head.reason, headers)
        self.keep_alive = False  # the client connection now belongs to the tunnel
        from_client = self.client.parser.detach()
        from_backend = upstream.parser.detach()
        await tunnel(self.client.stream, from_client, upstream.stream, from_backend)

    async def _send_head(self, status: int, reason: bytes, headers: hdr.Headers) -> None:
        if not self.client_http11 and self.keep_alive:
            headers = headers + [(b"Connection", b"keep-alive")]
        elif not self.keep_alive:
            headers = headers + [(b"Connection", b"close")]
        self.status, self.response_started = status, True
        await self.client.send(encode_response_head(status, reason, headers))

    async def _reply(self, status: int, message: str) -> None:
        """Answer with an edge-made error, unless a response is already underway."""
        if self.response_started:
            self.keep_alive = False
            return
        self.keep_alive = self.keep_alive and self.request_done
        self.status, self.response_started = status, True
        await self.client.send(error_response(status, message, close=not self.keep_alive))

    def _log(self) -> None:
        log.info(
            "edge-request id=%s method=%s host=%s path=%s app=%s backend=%s status=%d ms=%.1f",
            self.request_id.decode("latin-1"),
            self.head.method.decode("latin-1"),
            self.host,
            self.path[:200],
            self.app,
            self.backend,
            self.status,
            (time.monotonic() - self.started) * 1000,
        )
