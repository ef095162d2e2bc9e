"""The node agent's side of the control API (joins, heartbeats, work, blobs, logs).

Takes an `httpx.AsyncClient` so tests can hand it any transport. Every call raises
ControlError with the server's reason on a non-2xx answer. Blobs are named by their
sha256 and a download is checked against that name before anyone uses it: a blob
store that was tampered with (or a corrupted transfer) fails the work item, loudly.

Reports (build and task results, droplet uploads, log batches, heartbeats) are sent
through `deliver`, which retries until the control plane acknowledges them:
  * every report is idempotent on the control plane (a result is keyed by its build
    or task, a blob by its digest, a log batch by its Idempotency-Key, a heartbeat is
    the latest state), so a report is retried even when its request went out whole
    and only the answer was lost;
  * a retriable failure (`is_retriable`: no answer, 408, 429, 5xx) waits
    `retry_delay` (doubling from 0.25 s, capped at 10 s, jittered so a fleet of
    nodes does not come back in step) and tries again, for as long as it takes;
  * any other answer (4xx: refused, or a build that was failed meanwhile) is final:
    `deliver` raises it once and the caller logs and drops the report.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import trio

from node.wire import BuildResult, Heartbeat, JoinAnswer, JoinRequest, LogLine, TaskResult, WorkItem

DIGEST = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")
log = logging.getLogger("foundry.node")
# Answers that say "not now" rather than "no": worth the same request again later.
RETRIABLE_STATUS = frozenset({408, 429})


class ControlError(Exception):
    """The control plane refused a call (`status` set) or could not be reached (None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Backoff:
    """How long to wait between tries of a report: `first` s, doubling, at most `cap` s;
    each wait is drawn from [delay * (1 - jitter), delay]."""

    first: float = 0.25
    factor: float = 2.0
    cap: float = 10.0
    jitter: float = 0.5


REPORTS = Backoff()


def retry_delay(attempt: int, backoff: Backoff, rand: float) -> float:
    """Seconds to wait after failed try number `attempt` (1-based); `rand` in [0, 1)."""
    delay = min(backoff.first * backoff.factor ** min(attempt - 1, 64), backoff.cap)
    return delay * (1.0 - backoff.jitter * rand)


def is_retriable(status: int | None, bytes_sent: bool, idempotent: bool) -> bool:
    """Whether a request that failed with `status` (None: no answer at all) may be sent
    again. A request that may have reached the server (`bytes_sent`) is sent again
    only when doing it twice is harmless (`idempotent`); an answer is retriable only
    when it says "later" (408, 429) or the server failed (5xx)."""
    if status is None:
        return idempotent or not bytes_sent
    return status in RETRIABLE_STATUS or status >= 500


async def deliver(
    what: str,
    send: Callable[[], Awaitable[T]],
    backoff: Backoff = REPORTS,
    rand: Callable[[], float] = random.random,
) -> T:
    """`send()` (an idempotent report) until the control plane acknowledges it; a final
    refusal is raised as ControlError. Each failure is logged once, as it happens."""
    attempt = 0
    while True:
        try:
            return await send()
        except ControlError as e:
            if not is_retriable(e.status, bytes_sent=True, idempotent=True):
                raise
            attempt += 1
            delay = retry_delay(attempt, backoff, rand())
            log.warning(
                "report-retry what=%s attempt=%d delay=%.2f error=%s", what, attempt, delay, e
            )
            await trio.sleep(delay)


def pinned_context(pem: str) -> ssl.SSLContext:
    """Trust exactly this certificate (self-signed is fine); the pin replaces name checks."""
    context = ssl.create_default_context(cadata=pem)
    context.check_hostname = False
    return context


def fingerprint(pem: str) -> str:
    return "sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def server_certificate(url: str) -> str:
    """The PEM certificate an https URL presents (not yet trusted: compare its pin)."""
    parts = urlsplit(url)
    return ssl.get_server_certificate((parts.hostname or "", parts.port or 443), timeout=10)


class ControlClient:
    """Typed calls to the control plane for one node."""

    def __init__(self, http: httpx.AsyncClient, token: str = "") -> None:
        self.http = http
        self.token = token

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    async def _call(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> Any:
        try:
            resp = await self.http.request(
                method, path, headers={**self._headers(), **(headers or {})}, **kw
            )
        except httpx.HTTPError as e:
            raise ControlError(f"{method} {path}: {type(e).__name__}: {e}") from e
        if resp.status_code >= 400:
            try:
                reason = resp.json().get("error", resp.text)
            except ValueError:
                reason = resp.text
            raise ControlError(f"{method} {path}: {resp.status_code} {reason}", resp.status_code)
        return resp.json()

    async def join(self, join_token: str, body: JoinRequest) -> JoinAnswer:
        self.token = join_token
        answer: JoinAnswer = await self._call("POST", "/v1/nodes/join", json=body)
        self.token = answer["token"]
        return answer

    async def heartbeat(self, node: str, body: Heartbeat) -> None:
        """One heartbeat, one try: the caller sends a fresh one rather than retry a stale one."""
        await self._call("POST", f"/v1/nodes/{node}/heartbeat", json=body)

    async def work(self, node: str, after: int, wait: float) -> list[WorkItem]:
        answer = await self._call(
            "GET",
            f"/v1/nodes/{node}/work",
            params={"after": after, "wait": wait},
            timeout=wait + 10,
        )
        items: list[WorkItem] = answer["work"]
        return items

    async def post_logs(self, lines: list[LogLine], key: str) -> None:
        """One batch, retried until stored; `key` names the batch so a retry whose first
        try was stored (its answer lost) is not stored twice."""
        body = {"lines": lines}
        await deliver(
            "logs",
            lambda: self._call("POST", "/v1/logs", json=body, headers={"idempotency-key": key}),
        )

    async def task_result(self, task: str, body: TaskResult) -> None:
        """Report how a task ended, retried until acknowledged."""
        await deliver(
            f"task-result {task}", lambda: self._call("POST", f"/v1/tasks/{task}/result", json=body)
        )

    async def build_result(self, build: str, body: BuildResult) -> None:
        """Report how a build ended, retried until acknowledged."""
        await deliver(
            f"build-result {build}",
            lambda: self._call("POST", f"/v1/builds/{build}/result", json=body),
        )

    async def download(self, digest: str, dest: Path) -> None:
        """Fetch the blob whose sha256 is `digest` into `dest`, hashing it as it streams;
        on any failure, a digest mismatch included, `dest` is removed."""
        if not DIGEST.match(digest):
            raise ControlError(f"download: {digest[:80]!r} is not a sha256 hex digest")
        try:
            got = await self._fetch(digest, dest)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        if got != digest:
            dest.unlink(missing_ok=True)
            raise ControlError(
                f"download {digest[:12]}: the content's sha256 is {got[:12]}, "
                "not the digest the control plane named; refused"
            )

    async def _fetch(self, digest: str, dest: Path) -> str:
        h = hashlib.sha256()
        try:
            async with self.http.stream(
                "GET", f"/v1/blobs/{digest}", headers=self._headers(), timeout=300
            ) as resp:
                if resp.status_code != 200:
                    raise ControlError(f"download {digest[:12]}: {resp.status_code}")
                async with await trio.open_file(dest, "wb") as out:
                    async for chunk in resp.aiter_bytes(1 << 20):
                        h.update(chunk)
                        await out.write(chunk)
        except httpx.HTTPError as e:
            raise ControlError(f"download {digest[:12]}: {e}") from e
        return h.hexdigest()

    async def upload(self, digest: str, path: Path) -> None:
        """Send a blob whose sha256 is `digest`, retried until stored (a blob is named by
        its content, so storing it twice is storing it once)."""

        async def chunks() -> Any:
            async with await trio.open_file(path, "rb") as f:
                while block := await f.read(1 << 20):
                    yield block

        await deliver(
            f"upload {digest[:12]}",
            lambda: self._call("PUT", f"/v1/blobs/{digest}", content=chunks(), timeout=300),
        )
