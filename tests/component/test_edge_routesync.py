"""RouteSync against a small fake control plane: a trio + h11 long-poll responder."""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs, urlsplit

import h11
import httpx
import pytest
import trio

from edge.routesync import RouteSync
from tests.component import peers
from tests.component.conftest import wait_for


def routes(app: str, port: int) -> list[dict[str, object]]:
    backend = {"address": f"127.0.0.1:{port}", "instance": f"{app}-1"}
    return [{"host": f"{app}.localhost", "path": "/", "app": app, "backends": [backend]}]


class FakeControl:
    """Answers `GET /v1/routes?etag=&wait=` the way the control plane does."""

    def __init__(self, etag: str, table: list[dict[str, object]]) -> None:
        self.etag, self.routes = etag, table
        self.broken = False
        self.polls: list[tuple[str, str]] = []  # (etag asked with, Authorization)
        self._changed = trio.Event()
        self._polled = trio.Event()

    def update(self, etag: str, table: list[dict[str, object]]) -> None:
        self.etag, self.routes = etag, table
        self._changed.set()
        self._changed = trio.Event()

    async def next_poll_with(self, etag: str) -> None:
        """Wait until the edge asks with `etag`, i.e. until it holds that table."""
        with trio.fail_after(5):
            while not any(asked == etag for asked, _ in self.polls):
                await self._polled.wait()

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request = await self._read_request(stream, conn)
            if request is None:
                return
            query = parse_qs(urlsplit(request.target.decode()).query, keep_blank_values=True)
            asked, wait = query["etag"][0], float(query["wait"][0])
            self.polls.append((asked, dict(request.headers).get(b"authorization", b"").decode()))
            self._polled.set()
            self._polled = trio.Event()
            if asked == self.etag:
                with trio.move_on_after(wait):
                    await self._changed.wait()
            await self._answer(stream, conn)
            conn.start_next_cycle()

    async def _answer(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        if self.broken:
            status, body = 500, b"oops"
        else:
            status, body = 200, json.dumps({"etag": self.etag, "routes": self.routes}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> h11.Request | None:
        got = await peers.read_request(stream, conn)
        return got[0] if got else None


async def start_control(nursery: trio.Nursery, control: FakeControl, port: int = 0) -> int:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, control.handle, listeners)
    return int(listeners[0].socket.getsockname()[1])


def failures(caplog: pytest.LogCaptureFixture) -> int:
    return sum("route-sync-failed" in r.getMessage() for r in caplog.records)


async def test_first_table_then_updates(nursery: trio.Nursery) -> None:
    control = FakeControl("e1", routes("hello", 1001))
    port = await start_control(nursery, control)
    async with httpx.AsyncClient() as client:
        sync = RouteSync(client, f"http://127.0.0.1:{port}/", "tok", wait=5)
        await nursery.start(sync.run)
        assert sync.table.etag == "e1"
        route = sync.table.lookup("hello.localhost", "/")
        assert route is not None
        assert route.backends[0].address == "127.0.0.1:1001"

        await control.next_poll_with("e1")  # the edge now holds a long-poll open
        control.update("e2", routes("other", 1002))
        await control.next_poll_with("e2")
        assert sync.table.lookup("hello.localhost", "/") is None
        assert sync.table.lookup("other.localhost", "/") is not None
        nursery.cancel_scope.cancel()
    assert control.polls[:2] == [("", "Bearer tok"), ("e1", "Bearer tok")]


async def test_table_is_kept_while_control_is_away_and_refreshed_after(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge")
    first = FakeControl("e1", routes("hello", 1001))
    async with httpx.AsyncClient() as client:
        async with trio.open_nursery() as control_nursery:
            port = await start_control(control_nursery, first)
            sync = RouteSync(client, f"http://127.0.0.1:{port}", None, wait=5)
            await nursery.start(sync.run)
            await first.next_poll_with("e1")
            control_nursery.cancel_scope.cancel()  # control goes away mid long-poll

        await wait_for(lambda: failures(caplog) >= 2)
        assert sync.table.etag == "e1"
        assert sync.table.lookup("hello.localhost", "/") is not None

        second = FakeControl("e2", routes("back", 1003))
        await start_control(nursery, second, port=port)
        await second.next_poll_with("e2")
        assert sync.table.lookup("back.localhost", "/") is not None
        nursery.cancel_scope.cancel()


async def test_error_answers_keep_the_last_table(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge")
    control = FakeControl("e1", routes("hello", 1001))
    port = await start_control(nursery, control)
    async with httpx.AsyncClient() as client:
        sync = RouteSync(client, f"http://127.0.0.1:{port}", "tok", wait=5)
        await nursery.start(sync.run)
        control.broken = True
        control.update("e2", routes("other", 1002))
        await wait_for(lambda: failures(caplog) >= 1)
        assert sync.table.etag == "e1"
        nursery.cancel_scope.cancel()


async def test_starts_with_an_empty_table_when_control_is_down(nursery: trio.Nursery) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    async with httpx.AsyncClient() as client:
        sync = RouteSync(client, f"http://127.0.0.1:{port}", "tok")
        with trio.fail_after(5):
            await nursery.start(sync.run)
        assert sync.table.routes == ()
        nursery.cancel_scope.cancel()
