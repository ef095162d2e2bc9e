"""The real edge on a loopback port, in front of small trio backends written here.

Backends speak HTTP through h11 (or raw bytes where the wire shape is the point),
so the edge's own parser is never checking itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

import h11
import httpx
import pytest
import trio
import trio.testing

from edge.proxy import EdgeConfig, serve
from edge.routes import Backend, Route, RouteTable
from edge.routesync import StaticSource
from tests.component import peers

Handler = Callable[[trio.SocketStream], Awaitable[None]]
CONFIG = EdgeConfig(host="127.0.0.1", port=0, control_url=None, token=None)


async def start_server(nursery: trio.Nursery, handler: Handler) -> int:
    """Serve `handler` on 127.0.0.1 at a fresh port; returns the port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, handler, listeners)
    return int(listeners[0].socket.getsockname()[1])


async def closed_port() -> int:
    """A loopback port that refuses connections."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = int(listener.socket.getsockname()[1])
    await listener.aclose()
    return port


async def read_request(
    stream: trio.SocketStream, conn: h11.Connection
) -> tuple[h11.Request, bytes]:
    got = await peers.read_request(stream, conn)
    assert got is not None, "the edge closed the connection before a whole request"
    return got


async def respond(
    stream: trio.SocketStream, conn: h11.Connection, status: int, body: bytes, **headers: str
) -> None:
    pairs = [(k.replace("_", "-"), v) for k, v in headers.items()]
    pairs.append(("Content-Length", str(len(body))))
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=pairs)))
    await stream.send_all(conn.send(h11.Data(data=body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


def json_backend(name: str) -> Handler:
    """Answers every request with JSON describing it; `/echo` returns the body instead."""

    async def handler(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request, body = await read_request(stream, conn)
        if request.target.startswith(b"/echo"):
            return await respond(stream, conn, 200, body)
        seen = {
            "backend": name,
            "method": request.method.decode(),
            "target": request.target.decode(),
            "headers": [[k.decode(), v.decode()] for k, v in request.headers.raw_items()],
        }
        await respond(stream, conn, 200, json.dumps(seen).encode(), Content_Type="application/json")

    return handler


def keep_alive_backend() -> Handler:
    """`json_backend`'s answers, for as many requests as the connection carries."""

    async def handler(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while (got := await peers.read_request(stream, conn)) is not None:
            request, body = got
            if request.target.startswith(b"/echo"):
                await respond(stream, conn, 200, body)
            else:
                seen = {"target": request.target.decode()}
                await respond(stream, conn, 200, json.dumps(seen).encode())
            if conn.our_state is not h11.DONE:
                return
            conn.start_next_cycle()

    return handler


def raw_backend(answer: bytes) -> Handler:
    """Reads one request head, writes `answer` verbatim, then closes."""

    async def handler(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        await stream.send_all(answer)

    return handler


def table(port_or_ports: int | list[int], host: str = "hello.localhost") -> RouteTable:
    ports = port_or_ports if isinstance(port_or_ports, list) else [port_or_ports]
    backends = tuple(Backend(f"127.0.0.1:{p}", f"i-{i}") for i, p in enumerate(ports))
    return RouteTable(routes=(Route(host, "/", "hello", backends),), etag="t")


async def start_edge(nursery: trio.Nursery, routes: RouteTable, config: EdgeConfig = CONFIG) -> int:
    return int(await nursery.start(serve, config, StaticSource(routes)))


def client(port: int, host: str = "hello.localhost") -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Host": host})


def header(seen: dict[str, object], name: str) -> list[str]:
    pairs = seen["headers"]
    assert isinstance(pairs, list)
    return [v for k, v in pairs if k.lower() == name.lower()]


class RawClient:
    """A client connection whose responses are read with h11, for wire-level checks."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stream.aclose()

    async def response(self) -> tuple[h11.Response, bytes]:
        response, body = None, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                self.conn.start_next_cycle()
                return response, body

    def sent(self, target: str = "/") -> None:
        """Tell h11 about a GET that went out as raw bytes, so it can read the answer."""
        self.conn.send(h11.Request(method="GET", target=target, headers=[("Host", "x")]))
        self.conn.send(h11.EndOfMessage())

    async def get(
        self, target: str = "/", host: str = "hello.localhost"
    ) -> tuple[h11.Response, bytes]:
        request = h11.Request(method="GET", target=target, headers=[("Host", host)])
        await self.stream.send_all(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))
        return await self.response()


async def raw_client(port: int) -> RawClient:
    return RawClient(await trio.open_tcp_stream("127.0.0.1", port))


async def read_raw_response(stream: trio.SocketStream) -> bytes:
    """Everything until the peer closes."""
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def test_proxies_a_request_with_forwarding_headers(nursery: trio.Nursery) -> None:
    backend = await start_server(nursery, json_backend("a"))
    edge = await start_edge(nursery, table(backend))
    async with client(edge) as http:
        response = await http.get(
            "/some/path?q=1",
            headers={
                "Connection": "keep-alive, X-Drop",
                "X-Drop": "1",
                "X-Forwarded-For": "10.1.1.1",
            },
        )
    assert response.status_code == 200
    seen = response.json()
    assert seen["target"] == "/some/path?q=1"
    assert header(seen, "host") == ["hello.localhost"]
    assert header(seen, "x-forwarded-for") == ["127.0.0.1"]  # the spoofed hop is gone
    assert header(seen, "x-forwarded-proto") == ["http"]
    assert header(seen, "x-forwarded-host") == ["hello.localhost"]
    assert len(header(seen, "x-request-id")) == 1
    assert header(seen, "x-drop") == []


async def test_round_robin_alternates_backends(nursery: trio.Nursery) -> None:
    ports = [await start_server(nursery, json_backend(name)) for name in ("a", "b")]
    edge = await start_edge(nursery, table(ports))
    async with client(edge) as http:
        names = [(await http.get("/")).json()["backend"] for _ in range(4)]
    assert names == ["a", "b", "a", "b"]


async def test_unknown_host_is_404(nursery: trio.Nursery) -> None:
    edge = await start_edge(nursery, table(await closed_port()))
    async with client(edge, host="nope.localhost:8080") as http:
        response = await http.get("/")
    assert response.status_code == 404
    assert response.text == "no app is routed at nope.localhost:8080\n"
    assert response.headers["content-type"].startswith("text/plain")


async def test_route_without_backends_is_503(nursery: trio.Nursery) -> None:
    edge = await start_edge(nursery, table([]))
    async with client(edge) as http:
        response = await http.get("/")
    assert response.status_code == 503
    assert response.text == "hello has no running instance\n"


async def test_refused_backend_is_502(nursery: trio.Nursery) -> None:
    edge = await start_edge(nursery, table(await closed_port()))
    async with client(edge) as http:
        response = await http.get("/")
    assert response.status_code == 502
    assert response.text == "hello: backend failed\n"


async def test_refused_connection_is_retried_on_another_backend(nursery: trio.Nursery) -> None:
    good = await start_server(nursery, json_backend("good"))
    edge = await start_edge(nursery, table([await closed_port(), good]))
    async with client(edge) as http:
        responses = [await http.get("/") for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4
    assert {r.json()["backend"] for r in responses} == {"good"}


async def test_backend_that_never_answers_is_504(nursery: trio.Nursery) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    backend = await start_server(nursery, silent)
    edge = await start_edge(nursery, table(backend), replace(CONFIG, response_timeout=0.2))
    async with client(edge) as http:
        response = await http.get("/")
    assert response.status_code == 504


async def test_backend_speaking_garbage_is_502(nursery: trio.Nursery) -> None:
    backend = await start_server(nursery, raw_backend(b"SSH-2.0-OpenSSH\r\n\r\n"))
    edge = await start_edge(nursery, table(backend))
    async with client(edge) as http:
        response = await http.get("/")
    assert response.status_code == 502


async def test_large_post_body_is_echoed(nursery: trio.Nursery) -> None:
    backend = await start_server(nursery, json_backend("a"))
    edge = await start_edge(nursery, table(backend))
    payload = bytes(range(256)) * 4096  # 1 MiB
    async with client(edge) as http:
        response = await http.post("/echo", content=payload)
    assert response.status_code == 200
    assert response.content == payload


async def test_request_body_is_streamed_not_buffered(nursery: trio.Nursery) -> None:
    first_part = trio.Event()

    async def backend(stream: trio.SocketStream) -> None:
        data = b""
        while b"first" not in data:
            data += await stream.receive_some(65536)
        first_part.set()  # seen before the client has sent the rest
        while not data.endswith(b"0\r\n\r\n"):
            data += await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    edge = await start_edge(nursery, table(await start_server(nursery, backend)))
    async with await raw_client(edge) as raw:
        headers = [("Host", "hello.localhost"), ("Transfer-Encoding", "chunked")]
        request = h11.Request(method="POST", target="/", headers=headers)
        await raw.stream.send_all(raw.conn.send(request) + raw.conn.send(h11.Data(data=b"first")))
        with trio.fail_after(5):
            await first_part.wait()
        await raw.stream.send_all(
            raw.conn.send(h11.Data(data=b"rest")) + raw.conn.send(h11.EndOfMessage())
        )
        response, body = await raw.response()
        assert (response.status_code, body) == (200, b"ok")


async def test_response_body_is_streamed_not_buffered(nursery: trio.Nursery) -> None:
    client_got_first = trio.Event()

    async def backend(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        await read_request(stream, conn)
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=[])))
        await stream.send_all(conn.send(h11.Data(data=b"first")))
        await client_got_first.wait()
        await stream.send_all(conn.send(h11.Data(data=b"second")) + conn.send(h11.EndOfMessage()))

    edge = await start_edge(nursery, table(await start_server(nursery, backend)))
    async with client(edge) as http, http.stream("GET", "/") as response:
        chunks = response.aiter_raw()
        with trio.fail_after(5):
            assert await chunks.__anext__() == b"first"
        client_got_first.set()
        assert b"".join([c async for c in chunks]) == b"second"


async def test_chunked_backend_response_is_rechunked(nursery: trio.Nursery) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-App: 1\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    edge = await start_edge(nursery, table(await start_server(nursery, raw_backend(answer))))
    async with client(edge) as http:
        response = await http.get("/")
    assert response.status_code == 200
    assert response.text == "hello world"
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["x-app"] == "1"


async def test_response_delimited_by_close_is_chunked_to_http11_clients(
    nursery: trio.Nursery,
) -> None:
    answer = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    edge = await start_edge(nursery, table(await start_server(nursery, raw_backend(answer))))
    async with await raw_client(edge) as raw:
        response, body = await raw.get()
        assert body == b"until the end"
        assert (b"transfer-encoding", b"chunked") in list(response.headers)
        again, _ = await raw.get()  # the client connection survived
        assert again.status_code == 200


async def test_http10_client_gets_a_close_delimited_body(nursery: trio.Nursery) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    edge = await start_edge(nursery, table(await start_server(nursery, raw_backend(answer))))
    async with await trio.open_tcp_stream("127.0.0.1", edge) as stream:
        await stream.send_all(b"GET / HTTP/1.0\r\nHost: hello.localhost\r\n\r\n")
        wire = await read_raw_response(stream)
        head, _, body = wire.partition(b"\r\n\r\n")
        assert b"chunked" not in head.lower()
        assert b"connection: close" in head.lower()
        assert body == b"abc"


async def test_head_response_keeps_length_and_has_no_body(nursery: trio.Nursery) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    edge = await start_edge(nursery, table(await start_server(nursery, raw_backend(answer))))
    async with client(edge) as http:
        response = await http.head("/")
    assert response.status_code == 200
    assert response.headers["content-length"] == "1234"


async def test_two_requests_share_one_client_connection(nursery: trio.Nursery) -> None:
    backend = await start_server(nursery, json_backend("a"))
    edge = await start_edge(nursery, table(backend))
    async with await raw_client(edge) as raw:
        first, _ = await raw.get("/one")
        second, body = await raw.get("/two")
        assert (first.status_code, second.status_code) == (200, 200)
        assert json.loads(body)["target"] == "/two"


async def test_pipelined_requests_are_answered_in_order(nursery: trio.Nursery) -> None:
    backend = await start_server(nursery, json_backend("a"))
    edge = await start_edge(nursery, table(backend))
    async with await raw_client(edge) as raw:
        await raw.stream.send_all(
            b"GET /1 HTTP/1.1\r\nHost: hello.localhost\r\n\r\n"
            b"GET /2 HTTP/1.1\r\nHost: hello.localhost\r\n\r\n"
        )
        targets = []
        for _ in range(2):
            raw.sent()
            targets.append(json.loads((await raw.response())[1])["target"])
        assert targets == ["/1", "/2"]


async def test_plain_and_general_requests_mix_on_one_connection(nursery: trio.Nursery) -> None:
    """The fast path hands a connection's bytes to the general parser for a request it
    does not take (a body, an absolute-form target) and takes them back once that parser
    is at rest; pipelined or not, answers come in order."""
    backend = await start_server(nursery, keep_alive_backend())
    edge = await start_edge(nursery, table(backend))
    async with await raw_client(edge) as raw:
        await raw.stream.send_all(
            b"GET /1 HTTP/1.1\r\nHost: hello.localhost\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: hello.localhost\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /3 HTTP/1.1\r\nHost: hello.localhost\r\n\r\n"
        )
        raw.sent()
        assert json.loads((await raw.response())[1])["target"] == "/1"
        raw.conn.send(
            h11.Request(
                method="POST", target="/echo", headers=[("Host", "x"), ("Content-Length", "5")]
            )
        )
        raw.conn.send(h11.Data(data=b"hello"))
        raw.conn.send(h11.EndOfMessage())
        assert (await raw.response())[1] == b"hello"
        raw.sent()
        assert json.loads((await raw.response())[1])["target"] == "/3"
        for target in ("/4", "http://hello.localhost/5", "/6"):
            response, body = await raw.get(target)
            assert response.status_code == 200
            assert json.loads(body)["target"] == "/" + target.rsplit("/", 1)[1]
    async with await trio.open_tcp_stream("127.0.0.1", edge) as stream:  # HTTP/1.0 keep-alive
        for path in (b"/7", b"/8"):
            await stream.send_all(
                b"GET %b HTTP/1.0\r\nHost: hello.localhost\r\nConnection: keep-alive\r\n\r\n" % path
            )
            wire = b""
            while not wire.endswith(b'{"target": "%b"}' % path):
                wire += await stream.receive_some(65536)
            assert wire.startswith(b"HTTP/1.1 200 ")
            assert b"\r\nConnection: keep-alive\r\n" in wire


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: hello.localhost\n\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 999999999999\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"x" * 70_000 + b"\r\n\r\n", 431),
    ],
)
async def test_bad_requests_get_the_status_their_error_implies(
    nursery: trio.Nursery, request_bytes: bytes, status: int
) -> None:
    edge = await start_edge(nursery, table(await closed_port()))
    async with await trio.open_tcp_stream("127.0.0.1", edge) as stream:
        await stream.send_all(request_bytes)
        wire = await read_raw_response(stream)
        assert wire.startswith(b"HTTP/1.1 %d " % status)
        assert b"\r\nConnection: close\r\n" in wire


WEBSOCKET_HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: hello.localhost\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


async def websocket_echo(stream: trio.SocketStream) -> None:
    """Accepts a websocket handshake, then echoes bytes upper-cased until the peer closes."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, early = data.partition(b"\r\n\r\n")
    assert b"upgrade: websocket" in head.lower()
    assert b"connection: upgrade" in head.lower()
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n" + early.upper()
    )
    while data := await stream.receive_some(65536):
        await stream.send_all(data.upper())


async def test_websocket_upgrade_becomes_a_tunnel(nursery: trio.Nursery) -> None:
    edge = await start_edge(nursery, table(await start_server(nursery, websocket_echo)))
    async with await trio.open_tcp_stream("127.0.0.1", edge) as stream:
        await stream.send_all(WEBSOCKET_HANDSHAKE + b"early")
        received = b""
        while b"EARLY" not in received:
            received += await stream.receive_some(65536)
        head, _, rest = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: websocket" in head.lower()
        assert b"sec-websocket-accept" in head.lower()
        assert rest == b"EARLY"
        for word in (b"ping", b"\x81\x05hello"):
            await stream.send_all(word)
            echoed = b""
            while len(echoed) < len(word):
                echoed += await stream.receive_some(65536)
            assert echoed == word.upper()


async def test_tunnel_closes_the_client_when_the_backend_leaves(nursery: trio.Nursery) -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await raw_backend(
            b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nbye"
        )(stream)

    edge = await start_edge(nursery, table(await start_server(nursery, hang_up)))
    async with await trio.open_tcp_stream("127.0.0.1", edge) as stream:
        await stream.send_all(WEBSOCKET_HANDSHAKE)
        with trio.fail_after(5):
            wire = await read_raw_response(stream)
        assert wire.startswith(b"HTTP/1.1 101 ")
        assert wire.endswith(b"\r\n\r\nbye")


async def test_upgrade_answered_with_200_stays_http(nursery: trio.Nursery) -> None:
    backend = await start_server(nursery, json_backend("plain"))
    edge = await start_edge(nursery, table(backend))
    async with await raw_client(edge) as raw:
        await raw.stream.send_all(WEBSOCKET_HANDSHAKE)
        raw.sent("/ws")
        response, body = await raw.response()
        assert response.status_code == 200
        seen = json.loads(body)
        assert header(seen, "upgrade") == ["websocket"]  # the handshake was forwarded
        again, _ = await raw.get("/after")
        assert again.status_code == 200


async def test_each_request_is_logged(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge")
    edge = await start_edge(nursery, table([]))
    async with client(edge) as http:
        await http.get("/x?secret=1")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("edge-request")]
    assert len(lines) == 1
    assert "host=hello.localhost" in lines[0]
    assert "status=503" in lines[0]
    assert "ms=" in lines[0]
    assert "path=/x " in lines[0]
    assert "secret" not in lines[0]


async def test_the_access_line_names_the_path_that_served_each_request(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # The fast path declines silently (the general one answers the same), so only the
    # access line's `via` shows that a plain GET still takes it.
    def backend(chunked: bool) -> Handler:
        async def handler(stream: trio.SocketStream) -> None:
            conn = h11.Connection(h11.SERVER)
            _, body = await read_request(stream, conn)
            # A reason phrase and a Content-Length: the answer the fast relay reads itself.
            length = [] if chunked else [("Content-Length", str(len(body)))]
            response = h11.Response(status_code=200, headers=length, reason=b"OK")
            await stream.send_all(conn.send(response))
            await stream.send_all(conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))

        return handler

    caplog.set_level(logging.INFO, logger="edge")
    plain = await start_server(nursery, backend(chunked=False))
    unusual = await start_server(nursery, backend(chunked=True))
    routes = RouteTable(
        routes=(
            Route("hello.localhost", "/", "hello", (Backend(f"127.0.0.1:{plain}", "i-0"),)),
            Route("chunky.localhost", "/", "chunky", (Backend(f"127.0.0.1:{unusual}", "i-1"),)),
        ),
        etag="t",
    )
    edge = await start_edge(nursery, routes)
    async with client(edge) as http:
        assert (await http.get("/plain")).status_code == 200
        assert (await http.post("/post", content=b"body")).text == "body"
    async with client(edge, host="chunky.localhost") as http:
        assert (await http.get("/chunked")).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("edge-request")]
    via = {line.split(" path=")[1].split()[0]: line.rsplit(" via=", 1)[1] for line in lines}
    assert via == {"/plain": "fast", "/post": "general", "/chunked": "fast-handed"}


async def test_expect_100_continue_is_relayed_before_the_body(nursery: trio.Nursery) -> None:
    async def backend(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        assert b"expect: 100-continue" in data.lower()
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not data.endswith(b"hello"):
            data += await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")

    edge = await start_edge(nursery, table(await start_server(nursery, backend)))
    async with await trio.open_tcp_stream("127.0.0.1", edge) as stream:
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: hello.localhost\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\n"
        )
        interim = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in interim:
                interim += await stream.receive_some(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"  # nothing else before the body
        await stream.send_all(b"hello")
        final = b""
        while b"\r\n\r\n" not in final:
            final += await stream.receive_some(65536)
        assert final.startswith(b"HTTP/1.1 201 ")


async def test_client_leaving_mid_response_is_not_an_error(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    backend_done = trio.Event()

    async def endless(stream: trio.SocketStream) -> None:
        try:
            await raw_backend(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")(stream)
            while True:
                await stream.send_all(b"x" * 65536)
        except trio.BrokenResourceError:
            backend_done.set()  # the edge hung up on us once the client left

    edge = await start_edge(nursery, table(await start_server(nursery, endless)))
    async with await trio.open_tcp_stream("127.0.0.1", edge) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: hello.localhost\r\n\r\n")
        assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 200 ")
    with trio.fail_after(5):
        await backend_done.wait()
    await trio.testing.wait_all_tasks_blocked()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
