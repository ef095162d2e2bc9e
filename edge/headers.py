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
  * X-Forwarded-*, Forwarded and X-Real-IP are believed only from a trusted proxy:
    from one, X-Forwarded-For is appended to (the peer's IP goes last), Forwarded
    gets this hop's element appended, and the client's -Proto/-Host and X-Real-IP
    are kept; from anyone else all five are replaced, since only the edge knows.
    The edge's own Forwarded element (RFC 7239) is `for=<peer>;proto=<scheme the
    edge was reached by>;host=<Host it received>`, which from an untrusted client
    says what X-Forwarded-For/-Proto/-Host say; a value that is not a token (an
    IPv6 address, always bracketed, or a host with a `:port`) is a quoted-string.
    X-Real-IP is the peer's address (or the trusted proxy's X-Real-IP).
  * Stickiness: when a response sets a session cookie (a name in SESSION_COOKIES,
    or containing "session"), the edge adds STICKY_COOKIE naming the instance;
    a request carrying it is pinned there while that instance is routed.
  * X-Request-Id from the client is kept if it is a short, plain token; otherwise
    the caller's fresh id replaces it. Either way exactly one is forwarded.
"""

from __future__ import annotations

import functools
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

STICKY_COOKIE = b"__foundry_instance"
SESSION_COOKIES = frozenset({b"jsessionid", b"phpsessid", b"connect.sid", b"sid", b"_session_id"})
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


_FORWARDING = (
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"forwarded",
    b"x-real-ip",
)


def _forwarding(
    given: dict[bytes, list[bytes]], client_ip: str, proto: str, host: bytes, trusted: bool
) -> Headers:
    """The forwarding headers to send, from the client's (`given`, by lower-case name)."""
    peer = client_ip.encode("ascii")
    scheme = proto.encode("ascii")
    element = forwarded_element(peer, scheme, host)
    chain, hops, real_ip, forwarded_proto, forwarded_host = [peer], [element], peer, scheme, host
    if trusted:
        chain = [v.strip() for v in given.get(b"x-forwarded-for", ()) if v.strip()] + chain
        hops = [v.strip() for v in given.get(b"forwarded", ()) if v.strip()] + hops
        # The first value, unless it is empty.
        forwarded_proto = (given.get(b"x-forwarded-proto") or [b""])[0] or scheme
        forwarded_host = (given.get(b"x-forwarded-host") or [b""])[0] or host
        real_ip = (given.get(b"x-real-ip") or [b""])[0] or peer
    return [
        (b"X-Forwarded-For", b", ".join(chain)),
        (b"X-Forwarded-Proto", forwarded_proto),
        (b"X-Forwarded-Host", forwarded_host),
        (b"X-Real-IP", real_ip),
        (b"Forwarded", b", ".join(hops)),
    ]


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def forwarded_element(client_ip: bytes, proto: bytes, host: bytes) -> bytes:
    """This hop's RFC 7239 Forwarded element for a peer at `client_ip`."""
    if len(host) > _LONGEST_CACHED_HOST:
        return _element(client_ip, proto, host)
    return _cached_element(client_ip, proto, host)


def _element(client_ip: bytes, proto: bytes, host: bytes) -> bytes:
    if b":" in client_ip:
        node = b'"[%b]"' % client_ip
    else:  # "unknown": RFC 7239 6.2's name for an address the edge does not have
        node = _token_or_quoted(client_ip) if client_ip else b"unknown"
    return b"for=%b;proto=%b;host=%b" % (node, _token_or_quoted(proto), _token_or_quoted(host))


# Elements are cached: one is built for every request on the hot path, and deciding
# how to quote costs more than the rest of the fast reader's edits, while a client
# sends the same one request after request. The cache is bounded, and an over-long
# Host (no DNS name with a port is this long) is never kept.
_LONGEST_CACHED_HOST = 300
_cached_element = functools.lru_cache(maxsize=4096)(_element)


def _token_or_quoted(value: bytes) -> bytes:
    """`value` as an RFC 7230 token if it is one, else as a quoted-string."""
    if _TOKEN.fullmatch(value):
        return value
    return b'"%b"' % value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')


def cookie(headers: Headers, name: bytes) -> bytes | None:
    """The value of cookie `name` in the request's Cookie headers, or None."""
    for value in get_all(headers, b"cookie"):
        for pair in value.split(b";"):
            key, sep, found = pair.strip().partition(b"=")
            if sep and key == name:
                return found.strip()
    return None


def sets_session_cookie(headers: Headers) -> bool:
    """Whether a response's Set-Cookie headers start (or renew) an app session."""
    for value in get_all(headers, b"set-cookie"):
        name = value.partition(b"=")[0].strip().lower()
        if name in SESSION_COOKIES or b"session" in name:
            return True
    return False


def sticky_cookie(instance: str) -> tuple[bytes, bytes]:
    """The Set-Cookie header that pins a client to `instance`."""
    value = b"%b=%b; Path=/; HttpOnly; SameSite=Lax" % (STICKY_COOKIE, instance.encode("ascii"))
    return (b"Set-Cookie", value)


def chunked_coding(transfer_encoding: bytes | None) -> bytes:
    """The Transfer-Encoding to send when re-chunking a body that had `transfer_encoding`."""
    if not transfer_encoding:
        return b"chunked"
    codings = [t.strip().lower() for t in transfer_encoding.split(b",") if t.strip()]
    if codings and codings[-1] == b"chunked":
        return b", ".join(codings)
    return b", ".join([*codings, b"chunked"])


# The hot path: the rules above, applied in one pass over the headers each way.

_SET_BY_EDGE = frozenset({b"host", b"x-request-id", *_FORWARDING})


def forward_request(
    headers: Headers,
    *,
    host: bytes,
    client_ip: str,
    proto: str,
    trusted: bool,
    fresh_id: bytes,
    websocket: bool,
) -> tuple[Headers, bytes]:
    """The request's headers as a backend gets them, in one pass: hop-by-hop ones
    stripped (`strip_hop_by_hop`), then Host, the forwarding headers and one
    X-Request-Id set by the rules above (framing aside); and the request id."""
    kept: list[tuple[bytes, bytes, bytes]] = []
    named: set[bytes] = set()
    given: dict[bytes, list[bytes]] = {}
    upgrade = None
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"connection":
                named.update(t.strip().lower() for t in value.split(b","))
            elif lname == b"upgrade":
                upgrade = value
        elif lname in _SET_BY_EDGE:
            given.setdefault(lname, []).append(value)
        else:
            kept.append((lname, name, value))
    out = (
        [(n, v) for lname, n, v in kept if lname not in named]
        if named
        else [(n, v) for _, n, v in kept]
    )
    if websocket and upgrade is not None:
        out += [(b"Connection", b"Upgrade"), (b"Upgrade", upgrade)]
    ids = given.get(b"x-request-id", [])
    request_id = ids[0] if len(ids) == 1 and _REQUEST_ID.fullmatch(ids[0]) else fresh_id
    out.append((b"Host", host))
    out += _forwarding(given, client_ip, proto, host, trusted)
    out.append((b"X-Request-Id", request_id))
    return out, request_id


def forward_response(headers: Headers) -> tuple[Headers, bytes | None, bool]:
    """A response's headers without hop-by-hop ones, in one pass; also its
    Transfer-Encoding and whether it sets a session cookie."""
    kept: list[tuple[bytes, bytes, bytes]] = []
    named: set[bytes] = set()
    codings = None
    session = False
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"connection":
                named.update(t.strip().lower() for t in value.split(b","))
            elif lname == b"transfer-encoding":
                codings = value if codings is None else codings + b", " + value
            continue
        if lname == b"set-cookie" and not session:
            cookie_name = value.partition(b"=")[0].strip().lower()
            session = cookie_name in SESSION_COOKIES or b"session" in cookie_name
        kept.append((lname, name, value))
    if named:
        return [(n, v) for lname, n, v in kept if lname not in named], codings, session
    return [(n, v) for _, n, v in kept], codings, session
