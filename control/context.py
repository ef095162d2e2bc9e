"""What every API handler shares: the Control context and request-parsing helpers.

Helpers turn bad input into BadRequest/Unprocessable with a reason; nothing here
touches the store beyond what Control wires up (change notifications, scaling).
"""

from __future__ import annotations

import contextlib
import zlib
from typing import Any, TypeVar, cast

import anyio
from starlette.requests import Request

from control.auth import require
from control.blobs import BlobStore
from control.bodies import WAIT
from control.config import ControlConfig
from control.errors import (
    BadRequest,
    TooLarge,
    Unprocessable,
)
from control.limits import config_problem
from control.names import app_name_problem
from control.notify import Notifier
from control.scaling import Scaling
from control.schema import Body, Spec, parse_json, query, validate
from control.store import Store, Token

T = TypeVar("T")


class Control:
    """The objects every handler needs."""

    def __init__(self, store: Store, config: ControlConfig) -> None:
        self.store = store
        self.config = config
        self.blobs = BlobStore(config.home / "blobs", config.disk_reserve)
        self.notifier = Notifier()
        self.log_notifier = Notifier()
        self.asked_to_stop: dict[str, set[str]] = {}
        # node id -> its disk as its last heartbeat said (free bytes, full?); in memory, as
        # it is only news while heartbeats arrive, and it must reach `foundry nodes` even
        # when the store cannot write
        self.node_disks: dict[str, tuple[int, bool]] = {}
        self.scaling = Scaling(store)
        store.on_change = self._state_changed
        store.on_logs = self.log_notifier.changed

    def _state_changed(self) -> None:
        # Log followers wake on state changes too: a build that ends is news to them.
        self.notifier.changed()
        self.log_notifier.changed()

    async def wait(self, request: Request, check: Any, logs: bool = False) -> Any:
        """Call `check()` until it returns something truthy or the requested wait ends."""
        wait = min(query_value(request, "wait", WAIT, 0.0), self.config.long_poll_max)
        deadline = anyio.current_time() + wait
        notifier = self.log_notifier if logs else self.notifier
        while True:
            event = notifier.snapshot()
            result = check()
            remaining = deadline - anyio.current_time()
            if result or remaining <= 0:
                return result
            await Notifier.wait(event, remaining)


def control_of(request: Request) -> Control:
    ctl: Control = request.app.state.control
    return ctl


def query_value(request: Request, key: str, spec: Spec, default: T) -> T:
    """Query parameter `key` read by `spec` (see `schema.query`), or `default` when it is
    absent or empty."""
    params = request.query_params
    if not params.get(key):
        return default
    return cast(T, query(spec, params, key))


def check_length(request: Request, limit: int, what: str = "request body") -> None:
    """TooLarge before a byte is read when the declared Content-Length passes `limit`."""
    length = request.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > limit:
        raise TooLarge(f"{what} is {int(length)} bytes; the limit is {limit} bytes")


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """The whole body, refused (TooLarge) by its Content-Length or, for a body that does
    not declare one, as soon as the bytes received pass `limit`."""
    check_length(request, limit, what)
    chunks: list[bytes] = []
    size = 0
    async with contextlib.aclosing(request.stream()) as stream:  # closed when cut off
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"{what} is larger than the {limit} byte limit")
            chunks.append(chunk)
    return b"".join(chunks)


def gunzip(raw: bytes, limit: int, what: str = "request body") -> bytes:
    """Inflate a gzip'd body without ever holding more than `limit` bytes of it."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflate.decompress(raw, limit + 1)
    except zlib.error:
        raise BadRequest(f"{what} is not valid gzip") from None
    if len(out) > limit or inflate.unconsumed_tail:
        raise TooLarge(f"{what} expands past the {limit} byte limit")
    return out


async def json_body(
    request: Request, body: Body[T], limit: int | None = None, expanded: int | None = None
) -> T:
    """The request's JSON object (gzip'd bodies are welcome) checked against `body`, at
    most `limit` bytes as sent and `expanded` bytes inflated (both default to the
    ordinary JSON cap); BadRequest, TooLarge or Unprocessable otherwise."""
    cap = limit if limit is not None else control_of(request).config.requests.json
    raw = await read_body(request, cap)
    if request.headers.get("content-encoding", "") == "gzip":
        raw = gunzip(raw, expanded if expanded is not None else cap)
    return json_object(raw, "request body", body)


def json_object(raw: bytes, what: str, body: Body[T]) -> T:
    """`raw` parsed as a JSON object and checked against `body`; BadRequest naming `what`
    when it is not JSON, Unprocessable naming the field that is wrong."""
    value = parse_json(raw, what)
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return validate(body, value)


def app_name(request: Request) -> str:
    name: str = request.path_params["app"]
    problem = app_name_problem(name)
    if problem:
        raise Unprocessable(problem)
    return name


def check_config(ctl: Control, before: dict[str, str], after: dict[str, str]) -> None:
    """Unprocessable (nothing is stored) when `after` passes the app's config var cap."""
    problem = config_problem(before, after, ctl.config.requests.config_vars)
    if problem:
        raise Unprocessable(problem)


def app_call(
    request: Request, kinds: tuple[str, ...], *, exists: bool = False
) -> tuple[Control, str, Token]:
    """What an app handler starts with: the context, the app named in the path (a valid
    DNS label), and the caller's token, allowed for `kinds` and scoped to the app; with
    `exists`, NotFound unless the app exists. The token is checked before the name is
    looked up, so a caller without access learns nothing about which apps exist."""
    ctl = control_of(request)
    name = app_name(request)
    token = require(request, ctl.store, kinds, app=name)
    if exists:
        ctl.store.get_app(name)
    return ctl, name, token
