"""What the edge knows about one request: the record both request paths fill.

Rules kept here:
  * One `RequestRecord` per request, made when its head has been read, by whichever
    path serves it (`via`); that path fills route, backend, request id, pinned
    instance, status and bytes as they become known. The access log and the
    in-flight metrics read the record (`Edge.begin_request`, `Edge.end_request`),
    never the paths' own fields.
  * A request counts as in flight for the app it was routed to first, from
    `begin_request` until it ends or becomes a websocket tunnel (`counted` names that
    app, or is None); a wake may re-route it meanwhile.
  * `via` names the path: FAST (the lane's own reader and relay), HANDED (read by the
    lane, its answer relayed or its error made by the general path) or GENERAL.
  * `error` names why the edge answered with its own error page (the code in its
    X-Foundry-Router-Error header) and `replays` how often the request was sent again
    on a fresh backend connection (`edge.upstream.may_replay`); both go to the log.
  * `host` and `path` are decoded only for a request that is logged (the fast path
    reads them as bytes and decodes them when it ends).
"""

from __future__ import annotations

from edge.routes import Backend, Route

FAST = "fast"
HANDED = "fast-handed"
GENERAL = "general"


class RequestRecord:
    """One request as the log and the metrics see it (made once per request: slots, and
    everything known at its start passed at once)."""

    __slots__ = (
        "backend",
        "bytes_sent",
        "counted",
        "error",
        "host",
        "method",
        "path",
        "pinned",
        "replays",
        "request_id",
        "route",
        "started",
        "status",
        "via",
    )

    def __init__(
        self,
        via: str,
        method: bytes,
        started: float,
        route: Route | None = None,
        request_id: bytes = b"-",
        pinned: str | None = None,
    ) -> None:
        self.via = via
        self.method = method
        self.started = started  # the trio clock when its head had been read
        self.host = self.path = "-"
        self.route = route
        self.backend: Backend | None = None
        self.request_id = request_id
        self.pinned = pinned  # the instance its sticky cookie named
        self.status = self.bytes_sent = 0
        self.counted: str | None = None  # the app it counts as in flight for now
        self.error = "-"  # the code of the error the edge answered with, if it did
        self.replays = 0  # how often it was sent again after its connection died unanswered

    @property
    def app(self) -> str:
        """The routed app's name, or "-"."""
        return self.route.app if self.route is not None else "-"
