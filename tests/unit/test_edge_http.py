"""Sans-IO HTTP parsing and encoding: raw bytes in, events or statuses out."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.encode import (
    encode_body,
    encode_request_head,
    end_of_body,
    error_response,
    framing_headers,
    relay_framing,
)
from edge.http import (
    NEED_DATA,
    PAUSED,
    Body,
    ConnectionClosed,
    EndOfMessage,
    Framing,
    Limits,
    ProtocolError,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    Signal,
    origin_form,
)

Parser = RequestParser | ResponseParser


def drain(parser: Parser) -> list[object]:
    """Every event available now, ending with the signal (or the error) that stopped it."""
    out: list[object] = []
    while True:
        try:
            event = parser.next_event()
        except ProtocolError as error:
            out.append(error)
            return out
        out.append(event)
        if isinstance(event, Signal | ConnectionClosed):
            return out


def feed(parser: Parser, *chunks: bytes) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        parser.feed(chunk)
        out += [e for e in drain(parser) if e is not NEED_DATA]
    return out


def request(*chunks: bytes, limits: Limits | None = None) -> list[object]:
    return feed(RequestParser(limits or Limits()), *chunks)


def body_of(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Body))


def status_of(events: list[object]) -> int | None:
    last = events[-1] if events else None
    return last.status if isinstance(last, ProtocolError) else None


def test_simple_get() -> None:
    events = request(b"GET /x?y=1 HTTP/1.1\r\nHost: a.localhost\r\nAccept: */*\r\n\r\n")
    head, end = events
    assert isinstance(head, RequestHead)
    assert (head.method, head.target, head.version) == (b"GET", b"/x?y=1", b"1.1")
    assert head.headers == [(b"Host", b"a.localhost"), (b"Accept", b"*/*")]
    assert head.keep_alive
    assert head.framing is Framing.NONE
    assert not head.upgrade
    assert end == EndOfMessage()


def test_pipelined_requests_come_out_in_order() -> None:
    events = request(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "RequestHead",
        "EndOfMessage",
        "RequestHead",
        "Body",
        "EndOfMessage",
        "RequestHead",
        "EndOfMessage",
    ]
    targets = [e.target for e in events if isinstance(e, RequestHead)]
    assert targets == [b"/1", b"/2", b"/3"]


def test_head_split_across_many_feeds() -> None:
    raw = b"GET /split HTTP/1.1\r\nHost: a\r\nX-Long: " + b"v" * 50 + b"\r\n\r\n"
    events = request(*[raw[i : i + 7] for i in range(0, len(raw), 7)])
    head = events[0]
    assert isinstance(head, RequestHead)
    assert head.target == b"/split"
    assert head.headers[1] == (b"X-Long", b"v" * 50)


def test_chunked_request_body_is_dechunked() -> None:
    events = request(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
        b"6\r\n world\r\n0\r\n\r\n",
    )
    head = events[0]
    assert isinstance(head, RequestHead)
    assert head.framing is Framing.CHUNKED
    assert body_of(events) == b"hello world"
    assert events[-1] == EndOfMessage()


PIPELINE = (
    b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
    b"POST /2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    b"PUT /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
)


def normalized(events: list[object]) -> list[object]:
    """Events with adjacent body pieces merged: chunk boundaries are not meaningful."""
    out: list[object] = []
    for event in events:
        if isinstance(event, Body) and out and isinstance(out[-1], Body):
            out[-1] = Body(out[-1].data + event.data)
        else:
            out.append(event)
    return out


@given(cuts=st.lists(st.integers(min_value=1, max_value=len(PIPELINE) - 1), max_size=12))
def test_how_bytes_are_split_does_not_change_the_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(set(cuts)), len(PIPELINE)]
    chunks = [PIPELINE[a:b] for a, b in itertools.pairwise(bounds)]
    assert normalized(request(*chunks)) == normalized(request(PIPELINE))


def test_body_arrives_as_fed_not_buffered_whole() -> None:
    parser = RequestParser(Limits())
    feed(parser, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    assert feed(parser, b"12345") == [Body(b"12345")]
    assert feed(parser, b"67890") == [Body(b"67890"), EndOfMessage()]


@pytest.mark.parametrize(
    "raw",
    [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"BREW / HTTP/1.1\r\n\r\n",
        b"GET / SPDY/3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n"
        b"Content-Length: 3\r\n\r\nabc",
    ],
)
def test_malformed_requests_are_400(raw: bytes) -> None:
    assert status_of(request(raw)) == 400


def test_a_good_request_is_delivered_before_the_bad_one_behind_it() -> None:
    events = request(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nNOT HTTP\r\n\r\n")
    assert isinstance(events[0], RequestHead)
    assert events[1] == EndOfMessage()
    assert status_of(events) == 400


def test_oversize_header_section_is_431() -> None:
    limits = Limits(max_header_bytes=1024)
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 2000 + b"\r\n\r\n"
    assert status_of(request(raw, limits=limits)) == 431


def test_oversize_header_is_431_before_it_is_complete() -> None:
    limits = Limits(max_header_bytes=1024)
    parser = RequestParser(limits)
    events = feed(parser, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ", *[b"x" * 300] * 5)
    assert status_of(events) == 431


def test_too_many_headers_is_431() -> None:
    raw = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(20)) + b"\r\n"
    assert status_of(request(raw, limits=Limits(max_headers=10))) == 431


def test_long_target_is_431() -> None:
    raw = b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    assert status_of(request(raw, limits=Limits(max_header_bytes=1024))) == 431


@pytest.mark.parametrize("piece", [7, 100, 10_000])
def test_headers_just_under_the_limit_pass_however_they_arrive(piece: int) -> None:
    fields = b"".join(b"X-%d: %b\r\n" % (i, b"v" * 80) for i in range(10))
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
    chunks = [raw[i : i + piece] for i in range(0, len(raw), piece)]
    events = request(*chunks, limits=Limits(max_header_bytes=1024))
    assert isinstance(events[0], RequestHead)


def test_content_length_over_the_limit_is_413_at_the_head() -> None:
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n"
    assert status_of(request(raw, limits=Limits(max_body_bytes=100))) == 413


def test_chunked_body_over_the_limit_is_413_once_it_exceeds() -> None:
    limits = Limits(max_body_bytes=8)
    events = request(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
        b"5\r\nworld\r\n",
    )
    assert status_of(events) is None
    limited = request(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
        b"5\r\nworld\r\n",
        limits=limits,
    )
    assert body_of(limited) == b"hello"
    assert status_of(limited) == 413


def test_content_length_zero_has_no_body() -> None:
    events = request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    head = events[0]
    assert isinstance(head, RequestHead)
    assert head.framing is Framing.NONE
    assert events[1] == EndOfMessage()


def test_http10_defaults_to_close() -> None:
    (head, _) = request(b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(head, RequestHead)
    assert head.version == b"1.0"
    assert not head.keep_alive


def test_connection_close_clears_keep_alive() -> None:
    (head, _) = request(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert isinstance(head, RequestHead)
    assert not head.keep_alive


def test_close_between_requests_is_a_clean_close() -> None:
    assert request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"")[-1] == ConnectionClosed()


def test_close_mid_request_is_an_error() -> None:
    assert status_of(request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nab", b""))


def test_websocket_upgrade_pauses_and_detaches_the_bytes_after_it() -> None:
    parser = RequestParser(Limits())
    events = feed(
        parser,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00",
    )
    head = events[0]
    assert isinstance(head, RequestHead)
    assert head.upgrade
    assert events[1:] == [EndOfMessage(), PAUSED]
    parser.feed(b"more")
    assert parser.detach() == b"\x81\x00"


def test_declined_upgrade_resumes_http_with_the_bytes_after_it() -> None:
    parser = RequestParser(Limits())
    feed(
        parser,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    parser.resume()
    head, end = drain(parser)[:2]
    assert isinstance(head, RequestHead)
    assert head.target == b"/next"
    assert end == EndOfMessage()


def response(*chunks: bytes, method: bytes = b"GET") -> list[object]:
    return feed(ResponseParser(Limits(), request_method=method), *chunks)


def test_response_with_content_length() -> None:
    events = response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert (head.status, head.reason, head.framing) == (200, b"OK", Framing.LENGTH)
    assert body_of(events) == b"hello"
    assert events[-1] == EndOfMessage()


def test_chunked_response_is_dechunked() -> None:
    events = response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n",
    )
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head.framing is Framing.CHUNKED
    assert body_of(events) == b"abcde"
    assert events[-1] == EndOfMessage()


def test_response_without_length_reads_until_close() -> None:
    events = response(b"HTTP/1.1 200 OK\r\n\r\nsome", b" more", b"")
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head.framing is Framing.CLOSE
    assert body_of(events) == b"some more"
    assert events[-2:] == [EndOfMessage(), ConnectionClosed()]


def test_truncated_response_is_502() -> None:
    events = response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", b"")
    assert status_of(events) == 502
    assert status_of(response(b"")) == 502


def test_head_response_has_no_body_despite_content_length() -> None:
    events = response(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", method=b"HEAD")
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head.framing is Framing.NONE
    assert events[1] == EndOfMessage()


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses(status: int) -> None:
    events = response(b"HTTP/1.1 %d X\r\nContent-Length: 4\r\n\r\n" % status)
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head.framing is Framing.NONE
    assert events[1] == EndOfMessage()


def test_interim_response_precedes_the_final_one() -> None:
    events = response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    statuses = [e.status for e in events if isinstance(e, ResponseHead)]
    assert statuses == [100, 200]


def test_switching_protocols_pauses_with_the_tunnel_bytes() -> None:
    parser = ResponseParser(Limits(), request_method=b"GET")
    events = feed(
        parser,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nhi",
    )
    assert isinstance(events[0], ResponseHead)
    assert events[0].status == 101
    assert events[-1] is PAUSED
    assert parser.detach() == b"hi"


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 70_000 + b"\r\n\r\n",
    ],
)
def test_broken_responses_are_502(raw: bytes) -> None:
    assert status_of(response(raw)) == 502


def test_origin_form_and_absolute_form_targets() -> None:
    assert origin_form(b"/a/b?q=1") == (None, b"/a/b", b"/a/b?q=1")
    assert origin_form(b"http://h.localhost:8080/p?q") == (b"h.localhost:8080", b"/p", b"/p?q")
    assert origin_form(b"http://h.localhost") == (b"h.localhost", b"/", b"/")
    with pytest.raises(ProtocolError):
        origin_form(b"h.localhost:443")


@pytest.mark.parametrize(
    ("framing", "http11", "expected"),
    [
        (Framing.CHUNKED, True, Framing.CHUNKED),
        (Framing.CLOSE, True, Framing.CHUNKED),
        (Framing.CHUNKED, False, Framing.CLOSE),
        (Framing.CLOSE, False, Framing.CLOSE),
        (Framing.LENGTH, False, Framing.LENGTH),
        (Framing.NONE, True, Framing.NONE),
    ],
)
def test_relay_framing(framing: Framing, http11: bool, expected: Framing) -> None:
    assert relay_framing(framing, receiver_http11=http11) is expected


def test_framing_headers_set_chunking_and_drop_length() -> None:
    headers = [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5")]
    chunked = framing_headers(headers, Framing.CHUNKED, codings=None)
    assert chunked == [(b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"chunked")]
    assert framing_headers(headers, Framing.CLOSE, codings=None) == headers[:1]
    assert framing_headers(headers, Framing.LENGTH, codings=None) == headers


def test_chunk_encoding_round_trips_through_the_parser() -> None:
    wire = encode_request_head(b"POST", b"/", [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")])
    wire += encode_body(Framing.CHUNKED, b"x" * 300) + encode_body(Framing.CHUNKED, b"")
    wire += end_of_body(Framing.CHUNKED)
    assert body_of(request(wire)) == b"x" * 300


def test_error_response_is_complete_text() -> None:
    wire = error_response(404, "no app is routed at x", close=True)
    events = response(wire)
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head.status == 404
    assert head.reason == b"Not Found"
    assert (b"Connection", b"close") in head.headers
    assert body_of(events) == b"no app is routed at x\n"
