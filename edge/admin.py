"""The edge's own health endpoint, on a listener of its own.

Edge health is never served on the app listener: any Host and any path there may
belong to an app, so a reserved name or path would shadow someone's route. It
lives on `admin_host:admin_port` instead (off unless configured), which answers
`GET /healthz` with JSON and everything else with 404, one request per connection.

Rules kept here:
  * /healthz answers 200 while the edge serves, including when the control plane
    is away: then it says `"control": "unreachable"` and `"serving_last_table": true`.
    While draining it answers 503, so a balancer in front stops sending traffic.
  * Every worker binds the admin port with SO_REUSEPORT, so any one may answer;
    each reports its own view (they poll the control plane independently).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable

import trio

from edge.encode import encode_response_head, error_response
from edge.http import EndOfMessage, Limits, ProtocolError, RequestHead, RequestParser
from edge.listen import close_listener, open_listener
from edge.netio import Conn, serve_conns
from edge.peer import Peer

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 5.0

Health = Callable[[], dict[str, object]]


async def serve_admin(
    host: str,
    port: int,
    health: Health,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve GET /healthz on host:port until cancelled; reports the bound port."""
    listener = await open_listener(host, port, backlog=64)
    bound = listener.getsockname()[1]

    async def handle(stream: Conn) -> None:
        async with stream:
            with contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError
            ):
                await answer(stream, health)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_conns, listener, nursery, handle)
            log.info("edge-admin-listening host=%s port=%d", host, bound)
            task_status.started(bound)
    finally:
        close_listener(listener)


async def answer(stream: Conn, health: Health) -> None:
    """Read one request and answer it."""
    peer = Peer(stream, RequestParser(Limits(max_header_bytes=8192, max_body_bytes=0)))
    try:
        head = await peer.next_event(HEAD_TIMEOUT)
        if not isinstance(head, RequestHead):
            return
        if not isinstance(await peer.next_event(HEAD_TIMEOUT), EndOfMessage):
            return
    except ProtocolError as error:
        return await peer.send(error_response(error.status, error.reason, close=True))
    if head.method not in (b"GET", b"HEAD") or head.target.split(b"?")[0] != b"/healthz":
        return await peer.send(error_response(404, "only GET /healthz here", close=True))
    report = {"pid": os.getpid(), **health()}
    status = 503 if report.get("status") == "draining" else 200
    body = json.dumps(report).encode()
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"%d" % len(body)),
        (b"Connection", b"close"),
    ]
    await peer.send(
        encode_response_head(status, b"", headers) + (b"" if head.method == b"HEAD" else body)
    )
