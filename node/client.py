"""The node agent's side of the control API (joins, heartbeats, work, blobs, logs).

Takes an `httpx.AsyncClient` so tests can hand it any transport. Every call raises
ControlError with the server's reason on a non-2xx answer. Blobs are named by their
sha256 and a download is checked against that name before anyone uses it: a blob
store that was tampered with (or a corrupted transfer) fails the work item, loudly.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from node.wire import BuildResult, Heartbeat, JoinAnswer, JoinRequest, LogLine, TaskResult, WorkItem

DIGEST = re.compile(r"^[0-9a-f]{64}$")


class ControlError(Exception):
    """The control plane refused a call (`status` set) or could not be reached (None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = await self.http.request(method, path, headers=self._headers(), **kw)
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

    async def post_logs(self, lines: list[LogLine]) -> None:
        await self._call("POST", "/v1/logs", json={"lines": lines})

    async def task_result(self, task: str, body: TaskResult) -> None:
        await self._call("POST", f"/v1/tasks/{task}/result", json=body)

    async def build_result(self, build: str, body: BuildResult) -> None:
        await self._call("POST", f"/v1/builds/{build}/result", json=body)

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
        """Send a blob whose sha256 is `digest`."""

        async def chunks() -> Any:
            async with await trio.open_file(path, "rb") as f:
                while block := await f.read(1 << 20):
                    yield block

        await self._call("PUT", f"/v1/blobs/{digest}", content=chunks(), timeout=300)
