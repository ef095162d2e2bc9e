"""Serverless: an idle app goes to zero, a burst wakes it once with every request
answered, an open websocket holds it up, and sustained load scales it out and back."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ROOT, Platform, eventually
from tests.e2e.load import Load

pytestmark = pytest.mark.slow
APP = str(ROOT / "tests" / "apps" / "sleepy")


def view(platform: Platform, app: str) -> dict[str, Any]:
    return dict(json.loads(platform.cli("app", app, "--json").stdout))


def at_zero(platform: Platform, app: str) -> bool:
    v = view(platform, app)
    return v["scale"].get("web") == 0 and not v["instances"]


def burst(platform: Platform, app: str, count: int) -> list[httpx.Response]:
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def one() -> None:
        r = httpx.get(
            f"http://127.0.0.1:{platform.http_port}/",
            headers={"host": f"{app}.localhost"},
            timeout=40,
        )
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def open_websocket(platform: Platform, app: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", platform.http_port), timeout=30)
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {app}.localhost\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_idle_app_goes_to_zero_and_a_burst_wakes_it_once(platform: Platform) -> None:
    platform.cli("push", APP, "--name", "sleepy")
    platform.cli(
        "scale", "sleepy", "--min", "0", "--max", "3", "--concurrency", "5", "--idle", "2s"
    )
    eventually(lambda: at_zero(platform, "sleepy"), 30, "scale to zero after idling")
    assert platform.get("sleepy").status_code in (200,)  # a single wake works too
    eventually(lambda: at_zero(platform, "sleepy"), 30, "back to zero")
    answers = burst(platform, "sleepy", 50)
    assert [r.status_code for r in answers] == [200] * 50
    assert any("x-foundry-cold-start" in r.headers for r in answers)
    kinds = [e["kind"] for e in json.loads(platform.cli("events", "sleepy", "--json").stdout)]
    assert kinds.count("wake") == 2  # one per wake, not per request
    assert view(platform, "sleepy")["last_cold_start"] is not None


def test_an_open_websocket_keeps_the_app_up(platform: Platform) -> None:
    platform.cli("push", APP, "--name", "chatty")
    platform.cli("scale", "chatty", "--min", "0", "--max", "2", "--idle", "2s")
    sock = open_websocket(platform, "chatty")
    try:
        time.sleep(5)  # > idle, with the tunnel open
        assert view(platform, "chatty")["scale"]["web"] >= 1
    finally:
        sock.close()
    eventually(lambda: at_zero(platform, "chatty"), 30, "zero once the websocket closed")


def test_sustained_load_scales_out_and_back_without_failures(platform: Platform) -> None:
    platform.cli("push", APP, "--name", "busy")
    platform.cli(
        "scale",
        "busy",
        "--min",
        "1",
        "--max",
        "4",
        "--concurrency",
        "2",
        "--window",
        "6s",
        "--idle",
        "60s",
    )
    with Load(platform.http_port, "busy.localhost", workers=8, path="/slow") as load:
        eventually(
            lambda: (
                len([i for i in view(platform, "busy")["instances"] if i["state"] == "RUNNING"])
                >= 3
            ),
            60,
            "scale out",
        )
    assert load.failed == 0, dict(load.failures)
    eventually(lambda: view(platform, "busy")["scale"]["web"] == 1, 60, "scale back down")
