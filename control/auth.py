"""Bearer-token checks for the API: who is calling, and may they do this?

Kinds: admin (everything), deploy (apps it is limited to, or all), read (GET only),
node (its own node's endpoints), join (exchange for a node token, nothing else), edge
(the routing table, wake calls, router log lines). Every kind may carry an expiry and
a use count; each authenticated request spends one use (the store counts atomically),
and an expired or used-up token is 401 like an unknown one.
Secrets are never logged; the store compares hashes in constant time.
"""

from __future__ import annotations

from starlette.requests import Request

from control.errors import Forbidden, NotFound, Unauthorized
from control.policy import may_access
from control.store import Store, Token

APP_KINDS = ("admin", "deploy")
READ_KINDS = ("admin", "deploy", "read")


def bearer(request: Request, store: Store) -> Token:
    """The valid token on this request, or 401."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    token = store.authenticate(secret.strip())
    if token is None:
        raise Unauthorized("invalid, expired or revoked token")
    return token


def require(
    request: Request, store: Store, kinds: tuple[str, ...], app: str | None = None
) -> Token:
    """The token, if its kind is one of `kinds` and (for scoped tokens) covers `app`."""
    token = bearer(request, store)
    if token.kind not in kinds:
        raise Forbidden(f"a {token.kind} token may not do this")
    if app is not None:
        check_scope(token, app)
    return token


def check_scope(token: Token, app: str) -> None:
    """Forbidden unless the token may act on `app` (whether or not it exists)."""
    if not may_access(scope_of(token), app):
        raise Forbidden(f"this token is not allowed to act on app {app!r}")


def require_node(request: Request, store: Store, node: str) -> Token:
    """The token of node `node` itself (or an admin token)."""
    token = require(request, store, ("admin", "node"))
    check_node(token, node)
    return token


def check_node(token: Token, node: str) -> None:
    """Forbidden unless an admin token, or the token of node `node` itself."""
    if token.kind == "node" and token.node != node:
        raise Forbidden("a node token may only act for its own node")


def scope_of(token: Token) -> frozenset[str] | None:
    """The apps a token may act on, or None for every app."""
    return None if token.apps is None else frozenset(token.apps)


def hide_unless_visible(token: Token, app: str, missing: NotFound) -> None:
    """Raise `missing` (the very answer a caller gets for an object that does not exist)
    when the object belongs to an app outside the token's scope."""
    if not may_access(scope_of(token), app):
        raise missing
