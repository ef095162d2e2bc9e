"""A bounded, loopback-only request stream through the edge, counting failures.

Workers are threads with their own keep-alive client; the run stops by itself after
`max_seconds` even if nobody stops it. Any non-200 answer or transport error counts
as a failure (Diego's upgrade-stability rule), with its kind recorded.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import TracebackType

import httpx


class Load:
    def __init__(
        self, port: int, host: str, *, workers: int = 4, max_seconds: float = 120, path: str = "/"
    ) -> None:
        self.url = f"http://127.0.0.1:{port}{path}"
        self.host = host
        self.workers = workers
        self.max_seconds = max_seconds
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self.bodies: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(headers={"host": self.host}, timeout=10) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    r = client.get(self.url)
                    kind = None if r.status_code == 200 else f"HTTP {r.status_code}"
                    body = r.text
                except httpx.HTTPError as e:
                    kind, body = type(e).__name__, ""
                with self._lock:
                    if kind is None:
                        self.ok += 1
                        self.bodies[body] += 1
                    else:
                        self.failures[kind] += 1
                time.sleep(0.005)

    def __enter__(self) -> Load:
        for _ in range(self.workers):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    @property
    def failed(self) -> int:
        with self._lock:
            return sum(self.failures.values())

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.ok, sum(self.failures.values())
