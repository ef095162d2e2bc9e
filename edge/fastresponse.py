"""Sans-IO reading of the plainest response heads, for `edge.fastpath`.

`parse_head` accepts only a head whose reading is beyond doubt: an HTTP/1.x status
line with a reason, 200-599 other than 204/304, token names, plain values (no
obs-fold, no control characters), exactly one Content-Length value and no
Transfer-Encoding. For such a head it returns the bytes to relay: the status line
on HTTP/1.1 and every header but the hop-by-hop ones (`edge.headers.HOP_BY_HOP`
and those named in Connection), byte for byte, and whether it sets a session
cookie. Anything else returns None, and the general parser
(`edge.http.ResponseParser`) reads the answer instead.
"""

from __future__ import annotations

import re

from edge.headers import HOP_BY_HOP, SESSION_COOKIES
from edge.http import Limits

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([2-5][0-9][0-9]) ([\t\x20-\x7e\x80-\xff]+)")
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")

# What `parse_head` returns: (status, head to relay without its final CRLF,
# body length, whether the backend keeps the connection, offset of the body,
# whether it sets a session cookie).
Parsed = tuple[int, bytes, int, bool, int, bool]


# The only response headers `parse_head` must look at; the rest are relayed untouched.
_SPECIAL = re.compile(
    rb"^(connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade|"
    rb"content-length|set-cookie):[\t ]*([^\r\n]*?)[\t ]*\r\n",
    re.IGNORECASE | re.MULTILINE,
)
_CONNECTION_TOKENS = frozenset({b"close", b"keep-alive", b""})


def parse_head(data: bytes, head_request: bool, limits: Limits) -> Parsed | None:
    """Read the response head at the start of `data`, or None if it is not plain."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > limits.max_header_bytes:
        return None
    first = data.find(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(data, 0, first)
    if status_line is None:
        return None
    status = int(status_line.group(2))
    if status in (204, 304):
        return None
    start, stop = first + 2, end + 2
    if not _FIELDS.fullmatch(data, start, stop):
        return None
    if data.count(b"\n", start, stop) > limits.max_headers:
        return None
    cuts: list[tuple[int, int]] = []
    length_value: bytes | None = None
    named: set[bytes] = set()
    session = False
    for field in _SPECIAL.finditer(data, start, stop):
        name, value = field.group(1).lower(), field.group(2)
        if name == b"content-length":
            if length_value is not None and value != length_value:
                return None
            length_value = value
        elif name == b"set-cookie":
            if not session:
                cookie_name = value.partition(b"=")[0].strip().lower()
                session = cookie_name in SESSION_COOKIES or b"session" in cookie_name
        elif name == b"transfer-encoding":
            return None
        else:
            if name == b"connection":
                named.update(t.strip().lower() for t in value.split(b","))
            cuts.append(field.span())
    if length_value is None or not length_value.isdigit():
        return None
    if status_line.group(1) == b"1":
        keep_alive = b"close" not in named
    else:
        keep_alive = b"keep-alive" in named and b"close" not in named
    length = 0 if head_request else int(length_value)
    head = b"HTTP/1.1 %b %b\r\n" % (status_line.group(2), status_line.group(3))
    if not named <= _CONNECTION_TOKENS:  # Connection names other headers to drop too
        if b"content-length" in named:
            return None
        head += _without(data[start:stop], named)
    elif not cuts:
        head += data[start:stop]
    else:
        pieces, at = [head], start
        for cut_start, cut_end in cuts:
            pieces.append(data[at:cut_start])
            at = cut_end
        pieces.append(data[at:stop])
        head = b"".join(pieces)
    return status, head, length, keep_alive, end + 4, session


def _without(fields: bytes, named: set[bytes]) -> bytes:
    """Header lines `fields` without hop-by-hop ones and those in `named`."""
    kept = []
    for line in fields.split(b"\r\n")[:-1]:
        name = line.partition(b":")[0].lower()
        if name not in HOP_BY_HOP and name not in named:
            kept.append(line + b"\r\n")
    return b"".join(kept)
