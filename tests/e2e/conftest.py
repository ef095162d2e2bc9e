"""One real `foundry up` (control plane, node agent, edge as separate processes) shared by
the end-to-end tests, on random loopback ports in a temporary home."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def eventually(check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, AssertionError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


class Platform:
    """A running `foundry up` and helpers to drive it like a user."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.http_port = free_port()
        self.api_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {
            **os.environ,
            "FOUNDRY_HOME": str(home),
            "PYTHONPATH": str(ROOT),
            # liveness checks every 2 s instead of 30 s, so a test sees one fail
            "FOUNDRY_LIVENESS_INTERVAL": "2",
        }
        self.env.pop("FOUNDRY_API", None)
        self.env.pop("FOUNDRY_TOKEN", None)

    def start(self) -> None:
        with open(self.home.parent / "up.out", "ab") as out:
            self.proc = proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "foundry",
                    "up",
                    "--http-port",
                    str(self.http_port),
                    "--api-port",
                    str(self.api_port),
                ],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        eventually(
            lambda: (
                b"Foundry is up" in (self.home.parent / "up.out").read_bytes()
                or proc.poll() is not None
            ),
            60,
            "foundry up to start",
        )
        assert proc.poll() is None, self.logs()

    def stop(self) -> float:
        """Stop `foundry up` as Ctrl-C would; returns how long it took."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return time.monotonic() - began

    def logs(self) -> str:
        out = []
        for f in [*sorted((self.home / "logs").glob("*.log")), self.home.parent / "up.out"]:
            if f.exists():
                out.append(f"== {f.name}\n" + f.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    def cli(
        self, *args: str, check: bool = True, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "foundry", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"foundry {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}\n{self.logs()}"
            )
        return result

    def get(self, app: str, path: str = "/", **kw: Any) -> httpx.Response:
        """A request through the edge, as a browser would send it."""
        return httpx.get(
            f"http://127.0.0.1:{self.http_port}{path}",
            headers={"host": f"{app}.localhost:{self.http_port}"},
            timeout=10,
            **kw,
        )

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        token = (self.home / "admin-token").read_text().strip()
        headers = {"authorization": f"Bearer {token}", **kw.pop("headers", {})}
        return httpx.request(
            method, f"http://127.0.0.1:{self.api_port}{path}", headers=headers, timeout=30, **kw
        )


@contextlib.contextmanager
def started(p: Platform) -> Iterator[Platform]:
    """`p` running for the block; stopped as Ctrl-C would stop it, however the block ends."""
    p.start()
    try:
        yield p
    finally:
        if p.proc is not None and p.proc.poll() is None:
            p.stop()


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with started(Platform(tmp_path_factory.mktemp("foundry") / "home")) as p:
        yield p
