"""Shared helpers for benchmark runs: a real `foundry up` in a temp home on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Foundry:
    """`foundry up` for a benchmark; use as a context manager."""

    def __init__(self, root: Path = ROOT, env: dict[str, str] | None = None) -> None:
        """`root`: the source tree to run (another checkout, to compare); `env`: added."""
        self.root = root
        self.tmp = tempfile.TemporaryDirectory(prefix="foundry-bench-")
        self.home = Path(self.tmp.name) / "home"
        self.http_port, self.api_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "FOUNDRY_HOME": str(self.home),
            "PYTHONPATH": str(root),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Foundry:
        out = open(Path(self.tmp.name) / "up.out", "wb")
        self.proc = subprocess.Popen(
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
            cwd=self.root,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while b"Foundry is up" not in (Path(self.tmp.name) / "up.out").read_bytes():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("foundry up did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)
        self.tmp.cleanup()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "foundry", *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"foundry {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def get(self, app: str, path: str = "/") -> httpx.Response:
        return httpx.get(
            f"http://127.0.0.1:{self.http_port}{path}",
            headers={"host": f"{app}.localhost"},
            timeout=10,
        )

    def role_pids(self) -> dict[str, int]:
        pids = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if ("-m foundry" in cmd and str(self.home) in cmd) or (
                "-m foundry edge" in cmd and f":{self.http_port}" in cmd
            ):
                for role, needle in (
                    ("control", "foundry control"),
                    ("node", "node join"),
                    ("edge", "foundry edge"),
                ):
                    if needle in cmd:
                        pids[role] = int(entry)
        return pids


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
