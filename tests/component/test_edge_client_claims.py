"""What a client sends that the edge must not pass on as it came, through a real edge
with raw bytes: paths that climb out of a route's prefix (`/api/../admin`), and the
client's own Forwarded / X-Real-IP. Each case goes as a bodiless GET (which the fast
path may take) and as a POST with a body (always the general path): both must agree."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import trio

from edge.routes import Backend, Route, RouteTable
from tests.component.test_edge_proxy import (
    CONFIG,
    json_backend,
    read_raw_response,
    start_edge,
    start_server,
)

HOST = b"hello.localhost:8080"


async def two_apps(nursery: trio.Nursery) -> RouteTable:
    """`hello.localhost` with app `api` under `/api` and app `root` for the rest."""
    api, root = [await start_server(nursery, json_backend(name)) for name in ("api", "root")]
    return RouteTable(
        routes=(
            Route("hello.localhost", "/api", "api", (Backend(f"127.0.0.1:{api}", "a-0"),)),
            Route("hello.localhost", "/", "root", (Backend(f"127.0.0.1:{root}", "r-0"),)),
        ),
        etag="t",
    )


async def send(port: int, method: bytes, target: bytes, extra: bytes = b"") -> tuple[int, bytes]:
    """One request as raw bytes on a fresh connection: (status, body)."""
    body = b"x=1" if method == b"POST" else b""
    framing = b"Content-Length: %d\r\n" % len(body) if body else b""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"%b %b HTTP/1.1\r\nHost: %b\r\nConnection: close\r\n%b%b\r\n%b"
            % (method, target, HOST, framing, extra, body)
        )
        with trio.fail_after(10):
            answer = await read_raw_response(stream)
    head, _, content = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), content


async def seen_by_backend(
    port: int, method: bytes, target: bytes, extra: bytes = b""
) -> dict[str, object]:
    status, content = await send(port, method, target, extra)
    assert status == 200, content
    seen = json.loads(content)
    assert isinstance(seen, dict)
    return seen


def header(seen: dict[str, object], name: str) -> list[str]:
    pairs = seen["headers"]
    assert isinstance(pairs, list)
    return [v for k, v in pairs if k.lower() == name]


METHODS = [b"GET", b"POST"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("target", "app", "forwarded"),
    [
        (b"/api/../admin", "root", "/admin"),
        (b"/api/%2e%2e/admin", "root", "/admin"),
        (b"/api/%2E%2e/admin", "root", "/admin"),
        (b"/api/.%2e/admin", "root", "/admin"),
        (b"/api/x/../../admin?q=/../y", "root", "/admin?q=/../y"),
        (b"/api//../admin", "root", "/admin"),
        (b"http://hello.localhost/api/../admin", "root", "/admin"),  # absolute-form
        (b"/api/../api/x", "api", "/api/x"),
        (b"/%61pi/./x", "api", "/api/x"),
        (b"//api/x", "api", "/api/x"),
        (b"/api/x?q=1", "api", "/api/x?q=1"),
        (b"/apix", "root", "/apix"),  # `/api` ends on a segment boundary
        (b"/api%2f..%2fadmin", "root", "/api%2F..%2Fadmin"),  # %2F is data, not a separator
    ],
)
async def test_a_path_reaches_the_app_its_normal_form_names(
    nursery: trio.Nursery, method: bytes, target: bytes, app: str, forwarded: str
) -> None:
    edge = await start_edge(nursery, await two_apps(nursery))
    seen = await seen_by_backend(edge, method, target)
    assert (seen["backend"], seen["target"]) == (app, forwarded)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "target",
    [
        b"/api\\..\\admin",
        b"/api/x#/../../admin",
        b"/api/%zz",
        b"/api/%2",
    ],
)
async def test_a_path_the_edge_cannot_read_one_way_is_refused(
    nursery: trio.Nursery, method: bytes, target: bytes
) -> None:
    hits: list[bytes] = []

    async def backend(stream: trio.SocketStream) -> None:
        hits.append(await stream.receive_some(65536))

    port = await start_server(nursery, backend)
    edge = await start_edge(
        nursery,
        RouteTable(
            routes=(Route("hello.localhost", "/", "root", (Backend(f"127.0.0.1:{port}", "r-0"),)),)
        ),
    )
    status, content = await send(edge, method, target)
    assert status == 400, content
    assert hits == []


SPOOF = b"Forwarded: for=6.6.6.6;host=evil\r\nX-Real-IP: 6.6.6.6\r\n"
OURS = 'for=127.0.0.1;proto=http;host="hello.localhost:8080"'


@pytest.mark.parametrize("method", METHODS)
async def test_forwarded_and_x_real_ip_from_a_client_are_replaced(
    nursery: trio.Nursery, method: bytes
) -> None:
    edge = await start_edge(nursery, await two_apps(nursery))
    seen = await seen_by_backend(edge, method, b"/x", SPOOF)
    assert header(seen, "x-real-ip") == ["127.0.0.1"]
    assert header(seen, "forwarded") == [OURS]
    assert header(seen, "x-forwarded-for") == ["127.0.0.1"]
    # and a client that sent none gets the same
    seen = await seen_by_backend(edge, method, b"/x")
    assert (header(seen, "x-real-ip"), header(seen, "forwarded")) == (["127.0.0.1"], [OURS])


@pytest.mark.parametrize("method", METHODS)
async def test_forwarded_and_x_real_ip_from_a_trusted_proxy_are_kept(
    nursery: trio.Nursery, method: bytes
) -> None:
    config = replace(CONFIG, trusted_proxies=("127.0.0.0/8",))
    edge = await start_edge(nursery, await two_apps(nursery), config)
    seen = await seen_by_backend(edge, method, b"/x", SPOOF)
    assert header(seen, "x-real-ip") == ["6.6.6.6"]
    assert header(seen, "forwarded") == ["for=6.6.6.6;host=evil, " + OURS]
