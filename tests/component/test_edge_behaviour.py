"""The edge's production behaviours with real backends: websocket echo, stickiness,
least-in-flight, X-Forwarded-* trust, the keep-alive pool, draining, /healthz and
access-log shipping."""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import replace
from functools import partial

import h11
import httpx
import pytest
import trio
import trio.testing

from edge.accesslog import LogShipper
from edge.admin import serve_admin
from edge.proxy import Edge, serve
from edge.routes import Backend, Route, RouteOptions, RouteTable
from edge.routesync import StaticSource
from tests.component.test_edge_proxy import (
    CONFIG,
    WEBSOCKET_HANDSHAKE,
    client,
    header,
    json_backend,
    read_request,
    respond,
    start_edge,
    start_server,
    table,
)

# --- websocket framing, just enough for an echo test (RFC 6455 section 5) ---


def frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One final frame; clients mask, servers do not."""
    head = bytes([0x80 | opcode])
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class FrameReader:
    """Reads whole frames from a stream, unmasking if needed."""

    def __init__(self, stream: trio.SocketStream, buffered: bytes = b"") -> None:
        self.stream, self.buffer = stream, bytearray(buffered)

    async def _need(self, count: int) -> None:
        while len(self.buffer) < count:
            chunk = await self.stream.receive_some(1 << 20)
            if not chunk:
                raise EOFError
            self.buffer += chunk

    async def read(self) -> tuple[int, bytes]:
        await self._need(2)
        opcode, size, masked = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, self.buffer[1] & 0x80
        offset = 2
        if size in (126, 127):
            width = 2 if size == 126 else 8
            await self._need(2 + width)
            size = int.from_bytes(self.buffer[2 : 2 + width], "big")
            offset += width
        key_end = offset + (4 if masked else 0)
        await self._need(key_end + size)
        key = bytes(self.buffer[offset:key_end])
        payload = bytes(self.buffer[key_end : key_end + size])
        del self.buffer[: key_end + size]
        if masked:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return opcode, payload


async def websocket_server(stream: trio.SocketStream) -> None:
    """Completes the handshake, then echoes each frame back unmasked."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
    reader = FrameReader(stream, data.partition(b"\r\n\r\n")[2])
    try:
        while True:
            opcode, payload = await reader.read()
            await stream.send_all(frame(opcode, payload, mask=False))
    except (EOFError, trio.BrokenResourceError):
        pass


async def open_websocket(port: int, extra: bytes = b"") -> tuple[trio.SocketStream, bytes, bytes]:
    """A client websocket through the edge: (stream, response head, bytes after it)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(WEBSOCKET_HANDSHAKE[:-2] + extra + b"\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    return stream, head, rest


async def test_websocket_echo_of_text_binary_and_1_mb(nursery: trio.Nursery) -> None:
    edge = await start_edge(nursery, table(await start_server(nursery, websocket_server)))
    stream, head, rest = await open_websocket(edge)
    assert head.startswith(b"HTTP/1.1 101 ")
    reader = FrameReader(stream, rest)
    messages = [(0x1, "héllo".encode()), (0x2, bytes(range(256))), (0x2, os.urandom(1 << 20))]
    async with stream:
        with trio.fail_after(20):
            for opcode, payload in messages:
                await stream.send_all(frame(opcode, payload, mask=True))
                assert await reader.read() == (opcode, payload)


def instance_backend(name: str, *, session: bool = False) -> object:
    """Answers with its name; sets an app session cookie if asked."""

    async def handler(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            try:
                await read_request(stream, conn)
            except (h11.RemoteProtocolError, trio.BrokenResourceError):
                return
            headers = {"Set_Cookie": "session=abc; Path=/"} if session else {}
            await respond(stream, conn, 200, name.encode(), **headers)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    return handler


async def two_instances(nursery: trio.Nursery, *, session: bool) -> RouteTable:
    ports = [
        await start_server(nursery, instance_backend(f"i-{i}", session=session))  # type: ignore[arg-type]
        for i in range(2)
    ]
    return table(ports)


async def test_session_cookie_pins_the_client_to_its_instance(nursery: trio.Nursery) -> None:
    edge = await start_edge(nursery, await two_instances(nursery, session=True))
    async with client(edge) as http:
        first = await http.get("/")
        assert "__foundry_instance=" in first.headers["set-cookie"] or any(
            c.startswith("__foundry_instance=") for c in first.headers.get_list("set-cookie")
        )
        pinned = http.cookies["__foundry_instance"]
        assert pinned == first.text
        answers = {(await http.get("/")).text for _ in range(6)}
    assert answers == {pinned}  # without the pin, round-robin would alternate


async def test_without_a_session_cookie_nothing_is_pinned(nursery: trio.Nursery) -> None:
    edge = await start_edge(nursery, await two_instances(nursery, session=False))
    async with client(edge) as http:
        answers = [(await http.get("/")).text for _ in range(4)]
        assert "__foundry_instance" not in http.cookies
    assert answers == ["i-0", "i-1", "i-0", "i-1"]


async def test_websocket_honours_the_pin(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge")
    ports = [await start_server(nursery, websocket_server) for _ in range(3)]
    edge = await start_edge(nursery, table(ports))
    for _ in range(3):
        stream, head, _ = await open_websocket(edge, b"Cookie: __foundry_instance=i-2\r\n")
        await stream.aclose()
        assert head.startswith(b"HTTP/1.1 101 ")
    await trio.testing.wait_all_tasks_blocked()
    lines = [r.getMessage() for r in caplog.records if "edge-request" in r.getMessage()]
    assert len(lines) == 3
    assert all("instance=i-2 " in line for line in lines)


async def test_least_in_flight_avoids_the_busy_instance(nursery: trio.Nursery) -> None:
    release = trio.Event()
    seen: list[str] = []

    def backend(name: str, *, slow: bool) -> object:
        async def handler(stream: trio.SocketStream) -> None:
            conn = h11.Connection(h11.SERVER)
            await read_request(stream, conn)
            seen.append(name)
            if slow:
                await release.wait()
            await respond(stream, conn, 200, name.encode())

        return handler

    slow = await start_server(nursery, backend("slow", slow=True))  # type: ignore[arg-type]
    fast = await start_server(nursery, backend("fast", slow=False))  # type: ignore[arg-type]
    backends = (Backend(f"127.0.0.1:{slow}", "slow"), Backend(f"127.0.0.1:{fast}", "fast"))
    options = RouteOptions(balance="least-in-flight")
    routes = RouteTable((Route("hello.localhost", "/", "hello", backends, options),))
    edge = await start_edge(nursery, routes)
    slow_answered = trio.Event()

    async def stuck_request() -> None:
        async with client(edge) as http:
            assert (await http.get("/")).text == "slow"
        slow_answered.set()

    nursery.start_soon(stuck_request)  # goes to "slow" and stays in flight
    await trio.testing.wait_all_tasks_blocked()
    assert seen == ["slow"]
    async with client(edge) as http:
        answers = [(await http.get("/")).text for _ in range(4)]
    release.set()
    with trio.fail_after(5):
        await slow_answered.wait()
    assert answers == ["fast"] * 4  # round-robin would have queued two behind "slow"


async def test_forwarded_headers_from_a_trusted_proxy_are_kept(nursery: trio.Nursery) -> None:
    routes = table(await start_server(nursery, json_backend("a")))
    spoof = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    for trusted, expected in (((), ("127.0.0.1", "http")), (("127.0.0.0/8",), None)):
        config = replace(CONFIG, trusted_proxies=trusted)
        async with client(await start_edge(nursery, routes, config)) as http:
            seen = (await http.get("/", headers=spoof)).json()
        if expected is None:
            expected = ("203.0.113.9, 127.0.0.1", "https")
        assert (header(seen, "x-forwarded-for"), header(seen, "x-forwarded-proto")) == (
            [expected[0]],
            [expected[1]],
        )


async def test_backend_connections_are_pooled(nursery: trio.Nursery) -> None:
    connections: list[int] = []

    async def keep_alive(stream: trio.SocketStream) -> None:
        connections.append(1)
        await instance_backend("pooled")(stream)  # type: ignore[operator]

    edge = await start_edge(nursery, table(await start_server(nursery, keep_alive)))
    for _ in range(5):  # a new client connection each time: only the backend side is reused
        async with client(edge) as http:
            assert (await http.get("/")).text == "pooled"
    assert len(connections) == 1


async def test_stop_drains_in_flight_requests_and_refuses_new_ones(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def slow(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        await read_request(stream, conn)
        await release.wait()
        await respond(stream, conn, 200, b"finished")

    routes = table(await start_server(nursery, slow))
    shutdown, stopped = trio.Event(), trio.Event()

    async def run_edge(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(CONFIG, StaticSource(routes), shutdown=shutdown, task_status=task_status)
        stopped.set()

    port = await nursery.start(run_edge)
    results: list[httpx.Response] = []

    async def in_flight() -> None:
        async with client(port) as http:
            results.append(await http.get("/"))

    nursery.start_soon(in_flight)
    await trio.testing.wait_all_tasks_blocked()
    shutdown.set()
    await trio.testing.wait_all_tasks_blocked()
    assert not stopped.is_set()  # still draining the request in flight
    try:
        async with client(port) as http:
            await http.get("/")
        raise AssertionError("a new connection was accepted while draining")
    except httpx.ConnectError:
        pass
    release.set()
    with trio.fail_after(5):
        await stopped.wait()
    assert results[0].text == "finished"
    assert results[0].headers["connection"] == "close"


async def test_healthz_on_the_admin_listener(nursery: trio.Nursery) -> None:
    report = {"status": "ok", "control": "unreachable", "serving_last_table": True}
    port = await nursery.start(serve_admin, "127.0.0.1", 0, lambda: dict(report))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        health = await http.get("/healthz", headers={"Host": "anything.localhost"})
        other = await http.get("/")
        report["status"] = "draining"
        draining = await http.get("/healthz")
    assert health.status_code == 200
    assert health.json()["control"] == "unreachable"
    assert health.json()["serving_last_table"]
    assert other.status_code == 404
    assert draining.status_code == 503


async def test_access_lines_are_shipped_to_the_control_plane(nursery: trio.Nursery) -> None:
    posted: list[dict[str, object]] = []

    async def control(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request, body = await read_request(stream, conn)
        assert request.target == b"/v1/logs"
        assert (b"authorization", b"Bearer edge-token") in list(request.headers)
        posted.extend(json.loads(body)["lines"])
        await respond(stream, conn, 200, b"{}")

    control_port = await start_server(nursery, control)
    routes = table(await start_server(nursery, json_backend("a")))
    async with httpx.AsyncClient() as http_client:
        shipper = LogShipper(http_client, f"http://127.0.0.1:{control_port}", "edge-token")
        edge = Edge(CONFIG, StaticSource(routes), shipper)
        port = await nursery.start(partial(serve, CONFIG, StaticSource(routes), edge=edge))
        async with client(port) as http:
            await http.get("/shipped")
        assert await shipper.flush_once()
    (line,) = posted
    assert line["app"] == "hello"
    assert line["source"] == "router"
    assert "GET hello.localhost/shipped 200" in str(line["line"])


async def test_shipping_queue_is_bounded_and_counts_drops() -> None:
    from edge.accesslog import AccessRecord

    async with httpx.AsyncClient() as http_client:
        shipper = LogShipper(http_client, "http://127.0.0.1:9", None, capacity=2)
        record = AccessRecord("id", "GET", "h", "/", "app", "i", "b", 200, 1, 1.0)
        for _ in range(5):
            shipper.record(record)
        assert shipper.dropped == 3
        assert not await shipper.flush_once()  # nothing listens: the batch is dropped, counted
        assert shipper.dropped == 5
