"""Sans-IO HTTP/1.1 parsing for the edge: bytes in, events out (writing is `edge.encode`).

`RequestParser` reads what clients send, `ResponseParser` what backends answer. Both
wrap httptools (llhttp) and turn its callbacks into a queue of events, in the manner
of h11: `feed(data)` (b"" means the peer closed), then `next_event()` until it
returns NEED_DATA. No sockets here; the trio code in `edge.proxy` only moves bytes.

Rules kept here:
  * Events come out in wire order. A protocol error is raised by `next_event()` only
    after the events parsed before it, so a good pipelined request is still served
    before the bad one behind it is refused.
  * Errors carry the status the client should see: 400 malformed (including
    Content-Length with Transfer-Encoding, two Content-Lengths, or a request
    Transfer-Encoding other than exactly one `chunked`), 431 header
    section over `Limits.max_header_bytes` or `max_headers`, 413 body over
    `max_body_bytes` (refused at the head when Content-Length says so). For a
    backend's response every error means 502.
  * Memory is bounded: the header section is capped while it is still arriving, and
    a body is only ever handed out as the chunks that were fed.
  * After a message that asks to switch protocols (llhttp's "upgrade", e.g. a
    websocket handshake) the parser is PAUSED: the caller either `detach()`es the
    bytes that follow, to tunnel them, or `resume()`s HTTP parsing when the backend
    declined the switch.
  * Framing is explicit (`Framing`), decided once per head from Content-Length and
    Transfer-Encoding; a body is re-framed for its receiver by `edge.encode`.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

import httptools

from edge.headers import Headers


class Signal(enum.Enum):
    """What `next_event()` returns when it has no event."""

    NEED_DATA = "need-data"
    PAUSED = "paused"


NEED_DATA = Signal.NEED_DATA
PAUSED = Signal.PAUSED


class Framing(enum.Enum):
    """How a message body is delimited on the wire."""

    NONE = "none"  # no body at all
    LENGTH = "length"  # exactly Content-Length bytes
    CHUNKED = "chunked"  # chunked transfer coding
    CLOSE = "close"  # until the connection closes (responses only)


ERROR_CODES = {
    400: "bad-request",
    408: "request-timeout",
    413: "body-too-large",
    431: "header-too-large",
    502: "backend-failed",
}


class ProtocolError(Exception):
    """The peer broke HTTP/1.1; `status` is what to answer (or 502 for a backend)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    @property
    def code(self) -> str:
        """The short name the edge's error header gives this failure."""
        return ERROR_CODES.get(self.status, "bad-request")


@dataclass(frozen=True)
class Limits:
    """What the edge accepts from one message."""

    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_body_bytes: int | None = 100 * 1024 * 1024


@dataclass(frozen=True)
class RequestHead:
    method: bytes
    target: bytes
    version: bytes  # b"1.1" or b"1.0"
    headers: Headers
    keep_alive: bool
    framing: Framing
    upgrade: bool  # llhttp will pause after this message (Connection: upgrade, CONNECT)


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: bytes
    version: bytes
    headers: Headers
    framing: Framing
    keep_alive: bool = False  # the backend would take another request on this connection


@dataclass(frozen=True)
class Body:
    data: bytes


@dataclass(frozen=True)
class EndOfMessage:
    pass


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed its side cleanly, between messages."""


Event = RequestHead | ResponseHead | Body | EndOfMessage | ConnectionClosed


class _Parser:
    """The callback side shared by both parsers; subclasses build the head event."""

    _failure_status = 400

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._events: deque[Event] = deque()
        self._failure: ProtocolError | None = None
        self._paused = False
        self._leftover = b""
        self._eof = False
        self._in_message = False
        self._in_head = False
        self._head_bytes = 0  # of the target and header fields, as parsed
        self._head_fed = 0  # of whole feeds that arrived while the head was incomplete
        self._header_count = 0
        self._body_bytes = 0
        self._headers: Headers = []
        self._parser = self._new_parser()

    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        raise NotImplementedError

    def feed(self, data: bytes) -> None:
        """Parse `data`; b"" means the peer closed its side."""
        if self._failure is not None or self._paused or self._eof:
            return
        if not data:
            self._eof = True
            self._on_eof()
            return
        self._feed(data)

    @property
    def in_head(self) -> bool:
        """Whether part of a message head has arrived but not all of it."""
        return self._in_head

    def at_rest(self) -> bool:
        """Whether every fed byte belonged to messages already handed out."""
        return not self._events and not self._in_message and not self._leftover

    def next_event(self) -> Event | Signal:
        """The next parsed event, PAUSED, NEED_DATA; raises ProtocolError when due."""
        if self._events:
            return self._events.popleft()
        if self._failure is not None:
            raise self._failure
        if self._paused:
            return PAUSED
        if self._eof:
            return ConnectionClosed()
        return NEED_DATA

    def resume(self) -> None:
        """Go on parsing HTTP after a PAUSE (the switch of protocols was declined)."""
        leftover, self._leftover = self._leftover, b""
        self._paused = False
        self._parser = self._new_parser()
        if leftover:
            self._feed(leftover)

    def detach(self) -> bytes:
        """Stop parsing for good; return the bytes received after the paused message."""
        leftover, self._leftover = self._leftover, b""
        self._failure = ProtocolError(self._failure_status, "connection switched protocols")
        return leftover

    def _feed(self, data: bytes) -> None:
        was_in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._paused = True
            self._leftover = data[upgrade.args[0] :]
        except httptools.HttpParserCallbackError:
            if self._failure is None:  # not one of ours: a bug, not a bad peer
                raise
        except httptools.HttpParserError as error:
            self._fail(self._failure_status, f"malformed message: {error}", raise_=False)
        # Bytes fed while the head was, and still is, incomplete are all head bytes;
        # this catches a header line that never ends, which no callback reports.
        if was_in_head and self._in_head:
            self._head_fed += len(data)
            if self._head_fed > self._limits.max_header_bytes:
                self._fail(431, "header section too large", raise_=False)

    def _on_eof(self) -> None:
        if self._in_message:
            self._fail(self._failure_status, "connection closed mid-message", raise_=False)
        else:
            self._events.append(ConnectionClosed())

    def _fail(self, status: int, reason: str, *, raise_: bool = True) -> None:
        if self._failure is None:
            self._failure = ProtocolError(status, reason)
        if raise_:
            raise self._failure

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._in_message = True
        self._in_head = True
        self._head_bytes = 0
        self._head_fed = 0
        self._header_count = 0
        self._body_bytes = 0
        self._headers = []
        self._lengths: list[bytes] = []
        self._codings: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_bytes += len(name) + len(value) + 4
        if self._header_count > self._limits.max_headers:
            self._fail(431, "too many header fields")
        if self._head_bytes > self._limits.max_header_bytes:
            self._fail(431, "header section too large")
        self._headers.append((name, value))
        if len(name) in (14, 17):  # cheap pre-check before lower-casing
            lname = name.lower()
            if lname == b"content-length":
                self._lengths.append(value)
            elif lname == b"transfer-encoding":
                self._codings.append(value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        try:
            self._events.append(self._head())
        except ProtocolError as error:
            self._fail(error.status, error.reason)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        limit = self._limits.max_body_bytes
        if limit is not None and self._body_bytes > limit:
            self._fail(413, "request body too large")
        self._events.append(Body(bytes(body)))

    def on_message_complete(self) -> None:
        if not self._in_message:  # already ended early (a HEAD response)
            return
        self._in_message = False
        self._events.append(EndOfMessage())

    def _head(self) -> Event:
        raise NotImplementedError


class RequestParser(_Parser):
    """Parses the requests a client sends on one connection."""

    def _new_parser(self) -> httptools.HttpRequestParser:
        return httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._target = b""

    def on_url(self, url: bytes) -> None:
        self._target += url
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_header_bytes:
            self._fail(431, "request target too long")

    def _head(self) -> RequestHead:
        parser = self._parser
        assert isinstance(parser, httptools.HttpRequestParser)
        framing, length = framing_of(self._lengths, self._codings)
        if self._codings and _tokens(self._codings) != [b"chunked"]:
            # Only plain chunking has one reading everywhere; "chunked, chunked",
            # "gzip" or an empty coding are how requests get smuggled past proxies.
            raise ProtocolError(400, "unsupported request Transfer-Encoding")
        if length == 0:
            framing = Framing.NONE  # llhttp ends the message with its head
        limit = self._limits.max_body_bytes
        if limit is not None and length is not None and length > limit:
            raise ProtocolError(413, "request body too large")
        if parser.should_upgrade() and framing is not Framing.NONE:
            # llhttp skips the body of a message that switches protocols, so it
            # would reach the backend as garbage; refuse instead.
            raise ProtocolError(400, "a protocol upgrade request cannot carry a body")
        return RequestHead(
            method=parser.get_method(),
            target=self._target,
            version=parser.get_http_version().encode("ascii"),
            headers=self._headers,
            keep_alive=parser.should_keep_alive(),
            framing=framing,
            upgrade=parser.should_upgrade(),
        )


class ResponseParser(_Parser):
    """Parses one backend's answer to a request made with `request_method`."""

    _failure_status = 502

    def __init__(self, limits: Limits, *, request_method: bytes) -> None:
        self._request_method = request_method
        self._framing = Framing.NONE
        super().__init__(limits)

    def _new_parser(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self)

    def _fail(self, status: int, reason: str, *, raise_: bool = True) -> None:
        super()._fail(502, reason, raise_=raise_)  # whatever a backend breaks, it is a 502

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._request_method == b"HEAD" and self._in_message:
            # llhttp cannot be told that a HEAD response has no body, so it would wait
            # for Content-Length bytes that never come. End the message here and
            # ignore the rest; this parser (and, for now, the connection) is done.
            self.on_message_complete()
            self._eof = True

    def on_body(self, body: bytes) -> None:
        if self._in_message:
            self._events.append(Body(bytes(body)))

    def _on_eof(self) -> None:
        if self._in_message and not self._in_head and self._framing is Framing.CLOSE:
            self.on_message_complete()
            self._events.append(ConnectionClosed())
        elif self._in_message:
            self._fail(502, "backend closed the connection mid-response", raise_=False)
        else:
            self._fail(502, "backend closed the connection without a response", raise_=False)

    def _head(self) -> ResponseHead:
        assert isinstance(self._parser, httptools.HttpResponseParser)
        status = self._parser.get_status_code()
        framing, _ = framing_of(self._lengths, self._codings)
        no_body = self._request_method == b"HEAD" or status < 200 or status in (204, 304)
        if no_body:
            framing = Framing.NONE
        elif framing is Framing.NONE:
            framing = Framing.CLOSE
        self._framing = framing
        return ResponseHead(
            status=status,
            reason=self._reason,
            version=self._parser.get_http_version().encode("ascii"),
            headers=self._headers,
            framing=framing,
            keep_alive=framing is not Framing.CLOSE and self._parser.should_keep_alive(),
        )


def _tokens(values: list[bytes]) -> list[bytes]:
    return [t.strip().lower() for v in values for t in v.split(b",") if t.strip()]


def framing_of(
    length_values: list[bytes], coding_values: list[bytes]
) -> tuple[Framing, int | None]:
    """Framing from the Content-Length and Transfer-Encoding header values, and the length."""
    if not length_values and not coding_values:
        return Framing.NONE, None
    lengths = {v.strip() for v in length_values}
    codings = _tokens(coding_values)
    if lengths and codings:
        raise ProtocolError(400, "Content-Length together with Transfer-Encoding")
    if len(lengths) > 1:
        raise ProtocolError(400, "conflicting Content-Length values")
    if codings:
        return (Framing.CHUNKED if codings[-1] == b"chunked" else Framing.CLOSE), None
    if lengths:
        (length,) = lengths
        if not length.isdigit():
            raise ProtocolError(400, "invalid Content-Length")
        return Framing.LENGTH, int(length)
    return Framing.NONE, None


def origin_form(target: bytes) -> tuple[bytes | None, bytes, bytes]:
    """Split a request target into (authority if absolute-form, path, origin-form target)."""
    if target.startswith(b"/") or target == b"*":
        path = target.split(b"?", 1)[0]
        return None, path, target
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError as error:
        raise ProtocolError(400, "invalid request target") from error
    if not url.schema or not url.host:
        raise ProtocolError(400, "invalid request target")
    authority = url.host if url.port is None else b"%b:%d" % (url.host, url.port)
    path = url.path or b"/"
    query = b"?" + url.query if url.query else b""
    return authority, path, path + query
