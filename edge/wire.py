"""The routing table an edge receives from the control plane, as the edge sees it.

Rules kept here:
- `edge/routes.py` parses the table the control plane sends; these are the shapes it
  reads. `control/wire_edge.py` declares the same shapes on the sending side (the
  roles never import each other) and `tests/contract/test_roles.py` feeds the real
  table into this declaration and the edge's parser, so a field renamed on one side
  only fails a test.
"""

# No `from __future__ import annotations` here: Python 3.11 loses NotRequired from a
# TypedDict's postponed annotations, and the contract test reads the required keys.

from typing import NotRequired, TypedDict


class Backend(TypedDict):
    address: str  # host:port of a RUNNING instance (or the control plane for api.)
    instance: str


class RouteOptions(TypedDict, total=False):
    balance: str  # round-robin | least-in-flight
    timeout: int  # seconds
    sticky: bool


class Route(TypedDict):
    host: str
    path: str  # a prefix; "/" for the whole host
    app: str
    backends: list[Backend]
    options: NotRequired[RouteOptions]
    wakeable: NotRequired[bool]  # no backend: hold the request and wake the app


class RouteTable(TypedDict):
    """GET /v1/routes answers the whole table; the etag names it."""

    etag: str
    routes: list[Route]
