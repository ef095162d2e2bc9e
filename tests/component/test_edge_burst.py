"""A burst of clients at once, each with one request, against backends that fail under it:
every client gets a whole answer (the backend's, after a retry where one is allowed, or
the edge's 502/503 naming why) well within the route's timeout, and none waits for ever.

The backends are real servers on loopback ports: a trio one that resets or closes some
connections before answering (which ones is decided by a header each client sends, so the
outcome each client is owed is known), and `python3 -m http.server`, the issue's case.
"""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from edge.routes import Backend, Route, RouteOptions, RouteTable
from edge.upstream import MAX_REPLAYS
from tests.component.test_edge_proxy import CONFIG, start_edge

CLIENTS = 400
HTTP_SERVER_CLIENTS = 500
ROUTE_TIMEOUT = 8.0
CONFIG_BURST = replace(CONFIG, connect_timeout=2.0)
# A client's whole wait: the route's timeout for the answer, plus every connect attempt.
PATIENCE = ROUTE_TIMEOUT + CONFIG_BURST.connect_timeout * CONFIG_BURST.max_attempts + 2.0


def burst_table(port: int) -> RouteTable:
    options = RouteOptions(timeout=ROUTE_TIMEOUT)
    backend = Backend(f"127.0.0.1:{port}", "i-0")
    return RouteTable(
        routes=(Route("hello.localhost", "/", "hello", (backend,), options),), etag="t"
    )


def reset(sock: trio.socket.SocketType) -> None:
    """Close with an RST rather than a FIN (SO_LINGER on with a zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Flaky:
    """A backend that fails a client's first attempts by that client's number (`X-Client`):
    n % 3 == 0 is reset once after its head was read, n % 3 == 1 closed twice without a
    word, the rest answered at once. It counts each client's attempts."""

    def __init__(self) -> None:
        self.attempts: Counter[int] = Counter()

    async def serve(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        client = int(data.split(b"X-Client: ", 1)[1].split(b"\r\n", 1)[0])
        if (
            b"\r\ncontent-length: 5\r\n" in data.lower()
        ):  # read the body too: unread bytes make a reset
            while not data.endswith(b"hello"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
        self.attempts[client] += 1
        attempt = self.attempts[client]
        if client % 3 == 0 and attempt == 1:
            return reset(stream.socket)
        if client % 3 == 1 and attempt <= 2:
            return await stream.aclose()
        body = b"ok %d" % client
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b"
            % (len(body), body)
        )
        await stream.aclose()


async def ask(port: int, request: bytes) -> bytes | None:
    """Send `request` on a new connection and read until the edge closes; None if the edge
    kept the client waiting longer than PATIENCE."""
    with trio.move_on_after(PATIENCE):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            data = b""
            try:
                while chunk := await stream.receive_some(65536):
                    data += chunk
            except trio.BrokenResourceError:
                pass  # a reset: what arrived before it is the answer
            return data
    return None


def get(client: int, path: bytes = b"/file.txt") -> bytes:
    return (
        b"GET %b HTTP/1.1\r\nHost: hello.localhost\r\nX-Client: %d\r\n"
        b"Connection: close\r\n\r\n" % (path, client)
    )


def post(client: int) -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: hello.localhost\r\nX-Client: %d\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\nhello" % client
    )


async def burst(port: int, requests: list[bytes]) -> list[bytes | None]:
    """Every request at once, each on its own connection; the answers in order."""
    answers: list[bytes | None] = [None] * len(requests)

    async def one(index: int) -> None:
        answers[index] = await ask(port, requests[index])

    async with trio.open_nursery() as nursery:
        for index in range(len(requests)):
            nursery.start_soon(one, index)
    return answers


def complete(answer: bytes) -> bool:
    """Whether `answer` is a whole response: a head and all of its Content-Length body."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1."):
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) == int(value)
    return False


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def tally(answers: list[bytes | None]) -> Counter[str]:
    """How many clients got what: a status, a clean close, a cut answer, or nothing."""
    counts: Counter[str] = Counter()
    for answer in answers:
        if answer is None:
            counts["hung"] += 1
        elif answer == b"":
            counts["closed"] += 1
        elif not complete(answer):
            counts["incomplete"] += 1
        else:
            counts[str(status(answer))] += 1
    return counts


def edge_made(answer: bytes) -> bool:
    return b"\r\nX-Foundry-Router-Error: " in answer


def reason(answer: bytes) -> bytes:
    """The edge's error code in `answer`, or b"" if the backend answered."""
    if not edge_made(answer):
        return b""
    return answer.split(b"\r\nX-Foundry-Router-Error: ", 1)[1].split(b"\r\n", 1)[0]


async def test_a_burst_against_a_resetting_backend_answers_every_client(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.access")
    flaky = Flaky()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=16)
    await nursery.start(trio.serve_listeners, flaky.serve, listeners)
    edge = await start_edge(
        nursery, burst_table(listeners[0].socket.getsockname()[1]), CONFIG_BURST
    )
    # Every tenth client posts a body: a POST the backend dropped is not the edge's to replay.
    requests = [post(n) if n % 10 == 3 else get(n, b"/c/%d" % n) for n in range(CLIENTS)]
    started = trio.current_time()
    answers = await burst(edge, requests)
    took = trio.current_time() - started
    counts = tally(answers)
    print(f"resetting backend: {dict(counts)} in {took:.1f} s")
    logged = {
        int(line.split(" path=/c/", 1)[1].split(" ", 1)[0]): line
        for line in (r.getMessage() for r in caplog.records)
        if " path=/c/" in line
    }
    assert counts["hung"] == counts["incomplete"] == counts["closed"] == 0, counts
    for n, answer in enumerate(answers):
        assert answer is not None
        assert status(answer) == 200 or (status(answer) in (502, 503) and edge_made(answer))
        if n % 10 == 3:  # a POST the backend dropped after its body went out: never replayed
            assert flaky.attempts[n] <= 1, answer
        else:  # a GET whose connection closed unanswered is sent again on a fresh one,
            # and given up only after the last replay allowed
            if reason(answer) == b"backend-failed":
                assert f" replays={MAX_REPLAYS}" in logged[n], (logged[n], counts)
            if status(answer) != 200:
                assert f" error={reason(answer).decode()} " in logged[n], logged[n]
    assert took < PATIENCE


@pytest.fixture
async def http_server(tmp_path: Path) -> AsyncIterator[int]:
    """`python3 -m http.server` on a fresh loopback port, serving one small file."""
    (tmp_path / "file.txt").write_bytes(b"hello\n")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with trio.fail_after(10):
            while True:
                try:
                    (await trio.open_tcp_stream("127.0.0.1", port)).socket.close()
                    break
                except OSError:
                    await trio.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(5)


async def test_a_burst_against_python_http_server_answers_every_client(
    nursery: trio.Nursery, http_server: int
) -> None:
    edge = await start_edge(nursery, burst_table(http_server), CONFIG_BURST)
    started = trio.current_time()
    answers = await burst(edge, [get(n) for n in range(HTTP_SERVER_CLIENTS)])
    took = trio.current_time() - started
    counts = tally(answers)
    print(f"python3 -m http.server: {dict(counts)} in {took:.1f} s")
    assert counts["hung"] == counts["incomplete"] == counts["closed"] == 0, counts
    for answer in answers:
        assert answer is not None
        assert status(answer) == 200 or (status(answer) in (502, 503) and edge_made(answer))
    assert took < PATIENCE
