"""Sans-IO reading of the plainest message heads, for `edge.fastpath`, both ways.

Each reader takes a head only when its reading is beyond doubt, and then edits it
as bytes: the lines it must change are cut out or added, every other line is
relayed untouched and in order. Anything else returns None and goes to the general
parser (`edge.http`), which answers or forwards it by the full rules.

`read_request` takes:
  * a request line `GET|HEAD|DELETE|OPTIONS /origin-form HTTP/1.0|1.1` in visible
    ASCII, then header lines of token names and plain values (no obs-fold, no bare
    CR or LF, no control characters), at most `Limits.max_headers` of them;
  * exactly one non-blank Host without whitespace inside, no Content-Length,
    Transfer-Encoding or Upgrade (a body, or a protocol switch, is the general
    path's), and at most one of each header it edits, Connection naming only
    `close`/`keep-alive`.
  It applies `edge.headers.forward_request`'s rules: hop-by-hop lines (Connection,
  Keep-Alive, Proxy-Connection, TE, Trailer) are cut, X-Forwarded-*, Forwarded and
  X-Real-IP are replaced (appended to, or kept, only from a trusted proxy), a
  well-formed X-Request-Id is kept and any other replaced by the caller's fresh
  one, and the request line becomes HTTP/1.1.
  It takes only a target already in the normal form the general path routes and
  forwards (`edge.routes.routable_target`); one the general path would rewrite or
  refuse (dot segments, `//`, escapes to normalise, a backslash, `#`) is the general path's.

`parse_head` takes an HTTP/1.x response head with a reason phrase, status 200-599
other than 204/304, the same plain lines, exactly one Content-Length line and no
Transfer-Encoding. It cuts the hop-by-hop lines and
those named in Connection, and notices a session cookie.
"""

from __future__ import annotations

import re

from edge import headers as hdr
from edge.headers import _REQUEST_ID, HOP_BY_HOP, STICKY_COOKIE, Headers
from edge.http import Framing, Limits, RequestHead
from edge.routes import UNUSUAL_TARGET, PathError, routable_target

# Possessive quantifiers (`*+`, `++`) throughout: no pattern here needs backtracking,
# and telling the regex engine so makes a match a third cheaper.
_LINES = rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]++:[\t\x20-\x7e\x80-\xff]*+\r\n)*+)\r\n"
FAST_METHODS = (b"GET", b"HEAD", b"DELETE", b"OPTIONS")  # the methods `read_request` takes
_METHOD = b"(" + b"|".join(FAST_METHODS) + b")"
_REQUEST_HEAD = re.compile(_METHOD + rb" (/[!-~]*+) HTTP/1\.([01])\r\n" + _LINES)
_RESPONSE_HEAD = re.compile(
    rb"HTTP/1\.([01]) ([2-5][0-9][0-9]) ([\t\x20-\x7e\x80-\xff]++)\r\n" + _LINES
)

# The commonest heads in one regex each: an HTTP/1.1 request whose only header of
# note is Host, and an HTTP/1.1 response whose only ones are one Content-Length and
# perhaps `Connection: keep-alive` and Keep-Alive (to cut). Anything else is read
# line by line below.
_PLAIN_LINE = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]++:[\t\x20-\x7e\x80-\xff]*+\r\n"
_NOT_REQUEST_NAME = (
    rb"(?!(?i:host|connection|keep-alive|proxy-connection|te|trailer|upgrade|content-length|"
    rb"transfer-encoding|x-forwarded-for|x-forwarded-proto|x-forwarded-host|x-request-id|"
    rb"forwarded|x-real-ip):)"
)
# A target in normal form (`edge.routes`) but perhaps for its escapes: segments that
# are not empty, do not start with a dot and hold no `\` or `#`; a query without `#`.
_SEGMENT = rb"[^\x00-\x20\x7f-\xff#./?\\][^\x00-\x20\x7f-\xff#/?\\]*+"
_NORMAL_TARGET = (
    rb"(/(?:" + _SEGMENT + rb"(?:/" + _SEGMENT + rb")*+/?)?"
    rb"(?:\?[^\x00-\x20\x7f-\xff#]*+)?)"
)
_SIMPLE_REQUEST = re.compile(
    _METHOD + b" " + _NORMAL_TARGET + rb" HTTP/1\.1\r\n"
    rb"(?:" + _NOT_REQUEST_NAME + _PLAIN_LINE + rb")*+"
    rb"(?i:host):[\t ]*+([!-~]++)[\t ]*+\r\n"
    rb"(?:" + _NOT_REQUEST_NAME + _PLAIN_LINE + rb")*+\r\n"
)
_OTHER_RESPONSE_LINES = (
    rb"(?:(?!(?i:connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade|"
    rb"content-length|set-cookie):)"
    + _PLAIN_LINE
    + rb"|(?i:connection:[\t ]*+keep-alive[\t ]*+|keep-alive:[\t\x20-\x7e]*+)\r\n)*+"
)
_SIMPLE_RESPONSE = re.compile(
    rb"HTTP/1\.1 ([2-5][0-9][0-9]) ([\t\x20-\x7e\x80-\xff]++)\r\n("
    + _OTHER_RESPONSE_LINES
    + rb"(?i:content-length):[\t ]*+([0-9]++)[\t ]*+\r\n"
    + _OTHER_RESPONSE_LINES
    + rb")\r\n"
)
_KEEP_ALIVE_LINES = re.compile(rb"\r\n(?i:connection|keep-alive):[^\r]*")

# The header names each reader must look at, found in the lower-cased lines.
_REQUEST_NAMES = re.compile(
    rb"\n(host|connection|keep-alive|proxy-connection|te|trailer|upgrade|content-length|"
    rb"transfer-encoding|x-forwarded-for|x-forwarded-proto|x-forwarded-host|x-request-id|"
    rb"forwarded|x-real-ip):"
)
_RESPONSE_NAMES = re.compile(
    rb"\n(connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade|"
    rb"content-length):"
)
# Left to the general path: framing, a protocol switch, and Proxy-Connection, which
# llhttp reads as Connection.
_REFUSED = frozenset({b"upgrade", b"content-length", b"transfer-encoding", b"proxy-connection"})
_FORWARDED = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-real-ip"}
)
_CONNECTION_TOKENS = frozenset({b"close", b"keep-alive", b""})

# A line found: (lower-cased name, value, start, end); lines[start:end] is the whole
# line with its CRLF.
_Line = tuple[bytes, bytes, int, int]


def _find(lines: bytes, names: re.Pattern[bytes]) -> list[_Line]:
    """Every line of `lines` whose name `names` matches, in order."""
    low = b"\n" + lines.lower()  # a name starts a line where "\n" + name is in `low`
    found: list[_Line] = []
    at = 0
    for name in names.findall(low):
        start = low.find(b"\n" + name + b":", at)  # where the line starts in `lines`
        end = lines.find(b"\r\n", start) + 2
        found.append((name, lines[start + len(name) + 1 : end - 2].strip(b" \t"), start, end))
        at = end
    return found


def _cut(lines: bytes, cuts: list[tuple[int, int]]) -> bytes:
    """`lines` without the (start, end) spans in `cuts`, which are in order."""
    if not cuts:
        return lines
    pieces, at = [], 0
    for start, end in cuts:
        pieces.append(lines[at:start])
        at = end
    pieces.append(lines[at:])
    return b"".join(pieces)


class PlainRequest:
    """A request head `read_request` took, and the head to send upstream for it."""

    __slots__ = (
        "host",
        "http11",
        "keep_alive",
        "method",
        "path",
        "pinned",
        "request_id",
        "size",
        "target",
        "upstream",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        http11: bool,
        keep_alive: bool,
        host: bytes,
        upstream: bytes,
        request_id: bytes,
        pinned: bytes | None,
        size: int,
    ) -> None:
        self.method = method
        self.target = target
        query = target.find(b"?")
        self.path = target if query < 0 else target[:query]
        self.http11 = http11
        self.keep_alive = keep_alive
        self.host = host
        self.upstream = upstream  # the whole head to send the backend
        self.request_id = request_id
        self.pinned = pinned  # the sticky cookie's instance, if the client sent one
        self.size = size  # bytes of the received head, final CRLF included


def read_request(
    data: bytes, limits: Limits, *, client_ip: bytes, scheme: bytes, trusted: bool, fresh_id: bytes
) -> PlainRequest | None:
    """Read the request head at the start of `data` (which holds all of it), or None if it
    is not plain. `fresh_id` is the X-Request-Id to use if the client's will not do."""
    head = _SIMPLE_REQUEST.match(data)
    if head is not None:
        size = head.end()
        if data.count(b"\n", 0, size) <= limits.max_headers + 2 and (
            data.find(STICKY_COOKIE, 0, size) < 0
        ):
            method, target, host = head.group(1, 2, 3)
            if b"%" in target and not _unchanged(target):  # (the pattern let escapes by)
                return None
            # (`_forwarding_lines` for an untrusted peer, inline: the commonest head)
            upstream = data[: size - 2] + (
                b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: %b\r\n"
                b"X-Real-IP: %b\r\nForwarded: %b\r\nX-Request-Id: %b\r\n\r\n"
                % (
                    client_ip,
                    scheme,
                    host,
                    client_ip,
                    hdr.forwarded_element(client_ip, scheme, host),
                    fresh_id,
                )
            )
            return PlainRequest(method, target, True, True, host, upstream, fresh_id, None, size)
    return _read_other(data, limits, client_ip, scheme, trusted, fresh_id)


def _read_other(
    data: bytes, limits: Limits, client_ip: bytes, scheme: bytes, trusted: bool, fresh_id: bytes
) -> PlainRequest | None:
    """`read_request` for a head the one-regex reading did not take."""
    head = _REQUEST_HEAD.match(data)
    if head is None:
        return None
    method, target, minor, lines = head.group(1, 2, 3, 4)
    if lines.count(b"\n") > limits.max_headers or not _normal(target):
        return None
    read = _request_lines(lines)
    if read is None:
        return None
    found, close, keep = read
    host = found[b"host"][1]
    request_id, cuts, given = _request_edits(found, trusted)
    added = _forwarding_lines(client_ip, scheme, host, given)
    if request_id is None:
        request_id = fresh_id
        added += b"X-Request-Id: %b\r\n" % fresh_id
    size, http11 = head.end(), minor == b"1"
    if not cuts and http11:
        upstream = data[: size - 2] + added + b"\r\n"
    else:
        upstream = b"%b %b HTTP/1.1\r\n%b%b\r\n" % (method, target, _cut(lines, cuts), added)
    pinned = None
    if STICKY_COOKIE in lines:
        pinned = hdr.cookie(_header_list(lines), STICKY_COOKIE) or None
    return PlainRequest(
        method,
        target,
        http11,
        not close and (http11 or keep),
        host,
        upstream,
        request_id,
        pinned,
        size,
    )


def _request_lines(lines: bytes) -> tuple[dict[bytes, _Line], bool, bool] | None:
    """The lines `read_request` must look at, by name, and whether Connection says close
    and keep-alive; None if they are not plain: a repeat, a body's framing or a protocol
    switch, a blank or odd Host, or a Connection naming other headers (the general path
    drops those) or both close and keep-alive (which llhttp reads its own way)."""
    found: dict[bytes, _Line] = {}
    for line in _find(lines, _REQUEST_NAMES):
        name = line[0]
        if name in found or name in _REFUSED:
            return None
        found[name] = line
    host = found.get(b"host")
    if host is None or not host[1] or b" " in host[1] or b"\t" in host[1]:
        return None
    connection = found.get(b"connection")
    tokens = {t.strip() for t in connection[1].lower().split(b",")} if connection else set()
    close, keep = b"close" in tokens, b"keep-alive" in tokens
    if not tokens <= _CONNECTION_TOKENS or (close and keep):
        return None
    return found, close, keep


def _request_edits(
    found: dict[bytes, _Line], trusted: bool
) -> tuple[bytes | None, list[tuple[int, int]], dict[bytes, bytes]]:
    """What becomes of the lines `_request_lines` found: (the client's X-Request-Id if it
    is kept, the spans to cut, the X-Forwarded-* values to extend: a trusted proxy's)."""
    request_id: bytes | None = None
    given = found.get(b"x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given[1]):
        request_id = given[1]
    cuts = [
        (start, end)
        for name, _, start, end in found.values()
        if name != b"host" and (name != b"x-request-id" or request_id is None)
    ]
    forwarded = {name: found[name][1] for name in _FORWARDED if name in found} if trusted else {}
    return request_id, cuts, forwarded


def _forwarding_lines(
    client_ip: bytes, scheme: bytes, host: bytes, given: dict[bytes, bytes]
) -> bytes:
    """The X-Forwarded-*, X-Real-IP and Forwarded lines for this hop, extending those a
    trusted proxy sent (`given`, by lower-cased name; empty for anyone else)."""
    chain, prior = given.get(b"x-forwarded-for"), given.get(b"forwarded")
    hops = hdr.forwarded_element(client_ip, scheme, host)
    return (
        b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: %b\r\n"
        b"X-Real-IP: %b\r\nForwarded: %b\r\n"
    ) % (
        chain + b", " + client_ip if chain else client_ip,
        given.get(b"x-forwarded-proto") or scheme,
        given.get(b"x-forwarded-host") or host,
        given.get(b"x-real-ip") or client_ip,
        prior + b", " + hops if prior else hops,
    )


def _normal(target: bytes) -> bool:
    """Whether the general path would route and forward `target` unchanged."""
    return UNUSUAL_TARGET.search(target) is None or _unchanged(target)


def _unchanged(target: bytes) -> bool:
    """Whether `edge.routes.routable_target` forwards `target` as it is."""
    try:
        return routable_target(target)[1] == target
    except PathError:
        return False


def _header_list(lines: bytes) -> Headers:
    """Header `lines` (each ending in CRLF) as the general parser's (name, value) pairs."""
    headers: Headers = []
    for line in lines.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    return headers


def request_head(data: bytes, plain: PlainRequest) -> RequestHead:
    """The general parser's view of a head `read_request` took (for the general path's
    error answers and unusual responses)."""
    first = data.find(b"\r\n")
    return RequestHead(
        method=plain.method,
        target=plain.target,
        version=b"1.1" if plain.http11 else b"1.0",
        headers=_header_list(data[first + 2 : plain.size - 2]),
        keep_alive=plain.keep_alive,
        framing=Framing.NONE,
        upgrade=False,
    )


# What `parse_head` returns: (status, head to relay without its final CRLF,
# body length, whether the backend keeps the connection, offset of the body,
# whether it sets a session cookie).
Parsed = tuple[int, bytes, int, bool, int, bool]


def parse_head(data: bytes, head_request: bool, limits: Limits) -> Parsed | None:
    """Read the response head at the start of `data`, or None if it is not plain."""
    head = _SIMPLE_RESPONSE.match(data)
    if head is not None:
        status_bytes, reason, lines, digits = head.group(1, 2, 3, 4)
        status = int(status_bytes)
        size = head.end()
        if (
            status not in (204, 304)
            and size - 4 <= limits.max_header_bytes
            and lines.count(b"\n") <= limits.max_headers
        ):
            out = b"HTTP/1.1 %b %b%b" % (
                status_bytes,
                reason,
                _KEEP_ALIVE_LINES.sub(b"", b"\r\n" + lines),
            )
            return status, out, 0 if head_request else int(digits), True, size, False
    return _parse_other(data, head_request, limits)


def _parse_other(data: bytes, head_request: bool, limits: Limits) -> Parsed | None:
    """`parse_head` for a head the one-regex reading did not take."""
    head = _RESPONSE_HEAD.match(data)
    if head is None or head.end() - 4 > limits.max_header_bytes:
        return None
    minor, status_bytes, reason, lines = head.group(1, 2, 3, 4)
    status = int(status_bytes)
    if status in (204, 304) or lines.count(b"\n") > limits.max_headers:
        return None
    read = _response_lines(lines)
    if read is None:
        return None
    length, named, cuts = read
    keep_alive = b"close" not in named and (minor == b"1" or b"keep-alive" in named)
    if named <= _CONNECTION_TOKENS:
        kept = _cut(lines, cuts)
    elif b"content-length" in named:
        return None
    else:
        kept = _without(lines, named)
    session = b"set-cookie:" in lines.lower() and hdr.sets_session_cookie(_header_list(lines))
    out = b"HTTP/1.1 %b %b\r\n%b" % (status_bytes, reason, kept)
    return status, out, 0 if head_request else int(length), keep_alive, head.end(), session


def _response_lines(lines: bytes) -> tuple[bytes, set[bytes], list[tuple[int, int]]] | None:
    """(Content-Length, the tokens Connection names, the hop-by-hop spans to cut) of
    response header `lines`; None if they are not plain: no Content-Length, a repeated
    one (llhttp refuses even a repeat of the same value), Transfer-Encoding,
    Proxy-Connection, or Connection naming both close and keep-alive."""
    length: bytes | None = None
    named: set[bytes] = set()
    cuts: list[tuple[int, int]] = []
    for name, value, start, end in _find(lines, _RESPONSE_NAMES):
        if name == b"content-length":
            if length is not None:
                return None
            length = value
        elif name in (b"transfer-encoding", b"proxy-connection"):
            return None
        else:
            if name == b"connection":
                named.update(t.strip() for t in value.lower().split(b","))
            cuts.append((start, end))
    if length is None or not length.isdigit():
        return None
    if b"close" in named and b"keep-alive" in named:
        return None  # llhttp reads this its own way
    return length, named, cuts


def _without(lines: bytes, named: set[bytes]) -> bytes:
    """Header `lines` without hop-by-hop ones and those in `named`."""
    kept = []
    for line in lines.split(b"\r\n")[:-1]:
        name = line.partition(b":")[0].lower()
        if name not in HOP_BY_HOP and name not in named:
            kept.append(line + b"\r\n")
    return b"".join(kept)
