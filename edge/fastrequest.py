"""Sans-IO reading of the plainest request heads, for `edge.fastpath`.

`read_request` takes a request head only when its reading is beyond doubt, and
then builds the head to send upstream straight from the received bytes:

  * a request line `GET|HEAD|DELETE|OPTIONS /origin-form HTTP/1.0|1.1` in visible
    ASCII, header lines of token names and plain values (no obs-fold, no bare LF,
    no control characters), at most `Limits.max_headers` of them;
  * exactly one non-blank Host without whitespace inside;
  * no Content-Length, Transfer-Encoding or Upgrade (a body or a protocol switch is
    the general path's), and a Connection header naming only `close`/`keep-alive`.

Everything else returns None and goes to the general parser (`edge.http`), which
answers or forwards it by the full rules, byte for byte as before. For a head it
takes, the rules are `edge.headers.forward_request`'s: hop-by-hop headers
(Connection, Keep-Alive, Proxy-Connection, TE, Trailer) are cut out, X-Forwarded-*
is replaced (appended to and believed only from a trusted proxy), a well-formed
single X-Request-Id is kept and any other is replaced by `fresh_id`; every other
line goes upstream untouched, in order, after an HTTP/1.1 request line.
"""

from __future__ import annotations

import re

from edge.headers import _REQUEST_ID, STICKY_COOKIE, Headers
from edge.http import Framing, Limits, RequestHead

_REQUEST_LINE = re.compile(rb"(GET|HEAD|DELETE|OPTIONS) (/[!-~]*) HTTP/1\.([01])\r\n")
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
# The only request headers `read_request` must look at; the rest go upstream untouched.
_SPECIAL = re.compile(
    rb"^(host|connection|keep-alive|proxy-connection|te|trailer|upgrade|content-length|"
    rb"transfer-encoding|x-forwarded-for|x-forwarded-proto|x-forwarded-host|x-request-id):"
    rb"[\t ]*([^\r\n]*?)[\t ]*\r\n",
    re.IGNORECASE | re.MULTILINE,
)
_CUT = frozenset({b"keep-alive", b"proxy-connection", b"te", b"trailer"})
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_PIN = re.compile(rb"(?:^|[;\s])" + re.escape(STICKY_COOKIE) + rb"=([^;\s]*)")


class PlainRequest:
    """A request head `read_request` took, and the head to send upstream for it."""

    __slots__ = ("method", "target", "path", "http11", "keep_alive", "host", "upstream",
                 "request_id", "pinned", "size")

    def __init__(self, method: bytes, target: bytes, http11: bool, keep_alive: bool,
                 host: bytes, upstream: bytes, request_id: bytes, pinned: bytes | None,
                 size: int) -> None:
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


def read_request(data: bytes, end: int, limits: Limits, *, client_ip: bytes, scheme: bytes,
                 trusted: bool, fresh_id: bytes) -> PlainRequest | None:
    """Read the head that `data` holds up to `end` (where its blank line starts), or None
    if it is not plain. `fresh_id` is the X-Request-Id to use if the client's will not do."""
    first = data.find(b"\r\n")
    line = _REQUEST_LINE.fullmatch(data, 0, first + 2)
    if line is None:
        return None
    start, stop = first + 2, end + 2
    if not _FIELDS.fullmatch(data, start, stop):
        return None
    if data.count(b"\n", start, stop) > limits.max_headers:
        return None
    host: bytes | None = None
    close = keep = False
    cuts: list[tuple[int, int]] = []
    ids: list[tuple[bytes, tuple[int, int]]] = []
    forwarded: dict[bytes, list[bytes]] = {}
    for field in _SPECIAL.finditer(data, start, stop):
        name, value = field.group(1).lower(), field.group(2)
        if name == b"host":
            if host is not None:
                return None
            host = value
        elif name == b"x-request-id":
            ids.append((value, field.span()))
        elif name == b"connection":
            for token in value.lower().split(b","):
                token = token.strip()
                if token == b"close":
                    close = True
                elif token == b"keep-alive":
                    keep = True
                elif token:
                    return None  # names headers to drop: the general path does that
            cuts.append(field.span())
        elif name in _CUT:
            cuts.append(field.span())
        elif name in _FORWARDED:
            forwarded.setdefault(name, []).append(value)
            cuts.append(field.span())
        else:
            return None  # a body's framing, or a protocol switch
    if not host or b" " in host or b"\t" in host:
        return None
    http11 = line.group(3) == b"1"
    keep_alive = not close and (http11 or keep)
    if len(ids) == 1 and _REQUEST_ID.fullmatch(ids[0][0]):
        request_id = ids[0][0]
        extra = b""
    else:
        request_id = fresh_id
        cuts += [span for _, span in ids]
        extra = b"X-Request-Id: %b\r\n" % fresh_id
    chain, proto, forwarded_host = client_ip, scheme, host
    if trusted and forwarded:
        given = [v for v in forwarded.get(b"x-forwarded-for", ()) if v]
        chain = b", ".join([*given, client_ip])
        proto = forwarded.get(b"x-forwarded-proto", [proto])[0]
        forwarded_host = forwarded.get(b"x-forwarded-host", [host])[0]
    extra = b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: %b\r\n%b\r\n" % (
        chain, proto, forwarded_host, extra)
    if not cuts and http11:
        upstream = data[:stop] + extra
    else:
        pieces = [b"%b %b HTTP/1.1\r\n" % (line.group(1), line.group(2))]
        at = start
        for cut_start, cut_end in sorted(cuts):
            pieces.append(data[at:cut_start])
            at = cut_end
        pieces.append(data[at:stop])
        pieces.append(extra)
        upstream = b"".join(pieces)
    pinned = None
    if data.find(STICKY_COOKIE, start, stop) >= 0:
        pinned = _pinned(data[start:stop])
    return PlainRequest(line.group(1), line.group(2), http11, keep_alive, host, upstream,
                        request_id, pinned, end + 4)


def _pinned(fields: bytes) -> bytes | None:
    """The sticky cookie's value in the Cookie lines of `fields`, or None."""
    for line in fields.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"cookie":
            found = _PIN.search(value)
            if found and found.group(1):
                return found.group(1)
    return None


def request_head(data: bytes, plain: PlainRequest) -> RequestHead:
    """The general parser's view of a head `read_request` took (for the general path's
    error answers and unusual responses)."""
    first = data.find(b"\r\n")
    headers: Headers = []
    for line in data[first + 2 : plain.size - 4].split(b"\r\n"):
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    return RequestHead(
        method=plain.method,
        target=plain.target,
        version=b"1.1" if plain.http11 else b"1.0",
        headers=headers,
        keep_alive=plain.keep_alive,
        framing=Framing.NONE,
        upgrade=False,
    )
