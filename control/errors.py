"""The control plane's exception tree, translated to JSON errors in one handler.

    FoundryError            500, a bug or an unexpected failure
    ├── BadRequest          400, malformed input
    ├── Unauthorized        401, no or unknown token
    ├── Forbidden           403, token may not do this
    ├── NotFound            404, no such app, build, node...
    ├── Conflict            409, state does not allow this now
    ├── TooLarge            413, upload over the limit
    ├── Unprocessable       422, well-formed but refused (bad archive, bad name)
    ├── Unavailable         503, nothing can serve this right now
    └── InsufficientStorage 507, the control plane's disk is full

Each carries a user-facing message; nothing else leaves the API.
"""

from __future__ import annotations


class FoundryError(Exception):
    """Base of all errors the API reports; `message` is shown to the user as-is."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(FoundryError):
    status = 400


class BadOption(FoundryError):
    """A role started with an option or state directory it cannot use (one line to the user)."""

    status = 400


class Unauthorized(FoundryError):
    status = 401


class Forbidden(FoundryError):
    status = 403


class NotFound(FoundryError):
    status = 404


class Conflict(FoundryError):
    status = 409


class TooLarge(FoundryError):
    status = 413


class Unprocessable(FoundryError):
    status = 422


class Unavailable(FoundryError):
    status = 503


class InsufficientStorage(FoundryError):
    status = 507
