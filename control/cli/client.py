"""The control API as the CLI sees it: where it is, with which token, and its errors.

Rules kept here:
  * Settings come from FOUNDRY_API / FOUNDRY_TOKEN when set, else from what `foundry up`
    wrote in the home (cli.json and the token file it names); the environment wins.
  * Every failure of a call (unreachable, or a 4xx/5xx with the API's reason) becomes one
    CLIError whose text is the user's whole error line; nothing here prints or exits.
  * The HTTP client is injected (default: a real one trusting FOUNDRY_CA), so tests drive
    this client against the real ASGI app without sockets.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from control.cli.upprocs import running_homes
from control.config import foundry_home


class CLIError(Exception):
    """A failure to report to the user as one line."""


class Reporter(Protocol):
    """Where client-side work reports as it goes; the CLI prints what it is told."""

    def say(self, text: str) -> None:
        """A progress line (the CLI's stderr)."""

    def tell(self, text: str) -> None:
        """A line of the command's outcome (the CLI's stdout)."""

    def uploading(self, sent: int, total: int) -> None:
        """Bytes of an upload sent so far."""

    def uploaded(self) -> None:
        """The upload being shown is over."""

    def confirm(self, question: str) -> bool | None:
        """The user's answer; None when there is no terminal to ask on."""


def ca_verify(env: Mapping[str, str] | None = None) -> ssl.SSLContext | bool:
    """Trust FOUNDRY_CA (e.g. a self-signed control plane's cert.pem) when it is set."""
    ca = (os.environ if env is None else env).get("FOUNDRY_CA")
    return ssl.create_default_context(cafile=ca) if ca else True


def _real_client() -> httpx.Client:
    return httpx.Client(verify=ca_verify())


@dataclass
class Api:
    """The control API as the CLI sees it."""

    url: str
    token: str
    apps_url: str = "http://{app}.localhost"
    http: httpx.Client = field(default_factory=_real_client, repr=False)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, http: httpx.Client | None = None) -> Api:
        """From FOUNDRY_API/FOUNDRY_TOKEN, else from what `foundry up` wrote in the home."""
        env = os.environ if env is None else env
        home = foundry_home(env=env)
        saved: dict[str, Any] = {}
        cli_file = home / "cli.json"
        if cli_file.exists():
            saved = json.loads(cli_file.read_text())
        url = env.get("FOUNDRY_API") or saved.get("api")
        token = env.get("FOUNDRY_TOKEN")
        if not token and saved.get("token_file") and Path(saved["token_file"]).exists():
            token = Path(saved["token_file"]).read_text().strip()
        if not url or not token:
            raise not_configured(home)
        apps_url = saved.get("apps_url", "http://{app}.localhost")
        if http is None:
            return cls(url.rstrip("/"), token, apps_url)
        return cls(url.rstrip("/"), token, apps_url, http)

    def request(self, method: str, path: str, *, timeout: float = 30, **kw: Any) -> Any:
        """Call the API; its JSON answer, or CLIError with the reason it gave."""
        headers = {"authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        try:
            resp = self.http.request(
                method, self.url + path, timeout=timeout, headers=headers, **kw
            )
        except httpx.TransportError as e:
            raise CLIError(
                f"cannot reach the control plane at {self.url} ({e}); is `foundry up` running?"
            ) from None
        if resp.status_code >= 400:
            raise CLIError(reason(resp))
        return resp.json()

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)


def reason(resp: httpx.Response) -> str:
    """The one line a refused call comes down to: the API's `error`, else the body."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip() or resp.reason_phrase
    found = body.get("error") if isinstance(body, dict) else None
    return str(found or resp.text)


def not_configured(home: Path) -> CLIError:
    """Why there is no API to talk to, pointing at a running platform when there is one."""
    others = sorted(running_homes() - {str(home)})
    if others:
        return CLIError(
            f"no control plane configured in {home}, but `foundry up` runs "
            f"with home {' and '.join(others)}: export FOUNDRY_HOME="
            + (others[0] if len(others) == 1 else "(one of them)")
        )
    return CLIError(
        f"no control plane configured: run `foundry up` (home {home}) or set "
        "FOUNDRY_API and FOUNDRY_TOKEN"
    )
