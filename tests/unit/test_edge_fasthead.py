"""The fast path's response-head reader, with raw bytes: it reads only heads beyond
doubt and hands everything else to the general parser (None)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import headers as hdr
from edge.fasthead import parse_head, read_request
from edge.http import (
    Framing,
    Limits,
    ProtocolError,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
)
from edge.routes import PathError, routable_target

LIMITS = Limits(64 * 1024, 100, None)


def test_a_plain_head_is_relayed_without_hop_by_hop_headers() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nKeep-Alive: timeout=5\r\n"
        b"Connection: X-Secret\r\nX-Secret: 1\r\nContent-Length: 5\r\n\r\nhello"
    )
    parsed = parse_head(raw, False, LIMITS)
    assert parsed is not None
    status, head, length, keep_alive, body_at, session = parsed
    assert (status, length, keep_alive, session) == (200, 5, True, False)
    assert head == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    assert raw[body_at:] == b"hello"


def test_head_requests_have_no_body_and_http10_closes_by_default() -> None:
    raw = b"HTTP/1.0 200 OK\r\nContent-Length: 99\r\n\r\n"
    parsed = parse_head(raw, True, LIMITS)
    assert parsed is not None
    assert parsed[2] == 0
    assert parsed[3] is False
    assert parsed[1].startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_session_cookie_is_noticed() -> None:
    raw = b"HTTP/1.1 200 OK\r\nSet-Cookie: JSESSIONID=abc; Path=/\r\nContent-Length: 0\r\n\r\n"
    parsed = parse_head(raw, False, LIMITS)
    assert parsed is not None
    assert parsed[5] is True


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",  # head not complete
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",  # chunked
        b"HTTP/1.1 200 OK\r\n\r\n",  # no length
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",  # two lengths
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",  # not a number
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",  # no body by rule
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n",  # 1xx
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",  # obs-fold
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n",  # not a token
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",  # bare LF
        b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",  # not HTTP/1.x
        b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\n",
    ],
)
def test_anything_in_doubt_goes_to_the_general_parser(raw: bytes) -> None:
    assert parse_head(raw, False, LIMITS) is None


def test_a_head_over_the_header_limit_goes_to_the_general_parser() -> None:
    raw = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100 + b"\r\nContent-Length: 0\r\n\r\n"
    assert parse_head(raw, False, Limits(64, 100, None)) is None


# The fast readers against the general path's rules: for any head they take, what they
# send on must be what the general parser and `edge.headers` would have sent.

NAMES = [
    "Host",
    "host",
    "HOST",
    "Accept",
    "Cookie",
    "Connection",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Proxy-Connection",
    "Upgrade",
    "Content-Length",
    "Transfer-Encoding",
    "X-Forwarded-For",
    "x-forwarded-proto",
    "X-Forwarded-Host",
    "X-Request-Id",
    "Forwarded",
    "forwarded",
    "X-Real-IP",
    "x-real-ip",
    "Set-Cookie",
    "X-Other",
    "Bad Name",
    "Content-Type",
    "Date",
]
VALUES = [
    "a.localhost",
    "keep-alive",
    "close",
    "Keep-Alive, close",
    "x-other",
    "5",
    "0",
    "chunked",
    "10.0.0.1",
    "https",
    "abc-123",
    "bad id!",
    "JSESSIONID=1",
    " spaced ",
    "",
    "a\tb",
    "text/plain",
    'for=10.0.0.1;host="evil:1", for=unknown',
    "::1",
]
# Targets with everything the general path normalises or refuses (edge.routes).
TARGET_PARTS = [
    "p",
    "api",
    "",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    "%2f",
    "%41",
    "%7E",
    "%c3%a9",
    "%C3%A9",
    "%2F",
    "a%20b",
    "x/",
    "%zz",
    "\\",
    "x#y",
    ".well-known",
    "a..",
    "p?q=1",
    "p?next=/../x%2e",
]
targets = st.lists(st.sampled_from(TARGET_PARTS), min_size=1, max_size=5).map(
    lambda parts: b"/" + "/".join(parts).encode()
)
header_lists = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=8)


@st.composite
def with_one(draw: st.DrawFn, name: str, value: str) -> list[tuple[str, str]]:
    """Random header lines, mostly with one `name: value` line among them somewhere."""
    headers = draw(header_lists)
    if draw(st.integers(0, 4)):
        headers.insert(draw(st.integers(0, len(headers))), (name, value))
    return headers


def general_request(raw: bytes) -> RequestHead | None:
    parser = RequestParser(LIMITS)
    parser.feed(raw)
    try:
        event = parser.next_event()
    except ProtocolError:
        return None
    return event if isinstance(event, RequestHead) else None


def wire(headers: list[tuple[str, str]]) -> bytes:
    """Header lines as sent."""
    return b"".join(b"%b: %b\r\n" % (name.encode(), value.encode()) for name, value in headers)


def as_set(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Header lines as a sorted list, names lower-cased and values without surrounding
    whitespace (which is not part of a field value, RFC 9110 5.5; llhttp keeps some)."""
    return sorted((name.lower(), value.strip(b" \t")) for name, value in headers)


METHODS = st.sampled_from([b"GET", b"HEAD", b"DELETE", b"POST"])
VERSIONS = st.sampled_from([b"1.1", b"1.0"])
CLIENT_IPS = st.sampled_from(["10.9.9.9", "::1"])
HOSTS = st.sampled_from([b"a.localhost", b"a.localhost:8080", b"[::1]:8080"])
# Lines the fast reader can take, with the forwarding ones it must rewrite.
FORWARDING_NAMES = [
    "Host",
    "Accept",
    "X-Other",
    "Forwarded",
    "forwarded",
    "X-Real-IP",
    "x-real-ip",
    "X-Forwarded-For",
    "x-forwarded-proto",
    "X-Forwarded-Host",
]
forwarding_lists = st.lists(
    st.tuples(st.sampled_from(FORWARDING_NAMES), st.sampled_from(VALUES)), max_size=5
)


@settings(max_examples=600)
@given(
    METHODS,
    VERSIONS,
    with_one("Host", "a.localhost"),
    st.booleans(),
    CLIENT_IPS,
    st.one_of(st.just(b"/p?q=1"), targets),
    HOSTS,
)
def test_a_request_the_fast_reader_takes_is_forwarded_as_the_general_path_would(
    method: bytes,
    version: bytes,
    headers: list[tuple[str, str]],
    trusted: bool,
    client_ip: str,
    target: bytes,
    host: bytes,
) -> None:
    check_request(method, version, headers, trusted, client_ip, target, host)


@settings(max_examples=400)
@given(VERSIONS, forwarding_lists, st.booleans(), CLIENT_IPS, HOSTS)
def test_forwarding_headers_are_rewritten_as_the_general_path_would(
    version: bytes, headers: list[tuple[str, str]], trusted: bool, client_ip: str, host: bytes
) -> None:
    check_request(
        b"GET", version, [("Host", "a.localhost"), *headers], trusted, client_ip, b"/p", host
    )


def check_request(
    method: bytes,
    version: bytes,
    headers: list[tuple[str, str]],
    trusted: bool,
    client_ip: str,
    target: bytes,
    host: bytes,
) -> None:
    """If the fast reader takes this head, it sends on what the general path would."""
    lines = wire(headers).replace(b"a.localhost", host)
    raw = b"%b %b HTTP/%b\r\n%b\r\n" % (method, target, version, lines)
    plain = read_request(
        raw,
        LIMITS,
        client_ip=client_ip.encode(),
        scheme=b"http",
        trusted=trusted,
        fresh_id=b"fresh",
    )
    general = general_request(raw)
    if plain is None:
        return
    assert general is not None, "the fast reader took a head the general parser refuses"
    assert general.framing is Framing.NONE
    assert not general.upgrade
    assert (plain.method, plain.target, plain.keep_alive) == (
        general.method,
        general.target,
        general.keep_alive,
    )
    # the general path would route by the same path and forward the same target
    try:
        assert routable_target(general.target) == (plain.path, plain.target)
    except PathError:
        raise AssertionError("the fast reader took a target the general path refuses") from None
    assert plain.size == len(raw)
    hosts = [v.strip(b" \t") for n, v in general.headers if n.lower() == b"host"]
    assert hosts == [plain.host]
    expected, request_id = hdr.forward_request(
        [(n, v.strip(b" \t")) for n, v in general.headers],
        host=plain.host,
        client_ip=client_ip,
        proto="http",
        trusted=trusted,
        fresh_id=b"fresh",
        websocket=False,
    )
    assert plain.request_id == request_id
    sent = general_request(plain.upstream)
    assert sent is not None
    assert sent.version == b"1.1"
    assert (sent.method, sent.target) == (general.method, general.target)
    assert as_set(sent.headers) == as_set(expected)


@settings(max_examples=400)
@given(
    st.sampled_from([b"1.1", b"1.0"]),
    st.sampled_from([200, 404, 204, 503]),
    with_one("Content-Length", "4"),
    st.booleans(),
)
def test_a_response_the_fast_reader_takes_is_relayed_as_the_general_path_would(
    version: bytes, status: int, headers: list[tuple[str, str]], head_request: bool
) -> None:
    lines = wire(headers)
    raw = b"HTTP/%b %d Reason\r\n%b\r\nbody" % (version, status, lines)
    parsed = parse_head(raw, head_request, LIMITS)
    if parsed is None:
        return
    parser = ResponseParser(LIMITS, request_method=b"HEAD" if head_request else b"GET")
    parser.feed(raw)
    general = parser.next_event()
    assert isinstance(general, ResponseHead)
    status_, head, length, keep_alive, body_at, session = parsed
    assert status_ == general.status
    assert raw[body_at:] == b"body"
    assert keep_alive == general.keep_alive
    if not head_request:
        assert general.framing is Framing.LENGTH
        (value,) = {v.strip() for n, v in general.headers if n.lower() == b"content-length"}
        assert length == int(value)
    kept, _, sets_session = hdr.forward_response(general.headers)
    assert session == sets_session
    relayed = ResponseParser(LIMITS, request_method=b"GET")
    relayed.feed(head + b"\r\n")
    again = relayed.next_event()
    assert isinstance(again, ResponseHead)
    assert again.version == b"1.1"
    assert as_set(again.headers) == as_set(kept)
