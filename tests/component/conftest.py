"""The control plane as a real starlette app over a real SQLite store, driven through
httpx's ASGI transport (no sockets), with a clock the test moves."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from control.api import create_app
from control.config import ControlConfig
from control.store import Store


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
        return httpx.AsyncClient(transport=self.http._transport, base_url="http://control",
                                 headers=headers)


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[Control]:
    clock = Clock()
    store = Store(tmp_path / "foundry.db", clock=clock)
    app = create_app(store, ControlConfig(home=tmp_path), converge_loop=False)
    _, admin = store.create_token("admin")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://control",
                                 headers={"authorization": f"Bearer {admin}"}) as http:
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
