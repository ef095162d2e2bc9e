"""Health checks against real listeners on loopback."""

from __future__ import annotations

from functools import partial

import trio

from node import health


async def answer_with(status: bytes, stream: trio.SocketStream) -> None:
    async with stream:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")


async def serve(nursery: trio.Nursery, status: bytes) -> int:
    listeners = await nursery.start(
        partial(trio.serve_tcp, partial(answer_with, status), 0, host="127.0.0.1")
    )
    return int(listeners[0].socket.getsockname()[1])


async def test_port_check_sees_a_listener_and_a_closed_port(nursery: trio.Nursery) -> None:
    port = await serve(nursery, b"200 OK")
    assert await health.check("port", "127.0.0.1", port) == (True, "")
    nursery.cancel_scope.cancel()
    ok, why = await health.check("port", "127.0.0.1", 1)
    assert not ok
    assert "refused" in why


async def test_http_check_wants_a_2xx(nursery: trio.Nursery) -> None:
    good = await serve(nursery, b"204 No Content")
    bad = await serve(nursery, b"500 Internal Server Error")
    assert (await health.check("http:/healthz", "127.0.0.1", good))[0]
    ok, why = await health.check("http:/healthz", "127.0.0.1", bad)
    assert not ok
    assert "500" in why


async def test_http_check_times_out_on_a_silent_backend(nursery: trio.Nursery) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    ok, why = await health.check("http:/", "127.0.0.1", port, timeout=0.2)
    assert not ok
    assert "did not answer" in why


async def test_process_check_needs_nothing() -> None:
    assert await health.check("process", "127.0.0.1", 0) == (True, "")
