"""Connections from the edge to backends, and the rule for when a failure may be retried.

Owns `Connector` (how a connection to one backend is obtained and given back) and
`connect_first` (walk the balancer's candidates until one accepts).

Rules kept here:
  * Only a failure that happened before any request byte was sent is retried on
    another backend (`is_retriable`). Once bytes are out, the backend may have
    acted on the request, and replaying a POST is not ours to decide.
  * Each attempt is bounded by the connect timeout; a backend that neither accepts
    nor refuses counts as a connect failure.
  * `Connector.acquire`/`release` is the seam for a keep-alive pool: today every
    exchange opens a fresh connection and `release` closes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from edge.routes import Backend

log = logging.getLogger(__name__)


class ConnectFailed(Exception):
    """No candidate backend accepted a connection."""

    def __init__(self, failures: list[tuple[Backend, BaseException]]) -> None:
        super().__init__(f"{len(failures)} connect attempt(s) failed")
        self.failures = failures


def is_retriable(error: BaseException, bytes_sent: int) -> bool:
    """Whether a request that failed with `error` may go to another backend."""
    return bytes_sent == 0 and isinstance(error, OSError | trio.TooSlowError)


class Connector:
    """Opens connections to backends; a pooled version keeps the same two methods."""

    def __init__(self, connect_timeout: float) -> None:
        self._connect_timeout = connect_timeout

    async def acquire(self, backend: Backend) -> trio.SocketStream:
        """A connected stream to `backend`; OSError or TooSlowError if there is none."""
        with trio.fail_after(self._connect_timeout):
            return await trio.open_tcp_stream(backend.host, backend.port)

    async def release(self, stream: trio.SocketStream, *, reusable: bool) -> None:
        """Give a stream back once its exchange is over (no pool yet: close it)."""
        await stream.aclose()


async def connect_first(
    connector: Connector, candidates: Sequence[Backend]
) -> tuple[trio.SocketStream, Backend]:
    """Connect to the first candidate that accepts; ConnectFailed if none does."""
    failures: list[tuple[Backend, BaseException]] = []
    for backend in candidates:
        try:
            return await connector.acquire(backend), backend
        except (OSError, trio.TooSlowError) as error:
            if not is_retriable(error, bytes_sent=0):
                raise
            log.warning(
                "edge-connect-failed backend=%s instance=%s error=%r",
                backend.address,
                backend.instance,
                error,
            )
            failures.append((backend, error))
    raise ConnectFailed(failures)
