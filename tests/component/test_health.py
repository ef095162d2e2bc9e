"""Health checks against real listeners on loopback."""

from __future__ import annotations

import contextlib
import socket
import time
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


async def busy_agent(seconds: float) -> None:
    """Keep this event loop busy for `seconds`, as the old per-instance /proc scans did:
    synchronous work in 0.1 s slices, yielding only between them."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.1)
        await trio.lowlevel.checkpoint()


async def test_a_busy_agent_does_not_fail_a_healthy_port(nursery: trio.Nursery) -> None:
    """The check's 1 s is the instance's time to accept, not the node's time to get back to
    the check: an event loop blocked longer than the timeout (a node agent busy with a
    hundred instances) must not turn a listening port into a crash."""
    port = await serve(nursery, b"200 OK")
    answers: list[tuple[bool, str]] = []

    async def run_check() -> None:
        answers.append(await health.check("port", "127.0.0.1", port, timeout=0.5))

    async with trio.open_nursery() as checks:
        checks.start_soon(run_check)
        await busy_agent(1.0)
    assert answers == [(True, "")]


async def test_a_busy_agent_does_not_fail_a_healthy_http_path(nursery: trio.Nursery) -> None:
    port = await serve(nursery, b"200 OK")
    answers: list[tuple[bool, str]] = []

    async def run_check() -> None:
        answers.append(await health.check("http:/", "127.0.0.1", port, timeout=0.5))

    async with trio.open_nursery() as checks:
        checks.start_soon(run_check)
        await busy_agent(1.0)
    # The server runs on this same (blocked) loop, so it answers only once the loop is
    # free again: the check must still be waiting for it then, not have given up.
    assert answers == [(True, "")]


async def test_a_port_that_never_accepts_still_fails_within_the_timeout() -> None:
    """A full accept queue (a hung app) still fails the check, in about the timeout."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        # Fill the backlog so further SYNs are dropped and connects hang.
        held = []
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            held.append(s)
        try:
            began = trio.current_time()
            ok, why = await health.check("port", "127.0.0.1", port, timeout=0.3)
            assert (ok, why) == (False, f"port {port} did not accept a connection within 0.3 s")
            assert trio.current_time() - began < 5
        finally:
            for s in held:
                s.close()
