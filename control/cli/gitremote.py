"""`foundry git-remote`: a git remote that deploys one app on `git push`.

Rules kept here:
  * The remote gets a deploy token of its own, limited to the app (revocable, listed by
    `foundry tokens list`), never the caller's token, which may be the admin's.
  * The token goes in an http.<url>.extraHeader scoped to the remote's URL, never in the
    URL itself; re-running replaces the token and revokes the one it replaced.
  * Nothing here prints: the caller reports the `Remote` it gets back.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from control.cli.client import Api, CLIError


@dataclass(frozen=True)
class Remote:
    """The remote as it was set up."""

    url: str
    token_id: str
    label: str


def git(directory: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run git in `directory`; CLIError with its complaint when it fails (and `check`)."""
    result = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise CLIError(f"git {' '.join(args[:2])}: {result.stderr.strip()}")
    return result


def add_remote(api: Api, name: str, remote: str, directory: Path) -> Remote:
    """Add (or update) `remote` in the work tree at `directory` to deploy app `name`."""
    url = f"{api.url}/git/{name}.git"
    git(directory, "rev-parse", "--git-dir")
    label = f"git-remote {name} ({socket.gethostname()})"[:80]
    try:
        minted = api.request(
            "POST", "/v1/tokens", json={"kind": "deploy", "apps": [name], "label": label}
        )
    except CLIError as e:
        raise CLIError(
            f"cannot mint a deploy token for the remote ({e}); an admin can run "
            "`foundry git-remote`, or add the header with a deploy token by hand"
        ) from None
    previous = git(
        directory, "config", "--get", f"remote.{remote}.foundryTokenId", check=False
    ).stdout.strip()
    if git(directory, "remote", "get-url", remote, check=False).returncode == 0:
        git(directory, "remote", "set-url", remote, url)
    else:
        git(directory, "remote", "add", remote, url)
    git(directory, "config", f"http.{url}.extraHeader", f"Authorization: Bearer {minted['token']}")
    git(directory, "config", f"remote.{remote}.foundryTokenId", minted["id"])
    if previous and previous != minted["id"]:
        with contextlib.suppress(CLIError):  # already revoked, or not ours to revoke
            api.request("DELETE", f"/v1/tokens/{previous}")
    return Remote(url, minted["id"], label)
