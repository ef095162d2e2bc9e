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
    fields = data[first + 2 : end + 2]
    if not _FIELDS.fullmatch(fields):
        return None
    lines = fields.split(b"\r\n")
    lines.pop()  # after the last CRLF
    if len(lines) > limits.max_headers:
        return None
    kept: list[tuple[bytes, bytes]] = []
    lengths: set[bytes] = set()
    named: set[bytes] = set()
    session = False
    for line in lines:
        name, _, value = line.partition(b":")
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"transfer-encoding":
                return None
            if lname == b"connection":
                named.update(t.strip().lower() for t in value.split(b","))
            continue
        if lname == b"content-length":
            lengths.add(value.strip(b" \t"))
        elif lname == b"set-cookie" and not session:
            cookie_name = value.partition(b"=")[0].strip().lower()
            session = cookie_name in SESSION_COOKIES or b"session" in cookie_name
        kept.append((lname, line))
    if len(lengths) != 1 or b"content-length" in named:
        return None
    (length_value,) = lengths
    if not length_value.isdigit():
        return None
    if status_line.group(1) == b"1":
        keep_alive = b"close" not in named
    else:
        keep_alive = b"keep-alive" in named and b"close" not in named
    head = [b"HTTP/1.1 %b %b\r\n" % (status_line.group(2), status_line.group(3))]
    head += [line + b"\r\n" for lname, line in kept if lname not in named]
    length = 0 if head_request else int(length_value)
    return status, b"".join(head), length, keep_alive, end + 4, session
