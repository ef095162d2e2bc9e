"""`edge.main.run` as a real process: it serves, and SIGTERM is a clean exit."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from edge.main import run
from edge.proxy import EdgeConfig
run(EdgeConfig(host="127.0.0.1", port=0, control_url=sys.argv[1], token="t"))
"""


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        chunk = await stream.receive_some(4096)
        assert chunk, f"edge exited before logging {marker!r}: {seen.decode()}"
        seen += chunk
    return seen


async def test_edge_serves_without_control_and_exits_0_on_sigterm() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    control_port = listener.socket.getsockname()[1]
    await listener.aclose()  # the control plane is down
    command = [sys.executable, "-c", SCRIPT, f"http://127.0.0.1:{control_port}"]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE, cwd=REPO)
    try:
        log = await check_serving_then_stop(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert b"route-sync-failed" in log


async def check_serving_then_stop(process: trio.Process) -> bytes:
    assert process.stderr is not None
    async with process.stderr:
        with trio.fail_after(10):
            log = await read_until(process.stderr, b"edge-started port=")
            log += await read_until(process.stderr, b"\n")
        port = int(log.split(b"edge-started port=")[1].split()[0])
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"http://127.0.0.1:{port}/", headers={"Host": "x.localhost"}
            )
        assert response.status_code == 404
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0
    return log
