"""Reports from a node survive a network that loses them: a control plane and a node agent
as real processes, with a fault-injecting TCP proxy (in this test, on loopback) between
the node and the control plane. Each report kind — heartbeat, droplet upload, build
result, task result, log batch — has its connection reset before it is forwarded once,
and its answer cut off after the control plane acted on it once; the push and a
`foundry run` still complete, exactly once. Then build results are held back for good: the
control plane fails the build after its timeout, `foundry push` says so in one line and
exits 1, and the node drops the late result once it is answered."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ROOT, eventually, free_port

pytestmark = pytest.mark.slow
APP = str(ROOT / "tests" / "apps" / "tiny-web")
BUILD_TIMEOUT = 30  # seconds: far more than tiny-web's build takes, short enough to wait
KINDS = (  # the node's reports, as `METHOD path` patterns
    r"POST /v1/nodes/[^/]+/heartbeat",
    r"PUT /v1/blobs/[0-9a-f]+",
    r"POST /v1/builds/[^/]+/result",
    r"POST /v1/tasks/[^/]+/result",
    r"POST /v1/logs",
)
FAULTS = ("reset", "lose")


@dataclass
class Rule:
    """Do `fault` to the next `times` requests whose `METHOD path` matches `pattern`:
    "reset" (the connection is reset, nothing forwarded) or "lose" (forwarded whole,
    and the connection is cut as the answer starts to come back)."""

    pattern: str
    fault: str
    times: int = 1


@dataclass
class FaultProxy:
    """A TCP proxy for HTTP/1.1 that sees each request's first line: one request per
    connection (it rewrites `Connection` to close), so every request is its own
    connection to fault."""

    upstream: int
    rules: list[Rule] = field(default_factory=list)
    seen: list[tuple[str, str]] = field(default_factory=list)  # (request line, what it did)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: set[asyncio.Task[None]] = field(default_factory=set)

    def fault_for(self, request: str) -> str:
        with self.lock:
            rule = next(
                (r for r in self.rules if r.times > 0 and re.fullmatch(r.pattern, request)), None
            )
            if rule is not None:
                rule.times -= 1
            self.seen.append((request, rule.fault if rule else "pass"))
            return rule.fault if rule else "pass"

    def count(self, pattern: str, fault: str | None = None) -> int:
        with self.lock:
            return sum(
                1
                for request, done in self.seen
                if re.fullmatch(pattern, request) and fault in (None, done)
            )

    async def serve(self, ready: threading.Event, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await stop.wait()
        # Connections still open (the node's long polls) end with the proxy.
        for task in list(self.active):
            task.cancel()
        await asyncio.gather(*self.active, return_exceptions=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self.active.add(me)
        ends = [writer]  # every connection this request opened, closed however it ends
        try:
            await self.relay(reader, ends)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.active.discard(me)
            for end in ends:
                end.transport.abort()

    async def relay(self, reader: asyncio.StreamReader, ends: list[asyncio.StreamWriter]) -> None:
        """Relay one request and its answer, or fault it (ends[0] writes to the client)."""
        writer = ends[0]
        head = await reader.readuntil(b"\r\n\r\n")
        first, *headers = head.decode("latin-1").split("\r\n")
        method, target, _ = first.split(" ", 2)
        fault = self.fault_for(f"{method} {target.split('?')[0]}")
        if fault == "reset":
            reset(writer)
            return
        kept = [h for h in headers if h and not h.lower().startswith("connection:")]
        rewritten = "\r\n".join([first, *kept, "Connection: close", "", ""]).encode("latin-1")
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        ends.append(up_writer)
        up_writer.write(rewritten)
        forward = asyncio.ensure_future(pipe(reader, up_writer))
        try:
            while chunk := await up_reader.read(65536):
                if fault == "lose":  # the control plane has acted and is answering
                    reset(writer)
                    break
                writer.write(chunk)
                await writer.drain()
        finally:
            forward.cancel()
            await asyncio.gather(forward, return_exceptions=True)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a middlebox would."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()


@contextlib.contextmanager
def proxy_running(upstream: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream)
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(proxy.serve(ready, stop))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


@dataclass
class Pair:
    """A control plane and one node agent that reaches it only through `proxy`."""

    home: Path
    api_port: int
    proxy: FaultProxy
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "foundry", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def api(self, path: str) -> Any:
        answer = httpx.get(
            f"http://127.0.0.1:{self.api_port}{path}",
            headers={"authorization": f"Bearer {self.env['FOUNDRY_TOKEN']}"},
            timeout=30,
        )
        answer.raise_for_status()
        return answer.json()

    def node_log(self) -> str:
        return (self.home / "node.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(
            f"== {name}\n" + (self.home / name).read_text(errors="replace")[-6000:]
            for name in ("control.log", "node.log")
        )


def start(home: Path, key: str, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(home / f"{key}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "foundry", *args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    home = tmp_path_factory.mktemp("reports")
    api_port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FOUNDRY_BUILD_TIMEOUT": str(BUILD_TIMEOUT)}
    for var in ("FOUNDRY_API", "FOUNDRY_TOKEN", "FOUNDRY_HOME"):
        env.pop(var, None)
    control = start(
        home,
        "control",
        "control",
        "--home",
        str(home / "control"),
        "--listen",
        f"127.0.0.1:{api_port}",
        env=env,
    )
    procs = [control]
    try:
        token_file = home / "control" / "admin-token"
        eventually(lambda: token_file.exists() or control.poll() is not None, 60, "control")
        assert control.poll() is None, (home / "control.log").read_text()
        token = token_file.read_text().strip()
        with proxy_running(api_port) as proxy:
            # Each kind's first request is reset (it must be sent again), its second is
            # acted on with the answer lost (sending it again must change nothing). The
            # first heartbeat is among them: an agent that gave up on it would never run.
            proxy.rules[:] = [Rule(kind, fault) for kind in KINDS for fault in FAULTS]
            procs.append(
                start(
                    home,
                    "node",
                    "node",
                    "join",
                    f"http://127.0.0.1:{proxy.port}",
                    "--home",
                    str(home / "node"),
                    "--name",
                    "faulty",
                    env={**env, "FOUNDRY_JOIN_TOKEN": token},
                )
            )
            cli_env = {**env, "FOUNDRY_API": f"http://127.0.0.1:{api_port}", "FOUNDRY_TOKEN": token}
            p = Pair(home, api_port, proxy, cli_env, procs)
            eventually(
                lambda: [n["state"] for n in p.api("/v1/nodes")["nodes"]] == ["ready"],
                60,
                "the node to join and heartbeat",
            )
            try:
                yield p
            finally:
                stop(procs)  # the node before the proxy it talks through
    finally:
        stop(procs)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each role (its instances go with it), SIGKILL what outlives 20 s."""
    for proc in reversed(procs):
        if proc.poll() is not None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def taken(proxy: FaultProxy, kind: str) -> bool:
    """`kind` has reached the control plane with no fault on it at least once."""
    return proxy.count(kind, "pass") >= 1


def test_every_report_kind_lost_once_and_the_push_and_run_complete_once(pair: Pair) -> None:
    pushed = pair.cli("push", APP, "--name", "faults")
    assert pushed.returncode == 0, f"{pushed.stdout}\n{pushed.stderr}\n{pair.logs()}"
    ran = pair.cli("run", "faults", "--", "sh", "-c", "echo ran-once")
    assert ran.returncode == 0, f"{ran.stdout}\n{ran.stderr}\n{pair.logs()}"
    assert ran.stdout.count("ran-once") == 1, ran.stdout

    proxy = pair.proxy
    for kind in KINDS:
        # The third send of a report whose answer was lost may come after the command that
        # waited on it has finished (the control plane had already acted): wait for it.
        eventually(partial(taken, proxy, kind), 60, f"{kind} sent a third time")
        for fault in FAULTS:
            assert proxy.count(kind, fault) == 1, (kind, fault, proxy.seen)
    # Each result reached the control plane twice (the first answer lost) and was taken once:
    # one release, no result refused, the task ended as it did.
    assert [r["version"] for r in pair.api("/v1/apps/faults/releases")["releases"]] == [1]
    assert "dropped" not in pair.node_log(), pair.node_log()
    [task_path] = {request.split(" ")[1] for request, _ in proxy.seen if "/v1/tasks/" in request}
    task = pair.api(task_path.removesuffix("/result"))
    assert (task["state"], task["exit_code"]) == ("SUCCEEDED", 0)
    # A log batch stored twice would show its lines twice.
    lines = pair.api("/v1/apps/faults/logs?limit=1000")["lines"]
    twice = [k for k, n in Counter((r["ts"], r["line"]) for r in lines).items() if n > 1]
    assert twice == [], twice
    assert sum("-----> Received" in r["line"] for r in lines) == 1


def test_a_build_no_node_reports_fails_and_push_says_so(pair: Pair) -> None:
    held = Rule(r"POST /v1/builds/[^/]+/result", "reset", times=10_000)
    pair.proxy.rules.append(held)
    try:
        pushed = pair.cli("push", APP, "--name", "faults", timeout=BUILD_TIMEOUT + 90)
    finally:
        held.times = 0
    assert pushed.returncode == 1, f"{pushed.stdout}\n{pushed.stderr}"
    assert (
        pushed.stderr.strip()
        .splitlines()[-1]
        .startswith(f"foundry: build failed: no node reported the build within {BUILD_TIMEOUT} s")
    ), pushed.stderr
    # The node's next try gets the answer that the build ended, and drops the result.
    eventually(lambda: "build-result-dropped" in pair.node_log(), 30, "the node to drop the result")
    assert "already ended FAILED (no node reported the build" in pair.node_log()
    assert [r["version"] for r in pair.api("/v1/apps/faults/releases")["releases"]] == [1]
