"""`foundry edge` never joins another program's listening port, yet restarts at once on its
own port despite the TIME_WAIT connections it left (edge.listen.claim_port)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def edge(port: int, workers: int) -> list[str]:
    # the control plane is down: the edge serves an empty table (404s), which is enough
    return [
        sys.executable,
        "-m",
        "foundry",
        "edge",
        "--listen",
        f"127.0.0.1:{port}",
        "--control",
        f"http://127.0.0.1:{free_port()}",
        "--token",
        "t",
        "--workers",
        str(workers),
        "--no-access-logs",
    ]


def listener(port: int, *, reuseport: bool) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:  # the worst case: another program that would share the port with us
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    return s


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("reuseport", [True, False], ids=["reuseport", "plain"])
def test_edge_refuses_a_port_another_program_listens_on(workers: int, reuseport: bool) -> None:
    port = free_port()
    with listener(port, reuseport=reuseport) as other:
        try:
            done = subprocess.run(
                edge(port, workers), cwd=ROOT, capture_output=True, text=True, timeout=20
            )
        except subprocess.TimeoutExpired:
            pytest.fail("the edge started on a port another program listens on")
        assert done.returncode != 0
        assert done.stderr.splitlines() == [f"foundry: port {port} is in use by another process"]
        # every connection still reaches the other program
        other.settimeout(5)
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                other.accept()[0].close()


def serving(port: int) -> bool:
    try:
        return (
            httpx.get(
                f"http://127.0.0.1:{port}/",
                headers={"host": "x.localhost", "connection": "close"},
                timeout=2,
            ).status_code
            == 404
        )
    except httpx.HTTPError:
        return False


def start(port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(edge(port, 2), cwd=ROOT, stderr=out)
    deadline = time.monotonic() + 20
    try:
        while not serving(port):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the edge did not start"
            time.sleep(0.05)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


def time_wait_on(port: int) -> int:
    """TCP sockets in TIME_WAIT (state 06) whose local port is `port`."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(
        1 for r in rows if r.split()[3] == "06" and int(r.split()[1].split(":")[1], 16) == port
    )


def test_edge_restarts_on_its_port_at_once_and_a_second_edge_is_refused(tmp_path: Path) -> None:
    port = free_port()
    first = start(port, tmp_path / "first.log")
    try:
        second = subprocess.run(edge(port, 2), cwd=ROOT, capture_output=True, text=True, timeout=20)
        assert second.returncode != 0
        assert second.stderr.splitlines() == [f"foundry: port {port} is in use by another process"]
        for _ in range(10):  # `connection: close`: the edge closes first, so TIME_WAIT is ours
            assert serving(port)
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert time_wait_on(port) > 0  # the case a plain bind would be refused in
    again = start(port, tmp_path / "again.log")
    again.send_signal(signal.SIGTERM)
    assert again.wait(20) == 0
