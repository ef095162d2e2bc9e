"""Header rewriting for proxied messages (pure functions over header lists)."""

from __future__ import annotations

import pytest

from edge import headers as hdr


def names(headers: hdr.Headers) -> list[bytes]:
    return [name.lower() for name, _ in headers]


def test_strip_hop_by_hop_removes_the_standard_set_and_keeps_the_rest() -> None:
    headers = [
        (b"Host", b"a"),
        (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-Sum"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"h2c"),
        (b"Accept", b"*/*"),
    ]
    assert hdr.strip_hop_by_hop(headers) == [(b"Host", b"a"), (b"Accept", b"*/*")]


def test_strip_hop_by_hop_removes_headers_named_in_connection() -> None:
    headers = [
        (b"Connection", b"close, X-Secret ,x-other"),
        (b"X-Secret", b"1"),
        (b"X-Other", b"2"),
    ]
    headers.append((b"X-Kept", b"3"))
    assert hdr.strip_hop_by_hop(headers) == [(b"X-Kept", b"3")]


def test_websocket_handshake_survives_when_asked() -> None:
    headers = [
        (b"Host", b"a"),
        (b"Connection", b"keep-alive, Upgrade"),
        (b"Upgrade", b"websocket"),
        (b"Sec-WebSocket-Key", b"k"),
    ]
    kept = hdr.strip_hop_by_hop(headers, keep_websocket=True)
    assert kept == [
        (b"Host", b"a"),
        (b"Sec-WebSocket-Key", b"k"),
        (b"Connection", b"Upgrade"),
        (b"Upgrade", b"websocket"),
    ]
    assert names(hdr.strip_hop_by_hop(headers)) == [b"host", b"sec-websocket-key"]


def test_non_websocket_upgrade_is_stripped_even_when_keeping_websockets() -> None:
    headers = [(b"Connection", b"Upgrade"), (b"Upgrade", b"h2c")]
    assert hdr.strip_hop_by_hop(headers, keep_websocket=True) == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"Connection", b"Upgrade"), (b"Upgrade", b"WebSocket")], True),
        ([(b"connection", b"keep-alive, upgrade"), (b"upgrade", b"websocket")], True),
        ([(b"Upgrade", b"websocket")], False),
        ([(b"Connection", b"Upgrade"), (b"Upgrade", b"h2c")], False),
    ],
)
def test_is_websocket_upgrade(headers: hdr.Headers, expected: bool) -> None:
    assert hdr.is_websocket_upgrade(headers) is expected


SPOOFED = [
    (b"X-Forwarded-For", b"10.0.0.1"),
    (b"x-forwarded-proto", b"https"),
    (b"X-Forwarded-Host", b"evil"),
    (b"Forwarded", b"for=10.0.0.1;host=evil"),
    (b"Accept", b"*/*"),
    (b"x-real-ip", b"10.0.0.1"),
]


def forward(
    headers: hdr.Headers,
    *,
    client_ip: str = "192.0.2.7",
    proto: str = "http",
    host: bytes = b"a.localhost",
    trusted: bool = False,
) -> tuple[hdr.Headers, bytes]:
    """`forward_request` for a plain (not websocket) request, with a fresh id "fresh"."""
    return hdr.forward_request(
        headers,
        host=host,
        client_ip=client_ip,
        proto=proto,
        trusted=trusted,
        fresh_id=b"fresh",
        websocket=False,
    )


def test_forwarding_replaces_what_an_untrusted_peer_claims() -> None:
    out, _ = forward(SPOOFED)
    assert out == [
        (b"Accept", b"*/*"),
        (b"Host", b"a.localhost"),
        (b"X-Forwarded-For", b"192.0.2.7"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"a.localhost"),
        (b"X-Real-IP", b"192.0.2.7"),
        (b"Forwarded", b"for=192.0.2.7;proto=http;host=a.localhost"),
        (b"X-Request-Id", b"fresh"),
    ]


def test_forwarding_appends_to_a_trusted_proxy_chain() -> None:
    out, _ = forward(SPOOFED, trusted=True)
    assert out == [
        (b"Accept", b"*/*"),
        (b"Host", b"a.localhost"),
        (b"X-Forwarded-For", b"10.0.0.1, 192.0.2.7"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"evil"),
        (b"X-Real-IP", b"10.0.0.1"),
        (b"Forwarded", b"for=10.0.0.1;host=evil, for=192.0.2.7;proto=http;host=a.localhost"),
        (b"X-Request-Id", b"fresh"),
    ]


def test_a_trusted_proxy_without_forwarded_or_x_real_ip_gets_the_edges_own() -> None:
    out, _ = forward([(b"Forwarded", b" "), (b"X-Real-IP", b"")], proto="https", trusted=True)
    assert hdr.get_all(out, b"x-real-ip") == [b"192.0.2.7"]
    assert hdr.get_all(out, b"forwarded") == [b"for=192.0.2.7;proto=https;host=a.localhost"]


def test_several_forwarded_lines_from_a_trusted_proxy_become_one_list() -> None:
    given = [(b"Forwarded", b"for=1.1.1.1"), (b"forwarded", b"for=2.2.2.2, for=3.3.3.3")]
    out, _ = forward(given, client_ip="10.0.0.9", host=b"h", trusted=True)
    assert hdr.get_all(out, b"forwarded") == [
        b"for=1.1.1.1, for=2.2.2.2, for=3.3.3.3, for=10.0.0.9;proto=http;host=h"
    ]


@pytest.mark.parametrize(
    ("client_ip", "proto", "host", "expected"),
    [
        (b"192.0.2.7", b"http", b"a.localhost", b"for=192.0.2.7;proto=http;host=a.localhost"),
        # a port makes the host a quoted-string (":" is not a token character)
        (
            b"192.0.2.7",
            b"https",
            b"a.localhost:8443",
            b'for=192.0.2.7;proto=https;host="a.localhost:8443"',
        ),
        # IPv6 is bracketed and quoted (RFC 7239 section 6)
        (b"::1", b"http", b"a", b'for="[::1]";proto=http;host=a'),
        (
            b"2001:db8::7",
            b"http",
            b"[2001:db8::1]:80",
            b'for="[2001:db8::7]";proto=http;host="[2001:db8::1]:80"',
        ),
        # quotes and backslashes inside a quoted-string are escaped
        (b"10.0.0.1", b"http", b'a"b\\c', b'for=10.0.0.1;proto=http;host="a\\"b\\\\c"'),
        (b"", b"http", b"a", b"for=unknown;proto=http;host=a"),
        # a Host too long to keep in the cache is quoted the same way
        (
            b"10.0.0.1",
            b"http",
            b"a" * 400 + b":1",
            b'for=10.0.0.1;proto=http;host="%b:1"' % (b"a" * 400),
        ),
    ],
)
def test_forwarded_element_quotes_what_is_not_a_token(
    client_ip: bytes, proto: bytes, host: bytes, expected: bytes
) -> None:
    assert hdr.forwarded_element(client_ip, proto, host) == expected


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        (b"a=1; __foundry_instance=web-0-x; b=2", b"web-0-x"),
        (b"__foundry_instance_not=1", None),
        (b"x=__foundry_instance=2", None),
    ],
)
def test_cookie_finds_the_named_cookie(cookie: bytes, expected: bytes | None) -> None:
    assert hdr.cookie([(b"Cookie", cookie)], hdr.STICKY_COOKIE) == expected


@pytest.mark.parametrize(
    ("set_cookie", "expected"),
    [
        (b"JSESSIONID=abc; Path=/", True),
        (b"session=.eJw; HttpOnly", True),
        (b"my_app_session=1", True),
        (b"theme=dark", False),
    ],
)
def test_session_cookies_are_recognised(set_cookie: bytes, expected: bool) -> None:
    assert hdr.sets_session_cookie([(b"Set-Cookie", set_cookie)]) is expected


def test_forwarding_without_prior_chain() -> None:
    out, _ = forward([], client_ip="127.0.0.1", trusted=True)
    assert hdr.get(out, b"x-forwarded-for") == b"127.0.0.1"


def test_forwarding_does_not_mutate_its_input() -> None:
    headers = [(b"X-Forwarded-For", b"1.1.1.1")]
    forward(headers, client_ip="2.2.2.2")
    assert headers == [(b"X-Forwarded-For", b"1.1.1.1")]


def test_request_id_from_client_is_kept() -> None:
    out, request_id = forward([(b"X-Request-Id", b"abc-123")])
    assert request_id == b"abc-123"
    assert hdr.get_all(out, b"x-request-id") == [b"abc-123"]


@pytest.mark.parametrize(
    "given",
    [
        [],
        [(b"X-Request-Id", b"has space")],
        [(b"X-Request-Id", b"x" * 200)],
        [(b"X-Request-Id", b"a"), (b"x-request-id", b"b")],
    ],
)
def test_request_id_is_generated_when_missing_or_unfit(given: hdr.Headers) -> None:
    headers, request_id = forward(given)
    assert request_id == b"fresh"
    assert hdr.get_all(headers, b"x-request-id") == [b"fresh"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, b"chunked"),
        (b"chunked", b"chunked"),
        (b"gzip, Chunked", b"gzip, chunked"),
        (b"gzip", b"gzip, chunked"),
    ],
)
def test_chunked_coding_keeps_other_codings(given: bytes | None, expected: bytes) -> None:
    assert hdr.chunked_coding(given) == expected
