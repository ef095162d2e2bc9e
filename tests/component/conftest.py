"""The control plane as a real starlette app over a real SQLite store, driven through
httpx's ASGI transport (no sockets), with a clock the test moves; and `wait_for`, the one
way a component test waits for something to happen (never a fixed sleep)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from control.api import create_app
from control.config import ControlConfig
from control.store import Store


async def wait_for(
    condition: Callable[[], object], timeout: float = 5, what: str = "the condition"
) -> None:
    """Check `condition` every few milliseconds until it holds; fail naming `what` once
    `timeout` seconds (of trio's clock, so autojump tests do not wait) have passed."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.005)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Control:
    store: Store
    clock: Clock
    http: httpx.AsyncClient
    admin: str

    def client(self, token: str | None) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(
            transport=self.http._transport, base_url="http://control", headers=headers
        )


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[Control]:
    clock = Clock()
    store = Store(tmp_path / "foundry.db", clock=clock)
    app = create_app(store, ControlConfig(home=tmp_path), converge_loop=False)
    _, admin = store.create_token("admin")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://control", headers={"authorization": f"Bearer {admin}"}
    ) as http:
        yield Control(store, clock, http, admin)
    store.close()


def tarball(files: dict[str, bytes]) -> bytes:
    """A gzip'd tar of `files` (name -> bytes), as the CLI uploads files for matching."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
