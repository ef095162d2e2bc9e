"""Through a real edge with two worker processes: every request gets its own id."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.component.test_edge_main import read_until

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from edge.main import run
from edge.proxy import EdgeConfig
run(EdgeConfig(host="127.0.0.1", port=0, control_url=sys.argv[1], token="t", workers=2))
"""


async def serve_control_and_backend(stream: trio.SocketStream, port: int) -> None:
    """One listener plays both parts: /v1/routes answers a table routing ids.localhost
    to this same listener, anything else is the app answering 200."""
    head = b""
    async with stream:
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            head += chunk
        if head.startswith(b"GET /v1/routes"):
            if b"etag=one" in head.split(b"\r\n", 1)[0]:
                await trio.sleep(2)  # the long-poll: nothing changed
            body = json.dumps(
                {
                    "etag": "one",
                    "routes": [
                        {
                            "host": "ids.localhost",
                            "app": "ids",
                            "backends": [{"address": f"127.0.0.1:{port}", "instance": "i0"}],
                        }
                    ],
                }
            ).encode()
        else:
            body = b"ok"
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )


async def test_two_workers_never_log_the_same_request_id() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            trio.serve_listeners, lambda s: serve_control_and_backend(s, port), [listener]
        )
        command = [sys.executable, "-c", SCRIPT, f"http://127.0.0.1:{port}"]
        process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE, cwd=REPO)
        assert process.stderr is not None
        try:
            with trio.fail_after(20):
                log = await read_until(process.stderr, b"edge-started port=")
                log += await read_until(process.stderr, b"\n")
                edge = int(log.split(b"edge-started port=")[1].split()[0])
                ok = 0
                for _ in range(40):  # new connections: the kernel spreads them over workers
                    async with httpx.AsyncClient() as client:
                        response = await client.get(
                            f"http://127.0.0.1:{edge}/", headers={"Host": "ids.localhost"}
                        )
                    ok += response.status_code == 200
                    await trio.sleep(0.01)  # pacing between connections, not a wait for anything
                process.send_signal(signal.SIGTERM)
                while True:
                    chunk = await process.stderr.receive_some(65536)
                    if not chunk:
                        break
                    log += chunk
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        nursery.cancel_scope.cancel()
    lines = re.findall(rb"edge-request id=(\S+) .* status=200", log)
    pids = set(re.findall(rb"edge-stopping signal=SIGTERM pid=(\d+)", log))
    assert ok == 40, log.decode()[-2000:]
    assert len(lines) == 40, log.decode()[-2000:]
    assert len(pids) >= 2, "both workers must have run"
    assert len(set(lines)) == len(lines), f"repeated ids: {sorted(lines)}"
