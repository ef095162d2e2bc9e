"""The fast path's response-head reader, with raw bytes: it reads only heads beyond
doubt and hands everything else to the general parser (None)."""

from __future__ import annotations

import pytest

from edge.fasthead import parse_head
from edge.http import Limits

LIMITS = Limits(64 * 1024, 100, None)


def test_a_plain_head_is_relayed_without_hop_by_hop_headers() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nKeep-Alive: timeout=5\r\n"
           b"Connection: X-Secret\r\nX-Secret: 1\r\nContent-Length: 5\r\n\r\nhello")
    parsed = parse_head(raw, False, LIMITS)
    assert parsed is not None
    status, head, length, keep_alive, body_at, session = parsed
    assert (status, length, keep_alive, session) == (200, 5, True, False)
    assert head == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    assert raw[body_at:] == b"hello"


def test_head_requests_have_no_body_and_http10_closes_by_default() -> None:
    raw = b"HTTP/1.0 200 OK\r\nContent-Length: 99\r\n\r\n"
    parsed = parse_head(raw, True, LIMITS)
    assert parsed is not None and parsed[2] == 0 and parsed[3] is False
    assert parsed[1].startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_session_cookie_is_noticed() -> None:
    raw = b"HTTP/1.1 200 OK\r\nSet-Cookie: JSESSIONID=abc; Path=/\r\nContent-Length: 0\r\n\r\n"
    parsed = parse_head(raw, False, LIMITS)
    assert parsed is not None and parsed[5] is True


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",                         # head not complete
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",              # chunked
    b"HTTP/1.1 200 OK\r\n\r\n",                                            # no length
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",  # two lengths
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",                      # not a number
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",               # no body by rule
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n",      # 1xx
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",         # obs-fold
    b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n",        # not a token
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",                             # bare LF
    b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",                         # not HTTP/1.x
    b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\n",
])
def test_anything_in_doubt_goes_to_the_general_parser(raw: bytes) -> None:
    assert parse_head(raw, False, LIMITS) is None


def test_a_head_over_the_header_limit_goes_to_the_general_parser() -> None:
    raw = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100 + b"\r\nContent-Length: 0\r\n\r\n"
    assert parse_head(raw, False, Limits(64, 100, None)) is None
