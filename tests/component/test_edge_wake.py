"""Serverless at the edge: requests held while an app wakes, and concurrency reports.

A real edge on a loopback port follows a fake control plane (trio + h11) through
the real RouteSync long-poll; the fake also answers the wake and metrics calls
and records them. Backends are real loopback servers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import h11
import httpx
import trio

from edge.metrics import report
from edge.proxy import Edge, EdgeConfig, serve
from edge.routesync import RouteSync
from tests.component import peers
from tests.component.conftest import wait_for
from tests.component.test_edge_proxy import (
    WEBSOCKET_HANDSHAKE,
    read_raw_response,
    start_server,
    websocket_echo,
)

CONFIG = EdgeConfig(host="127.0.0.1", port=0, control_url=None, token="edge-tok")


def route(port: int | None, *, wakeable: bool = True) -> dict[str, object]:
    backends = [{"address": f"127.0.0.1:{port}", "instance": "hello-1"}] if port else []
    item: dict[str, object] = {"host": "hello.localhost", "path": "/", "app": "hello"}
    item["backends"] = backends
    if wakeable:
        item["wakeable"] = True
    return item


class Control:
    """Long-polled /v1/routes, plus POST /v1/apps/<app>/wake and /v1/metrics, recorded."""

    def __init__(self, routes: list[dict[str, object]]) -> None:
        self.etag, self.routes = "e0", routes
        self.wakes: list[tuple[str, str]] = []  # (path, Authorization)
        self.metrics: list[dict[str, dict[str, float]]] = []
        self._changed = trio.Event()

    def update(self, routes: list[dict[str, object]]) -> None:
        self.etag, self.routes = f"e{int(self.etag[1:]) + 1}", routes
        self._changed.set()
        self._changed = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while (got := await _read(stream, conn)) is not None:
            request, body = got
            path, _, query = request.target.decode().partition("?")
            auth = dict(request.headers).get(b"authorization", b"").decode()
            if path == "/v1/routes":
                if f"etag={self.etag}" in query:
                    with trio.move_on_after(5):
                        await self._changed.wait()
                answer: object = {"etag": self.etag, "routes": self.routes}
            elif path.endswith("/wake"):
                self.wakes.append((path, auth))
                answer = {"app": path.split("/")[3], "waking": True}
            else:
                self.metrics.append(json.loads(body)["apps"])
                answer = {"ok": True}
            data = json.dumps(answer).encode()
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
            await stream.send_all(conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
            conn.start_next_cycle()


async def _read(
    stream: trio.SocketStream, conn: h11.Connection
) -> tuple[h11.Request, bytes] | None:
    return await peers.read_request(stream, conn)


async def start_edge(
    nursery: trio.Nursery, control: Control, config: EdgeConfig = CONFIG
) -> tuple[int, Edge]:
    """An edge wired as `edge.main` wires a worker: route sync, wake calls, metrics."""
    control_port = await start_server(nursery, control.handle)
    url = f"http://127.0.0.1:{control_port}"
    config = replace(config, control_url=url)
    client = httpx.AsyncClient()
    sync = RouteSync(client, url, config.token, wait=5)
    await nursery.start(sync.run)
    edge = Edge(config, sync)
    await nursery.start(edge.wakes.run_calls, client, url, config.token)
    reporter = partial(report, interval=config.metrics_interval)
    await nursery.start(reporter, edge.concurrency, client, url, config.token)
    port = int(await nursery.start(partial(serve, edge=edge), config, sync))
    return port, edge


OK_AND_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def ordered_backend(seen: list[int]) -> object:
    """A backend that records each request's `?n=` in the order connections arrive."""

    async def serve_ordered(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.socket.socket() as listener:
            await listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            task_status.started(listener.getsockname()[1])
            await accept(listener)

    async def accept(listener: trio.socket.SocketType) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                sock, _ = await listener.accept()
                index = len(seen)
                seen.append(-1)  # the slot of this connection, in accept order
                nursery.start_soon(answer, trio.SocketStream(sock), index)

    async def answer(stream: trio.SocketStream, index: int) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        found = re.search(rb"n=(\d+)", data)
        assert found is not None
        seen[index] = int(found.group(1))
        async with stream:  # one request per connection, so each counts in `seen`
            await stream.send_all(OK_AND_CLOSE)

    return serve_ordered


async def get(port: int, target: str = "/") -> bytes:
    """One GET on a fresh connection; the whole raw response."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            b"GET %b HTTP/1.1\r\nHost: hello.localhost\r\nConnection: close\r\n\r\n"
            % target.encode()
        )
        return await read_raw_response(stream)


async def test_held_requests_cause_one_wake_then_go_through_in_order(
    nursery: trio.Nursery,
) -> None:
    seen: list[int] = []
    backend = int(await nursery.start(ordered_backend(seen)))  # type: ignore[arg-type]
    control = Control([route(None)])
    port, edge = await start_edge(nursery, control)
    answers: dict[int, bytes] = {}

    async def request(n: int) -> None:
        answers[n] = await get(port, f"/?n={n}")

    def held(count: int) -> Callable[[], bool]:
        return lambda: edge.wakes.held("hello") == count

    async with trio.open_nursery() as clients:
        for n in range(20):
            clients.start_soon(request, n)
            await wait_for(held(n + 1), what=f"request {n} to be held")
        await wait_for(lambda: len(control.wakes) == 1)
        await trio.sleep(0.2)  # the test: a while passes and the held requests stay held
        assert not answers  # still held: nothing answered 503
        control.update([route(backend)])

    assert control.wakes == [("/v1/apps/hello/wake", "Bearer edge-tok")]
    assert seen == list(range(20))  # released in arrival order
    for n in range(20):
        head = answers[n].partition(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 200 "), answers[n]
        waited = re.search(rb"\r\nX-Foundry-Cold-Start: (\d+)ms", head)
        assert waited is not None
        assert int(waited.group(1)) >= 200
    # Warm now: no wake, no header.
    warm = await get(port, "/?n=99")
    assert warm.startswith(b"HTTP/1.1 200 ")
    assert b"Cold-Start" not in warm
    assert len(control.wakes) == 1


async def test_a_wake_that_never_comes_is_503_wake_timeout(nursery: trio.Nursery) -> None:
    control = Control([route(None)])
    port, _ = await start_edge(nursery, control, replace(CONFIG, wake_timeout=0.3))
    started = trio.current_time()
    wire = await get(port)
    assert 0.3 <= trio.current_time() - started < 2
    head, _, body = wire.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nX-Foundry-Router-Error: wake-timeout" in head
    assert b"no instance came up within 0.3 s" in body
    assert len(control.wakes) == 1


async def test_the_hold_queue_is_bounded(nursery: trio.Nursery) -> None:
    control = Control([route(None)])
    port, edge = await start_edge(nursery, control, replace(CONFIG, max_held=2))
    async with trio.open_nursery() as clients:
        for _ in range(2):
            clients.start_soon(get, port)
        await wait_for(lambda: edge.wakes.held("hello") == 2)
        wire = await get(port)
        assert wire.startswith(b"HTTP/1.1 503 ")
        assert b"X-Foundry-Router-Error: wake-queue-full" in wire
        clients.cancel_scope.cancel()


async def test_a_route_that_does_not_wake_is_503_at_once(nursery: trio.Nursery) -> None:
    control = Control([route(None, wakeable=False)])
    port, _ = await start_edge(nursery, control)
    with trio.fail_after(0.5):
        wire = await get(port)
    assert wire.startswith(b"HTTP/1.1 503 ")
    assert b"X-Foundry-Router-Error: no-instance" in wire
    await trio.sleep(0.1)  # the test: no wake is asked for, even a while later
    assert control.wakes == []


async def test_in_flight_requests_and_tunnels_are_reported(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def slow_or_websocket(stream: trio.SocketStream) -> None:
        peek = await stream.receive_some(65536)
        if b"Upgrade: websocket" in peek:
            return await websocket_echo(_Replay(stream, peek))  # type: ignore[arg-type]
        await release.wait()
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    backend = await start_server(nursery, slow_or_websocket)
    control = Control([route(backend)])
    port, edge = await start_edge(nursery, control, replace(CONFIG, metrics_interval=0.05))
    async with trio.open_nursery() as clients:
        for _ in range(2):
            clients.start_soon(get, port)
        await wait_for(lambda: edge.concurrency.in_flight("hello") == 2)
        await wait_for(
            lambda: any(m.get("hello", {}).get("in_flight") == 2 for m in control.metrics)
        )
        async with await trio.open_tcp_stream("127.0.0.1", port) as ws:
            await ws.send_all(WEBSOCKET_HANDSHAKE)
            assert (await ws.receive_some(65536)).startswith(b"HTTP/1.1 101 ")
            await wait_for(lambda: control.metrics[-1].get("hello", {}).get("tunnels") == 1)
            release.set()
        await wait_for(lambda: control.metrics[-1].get("hello", {}).get("tunnels") == 0)
    # Activity stopped: one last zero sample, then silence.
    await wait_for(lambda: control.metrics[-1] == {"hello": {"in_flight": 0.0, "tunnels": 0}})
    count = len(control.metrics)
    await trio.sleep(0.3)  # the test: several report intervals pass and nothing is sent
    assert len(control.metrics) == count
    assert all(set(m) == {"hello"} for m in control.metrics)


class _Replay:
    """A stream whose first read returns bytes already taken from it."""

    def __init__(self, stream: trio.SocketStream, first: bytes) -> None:
        self._stream, self._first = stream, first

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        first, self._first = self._first, b""
        return first or await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes) -> None:
        await self._stream.send_all(data)
