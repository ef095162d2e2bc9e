"""Header rewriting for proxied messages: pure functions over `[(name, value), ...]` lists.

Header lists hold raw bytes exactly as parsed; names keep their original case and
are compared case-insensitively. Functions never mutate their argument; they
return new lists, preserving the order of the headers they keep.

Rules kept here:
  * Hop-by-hop headers describe one connection, never the next: Connection,
    Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade and any
    header named in Connection are removed before a message is forwarded. The one
    exception is a websocket handshake, whose Upgrade/Connection pair is kept.
    Message framing (Content-Length, chunking) is re-decided by the sender.
  * X-Forwarded-For is appended to (the client's IP goes last); X-Forwarded-Proto
    and X-Forwarded-Host are replaced, since only the edge knows the truth.
  * X-Request-Id from the client is kept if it is a short, plain token; otherwise
    the caller's fresh id replaces it. Either way exactly one is forwarded.
"""

from __future__ import annotations

import re

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+=/-]{1,128}")


def get(headers: Headers, name: bytes) -> bytes | None:
    """The value of the first header called `name` (any case), or None."""
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted:
            return value
    return None


def get_all(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of headers called `name`, in order."""
    wanted = name.lower()
    return [value for key, value in headers if key.lower() == wanted]


def tokens(headers: Headers, name: bytes) -> list[bytes]:
    """The comma-separated, lower-cased tokens across all `name` headers."""
    found: list[bytes] = []
    for value in get_all(headers, name):
        found.extend(t.strip().lower() for t in value.split(b",") if t.strip())
    return found


def remove(headers: Headers, *names: bytes) -> Headers:
    """`headers` without any header called one of `names`."""
    dropped = {name.lower() for name in names}
    return [(k, v) for k, v in headers if k.lower() not in dropped]


def is_websocket_upgrade(headers: Headers) -> bool:
    """Whether the message asks to switch to (or agrees to) the websocket protocol."""
    return b"upgrade" in tokens(headers, b"connection") and b"websocket" in tokens(
        headers, b"upgrade"
    )


def strip_hop_by_hop(headers: Headers, *, keep_websocket: bool = False) -> Headers:
    """Remove hop-by-hop headers; keep a websocket Upgrade handshake if asked."""
    dropped = HOP_BY_HOP | set(tokens(headers, b"connection"))
    kept = [(k, v) for k, v in headers if k.lower() not in dropped]
    if keep_websocket and is_websocket_upgrade(headers):
        upgrade = get(headers, b"upgrade") or b"websocket"
        kept += [(b"Connection", b"Upgrade"), (b"Upgrade", upgrade)]
    return kept


def add_forwarded(headers: Headers, *, client_ip: str, proto: str, host: bytes) -> Headers:
    """Append the client to X-Forwarded-For; set X-Forwarded-Proto and -Host."""
    chain = [v.strip() for v in get_all(headers, b"x-forwarded-for") if v.strip()]
    chain.append(client_ip.encode("ascii"))
    rewritten = remove(headers, b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
    return rewritten + [
        (b"X-Forwarded-For", b", ".join(chain)),
        (b"X-Forwarded-Proto", proto.encode("ascii")),
        (b"X-Forwarded-Host", host),
    ]


def with_request_id(headers: Headers, fresh: bytes) -> tuple[Headers, bytes]:
    """Keep a well-formed client X-Request-Id, else use `fresh`; returns (headers, id)."""
    given = get_all(headers, b"x-request-id")
    if len(given) == 1 and _REQUEST_ID.fullmatch(given[0]):
        return headers, given[0]
    return remove(headers, b"x-request-id") + [(b"X-Request-Id", fresh)], fresh


def chunked_coding(transfer_encoding: bytes | None) -> bytes:
    """The Transfer-Encoding to send when re-chunking a body that had `transfer_encoding`."""
    if not transfer_encoding:
        return b"chunked"
    codings = [t.strip().lower() for t in transfer_encoding.split(b",") if t.strip()]
    if codings and codings[-1] == b"chunked":
        return b", ".join(codings)
    return b", ".join([*codings, b"chunked"])
