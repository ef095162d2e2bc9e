"""The edge's refusals, asserted as raw bytes: error reasons, smuggling, slowloris, limits,
and a 100 MB body streamed both ways without the process's memory growing."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import pytest
import trio

from edge.proxy import EdgeConfig, serve
from edge.routesync import StaticSource
from tests.component.test_edge_proxy import (
    CONFIG,
    closed_port,
    json_backend,
    raw_backend,
    raw_client,
    read_raw_response,
    start_edge,
    start_server,
    table,
)


async def exchange(port: int, raw: bytes) -> bytes:
    """Send `raw` on a fresh connection; everything the edge answers until it closes."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(raw)
        with trio.fail_after(5):
            return await read_raw_response(stream)


GET = b"GET / HTTP/1.1\r\nHost: hello.localhost\r\nConnection: close\r\n\r\n"


async def test_each_edge_error_names_its_reason(nursery: trio.Nursery) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    slow = await start_server(nursery, silent)
    cases = [
        (table(await closed_port(), host="other.localhost"), 404, b"unknown-route"),
        (table([]), 503, b"no-instance"),
        (table(await closed_port()), 502, b"backend-unavailable"),
        (table(slow), 504, b"backend-timeout"),
    ]
    config = replace(CONFIG, response_timeout=0.3)
    for routes, status, reason in cases:
        wire = await exchange(await start_edge(nursery, routes, config), GET)
        assert wire.startswith(b"HTTP/1.1 %d " % status), wire
        assert b"\r\nX-Foundry-Router-Error: %b\r\n" % reason in wire


async def test_garbage_from_the_backend_is_502_backend_failed(nursery: trio.Nursery) -> None:
    edge = await start_edge(nursery, table(await start_server(nursery, raw_backend(b"nonsense"))))
    wire = await exchange(edge, GET)
    assert wire.startswith(b"HTTP/1.1 502 ")
    assert b"X-Foundry-Router-Error: backend-failed" in wire


SMUGGLING = {
    "CL.TE": b"POST / HTTP/1.1\r\nHost: hello.localhost\r\nContent-Length: 6\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "TE.CL": b"POST / HTTP/1.1\r\nHost: hello.localhost\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    "duplicate TE": b"POST / HTTP/1.1\r\nHost: hello.localhost\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE list": b"POST / HTTP/1.1\r\nHost: hello.localhost\r\n"
    b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "obfuscated TE": b"POST / HTTP/1.1\r\nHost: hello.localhost\r\nTransfer-Encoding: xchunked\r\n"
    b"\r\n0\r\n\r\n",
    "TE space before colon": b"POST / HTTP/1.1\r\nHost: hello.localhost\r\n"
    b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "TE empty": b"POST / HTTP/1.1\r\nHost: hello.localhost\r\nTransfer-Encoding:\r\n\r\n",
    "two lengths": b"POST / HTTP/1.1\r\nHost: hello.localhost\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\nab",
    "bare LF": b"GET / HTTP/1.1\nHost: hello.localhost\n\n",
    "bare CR": b"GET / HTTP/1.1\rHost: hello.localhost\r\r\n\r\n",
    "CR in a header": b"GET / HTTP/1.1\r\nHost: hello.localhost\r\nX: a\rb\r\n\r\n",
    "two Hosts": b"GET / HTTP/1.1\r\nHost: hello.localhost\r\nHost: evil.localhost\r\n\r\n",
    "bad Host": b"GET / HTTP/1.1\r\nHost: hello .localhost\r\n\r\n",
}


@pytest.mark.parametrize("raw", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_smuggling_attempts_are_400_and_never_reach_a_backend(
    nursery: trio.Nursery, raw: bytes
) -> None:
    reached: list[bytes] = []

    async def backend(stream: trio.SocketStream) -> None:
        reached.append(await stream.receive_some(65536))

    edge = await start_edge(nursery, table(await start_server(nursery, backend)))
    wire = await exchange(edge, raw)
    assert wire.startswith(b"HTTP/1.1 400 "), wire
    assert b"\r\nConnection: close\r\n" in wire
    assert b"X-Foundry-Router-Error: bad-request" in wire
    assert reached == []


async def test_slowloris_head_gets_408_after_the_header_deadline(nursery: trio.Nursery) -> None:
    config = replace(CONFIG, header_timeout=0.3, idle_timeout=30)
    edge = await start_edge(nursery, table(await start_server(nursery, json_backend("a"))), config)
    async with await trio.open_tcp_stream("127.0.0.1", edge) as stream:

        async def trickle() -> None:
            """A header line every 50 ms: never idle, never done."""
            try:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: hello.localhost\r\n")
                while True:
                    await trio.sleep(0.05)
                    await stream.send_all(b"X-Slow: 1\r\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        started = trio.current_time()
        async with trio.open_nursery() as inner:
            inner.start_soon(trickle)
            with trio.fail_after(5):
                wire = await read_raw_response(stream)
            inner.cancel_scope.cancel()
    assert wire.startswith(b"HTTP/1.1 408 ")
    assert b"X-Foundry-Router-Error: request-timeout" in wire
    assert trio.current_time() - started < 1.5


async def test_oversized_headers_are_431(nursery: trio.Nursery) -> None:
    edge = await start_edge(nursery, table(await closed_port()))
    big = b"GET / HTTP/1.1\r\nHost: hello.localhost\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    wire = await exchange(edge, big)
    assert wire.startswith(b"HTTP/1.1 431 ")
    assert b"X-Foundry-Router-Error: header-too-large" in wire


async def test_body_over_the_limit_is_413(nursery: trio.Nursery) -> None:
    config = replace(CONFIG, max_body_bytes=1000)
    edge = await start_edge(nursery, table(await start_server(nursery, json_backend("a"))), config)
    wire = await exchange(
        edge, b"POST / HTTP/1.1\r\nHost: hello.localhost\r\nContent-Length: 1001\r\n\r\n"
    )
    assert wire.startswith(b"HTTP/1.1 413 ")
    assert b"X-Foundry-Router-Error: body-too-large" in wire


HUNDRED_MB = 100 * 1024 * 1024
PIECE = b"x" * 65536


async def test_100_mb_streams_both_ways_without_memory_growth(nursery: trio.Nursery) -> None:
    """The body goes up to a backend that counts it, and 100 MB come back down."""

    async def counter(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        seen = len(data.partition(b"\r\n\r\n")[2])
        while seen < HUNDRED_MB:
            seen += len(await stream.receive_some(65536))
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % HUNDRED_MB)
        for _ in range(HUNDRED_MB // len(PIECE)):
            await stream.send_all(PIECE)

    config = replace(CONFIG, max_body_bytes=None)
    edge = await start_edge(nursery, table(await start_server(nursery, counter)), config)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        received = await _upload_and_download(edge)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert received == HUNDRED_MB
    # Edge, backend and client all live in this process; together they stay small.
    assert peak < 4 * 1024 * 1024, f"peak grew by {peak / 1e6:.1f} MB"


async def _upload_and_download(edge: int) -> int:
    async with await trio.open_tcp_stream("127.0.0.1", edge) as stream:

        async def upload() -> None:
            await stream.send_all(
                b"POST / HTTP/1.1\r\nHost: hello.localhost\r\nContent-Length: %d\r\n\r\n"
                % HUNDRED_MB
            )
            for _ in range(HUNDRED_MB // len(PIECE)):
                await stream.send_all(PIECE)

        received = 0
        head = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            with trio.fail_after(60):
                while b"\r\n\r\n" not in head:
                    head += await stream.receive_some(65536)
                received = len(head.partition(b"\r\n\r\n")[2])
                while received < HUNDRED_MB:
                    chunk = await stream.receive_some(65536)
                    assert chunk
                    received += len(chunk)
        assert head.startswith(b"HTTP/1.1 200 ")
        return received


def test_config_default_limits_match_the_contract() -> None:
    config = EdgeConfig(host="127.0.0.1", port=0, control_url=None, token=None)
    assert (config.header_timeout, config.max_header_bytes) == (10.0, 64 * 1024)
    assert config.response_timeout == 900.0
    assert config.workers == 0
    assert config.ship_access_logs is False


async def test_an_idle_keep_alive_connection_is_closed_silently(nursery: trio.Nursery) -> None:
    config = replace(CONFIG, idle_timeout=0.3)
    edge = await start_edge(nursery, table(await start_server(nursery, json_backend("a"))), config)
    async with await trio.open_tcp_stream("127.0.0.1", edge) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: hello.localhost\r\n\r\n")
        started = trio.current_time()
        with trio.fail_after(5):
            wire = await read_raw_response(stream)
    assert wire.startswith(b"HTTP/1.1 200 ")
    assert wire.count(b"HTTP/1.1") == 1  # nothing after
    assert 0.3 <= trio.current_time() - started < 1.5


async def test_stopping_closes_idle_connections_at_once(nursery: trio.Nursery) -> None:
    routes = table(await start_server(nursery, json_backend("a")))
    shutdown, stopped = trio.Event(), trio.Event()

    async def run_edge(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(
            replace(CONFIG, idle_timeout=60, drain_timeout=30),
            StaticSource(routes),
            shutdown=shutdown,
            task_status=task_status,
        )
        stopped.set()

    edge = await nursery.start(run_edge)
    async with await raw_client(edge) as raw:
        response, _ = await raw.get("/")  # the whole answer: the connection is idle now
        assert response.status_code == 200
        shutdown.set()  # the drain must not wait for an idle connection
        with trio.fail_after(5):
            assert await read_raw_response(raw.stream) == b""
            await stopped.wait()


async def test_a_backend_stalling_mid_body_aborts_the_response(nursery: trio.Nursery) -> None:
    async def stalls(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await trio.sleep_forever()

    config = replace(CONFIG, response_timeout=0.3)
    edge = await start_edge(nursery, table(await start_server(nursery, stalls)), config)
    async with await trio.open_tcp_stream("127.0.0.1", edge) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: hello.localhost\r\n\r\n")
        started = trio.current_time()
        with trio.fail_after(5):
            wire = await read_raw_response(stream)
    assert wire.startswith(b"HTTP/1.1 200 ")
    assert wire.endswith(b"\r\n\r\nhalf")  # cut short
    assert 0.3 <= trio.current_time() - started < 1.5
