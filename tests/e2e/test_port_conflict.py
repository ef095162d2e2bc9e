"""A second `foundry up` on the ports of a running one refuses, names the port, leaves
nothing running, and the first platform loses no request meanwhile.

Before, the second edge joined the first's port through SO_REUSEPORT and answered a share
of the first platform's requests with `404 unknown-route`. Requests here open a fresh
connection each (the kernel spreads connections, not requests, across SO_REUSEPORT
sockets), so an edge that joined would be seen.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ROOT, Platform, eventually

pytestmark = pytest.mark.slow
APP = ROOT / "tests" / "apps" / "tiny-web"


def request_loop(
    url: str, host: str, stop: threading.Event, seen: Counter[str], max_seconds: float = 120
) -> None:
    """GET `url` on a new connection each time until `stop` (bounded); count the outcomes."""
    deadline = time.monotonic() + max_seconds
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            r = httpx.get(url, headers={"host": host, "connection": "close"}, timeout=10)
            seen["ok" if r.status_code == 200 else f"HTTP {r.status_code} {r.text[:60]}"] += 1
        except httpx.HTTPError as e:
            seen[type(e).__name__] += 1
        time.sleep(0.005)


def up_attempt(second: Platform) -> subprocess.CompletedProcess[str]:
    """Run the second `foundry up`; one that starts after all is stopped (Ctrl-C) after
    a while, as the user would, so the first platform's requests are still counted."""
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "foundry",
            "up",
            "--http-port",
            str(second.http_port),
            "--api-port",
            str(second.api_port),
        ],
        env=second.env,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_second_up_on_the_same_ports_refuses(platform: Platform, tmp_path: Path) -> None:
    platform.cli("push", str(APP), "--name", "first")
    eventually(lambda: platform.get("first").status_code == 200, 60, "the app to answer")
    second = Platform(tmp_path / "home")
    second.http_port, second.api_port = platform.http_port, platform.api_port
    seen: Counter[str] = Counter()
    stop = threading.Event()
    url, host = f"http://127.0.0.1:{platform.http_port}/", f"first.localhost:{platform.http_port}"
    loops = [threading.Thread(target=request_loop, args=(url, host, stop, seen)) for _ in range(3)]
    for loop in loops:
        loop.start()
    try:
        eventually(lambda: seen["ok"] > 0, 30, "requests to flow to the first platform")
        refused = up_attempt(second)
        time.sleep(1.0)  # a second edge that joined would be taking connections by now
    finally:
        stop.set()
        for loop in loops:
            loop.join(15)
    print(f"requests to the first platform during the attempt: {dict(seen)}")
    assert seen["ok"] > 20, seen
    assert set(seen) == {"ok"}, seen
    assert refused.returncode != 0, refused.stdout
    errors = refused.stderr.splitlines()
    assert errors == [
        f"foundry: port {platform.api_port} is in use by another process "
        "(pick another with --api-port)"
    ], refused.stderr
    assert "Foundry is up" not in refused.stdout
    # nothing of the second platform is left running: no pid file, no role process
    assert not (second.home / "up.pid").exists()
    assert not any(str(second.home).encode() in _environ(pid) for pid in _pids())
    assert platform.get("first").status_code == 200


def test_second_up_refuses_the_edge_port_alone(platform: Platform, tmp_path: Path) -> None:
    # a free API port, the edge's port taken: the refusal names the edge's port
    second = Platform(tmp_path / "home")
    second.http_port = platform.http_port
    refused = up_attempt(second)
    assert refused.returncode != 0, refused.stdout
    assert refused.stderr.splitlines() == [
        f"foundry: port {platform.http_port} is in use by another process "
        "(pick another with --http-port)"
    ], refused.stderr
    assert not (second.home / "up.pid").exists()
    assert not any(str(second.home).encode() in _environ(pid) for pid in _pids())


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""
