"""Runs the node agent until SIGINT/SIGTERM, then stops its instances and exits; and
what `foundry node join` and `foundry up` need to know of this machine's node side
(memory, the builds' environment, the jail tier, leftover jail cgroups)."""

from __future__ import annotations

import hmac
import logging
import signal
import ssl
import sys
from pathlib import Path

import httpx
import trio

from node.agent import Agent, JoinError, NodeConfig
from node.client import fingerprint, pinned_context, server_certificate
from node.staging import ENV_FILE, load_staging_env


def tls_verification(config: NodeConfig) -> ssl.SSLContext | bool:
    """How to trust an https control plane: the certificate pinned by the join token
    (kept in the node's home for restarts), else the system's CAs."""
    if not config.control_url.startswith("https://"):
        return True
    saved = config.home / "control-cert.pem"
    if saved.exists():
        return pinned_context(saved.read_text())
    token = config.join_token or ""
    if "#sha256:" not in token:
        return True
    pin = token.split("#", 1)[1]
    try:
        pem = server_certificate(config.control_url)
    except OSError as e:
        raise JoinError(f"cannot reach {config.control_url}: {e}") from None
    if not hmac.compare_digest(fingerprint(pem), pin):
        raise JoinError(
            f"{config.control_url} presented a certificate that does not match "
            "the join token's fingerprint; refusing to join"
        )
    config.home.mkdir(parents=True, exist_ok=True)
    saved.write_text(pem)
    return pinned_context(pem)


async def _main(config: NodeConfig) -> None:
    verify = tls_verification(config)
    async with httpx.AsyncClient(base_url=config.control_url, timeout=30, verify=verify) as http:
        agent = Agent(config, http)
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for sig in signals:
                    logging.getLogger("foundry.node").info("node-stopping signal=%s", sig)
                    await agent.shutdown()
                    nursery.cancel_scope.cancel()
                    break


def run(config: NodeConfig) -> None:
    """Run the agent; JoinError (a refused or missing token) propagates as one line."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s node %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        trio.run(_main, config)
    except BaseExceptionGroup as group:
        joins = group.subgroup(JoinError)
        if joins is None:
            raise
        raise joins.exceptions[0] from None


def machine_memory_mb() -> int:
    """Total memory of this machine in MiB (4 GiB where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 4096


def build_env(home: Path, staging_file: Path | None) -> dict[str, str]:
    """What every build gets on top of the base env: the admin's staging env (the file
    named, else staging.env in the home if present; StagingEnvError for a bad one) and
    the uv binary. Builds run tenant code: never this process's own environment."""
    import uv

    file = staging_file or home / ENV_FILE
    staging = load_staging_env(file) if staging_file or file.exists() else {}
    return {**staging, "FOUNDRY_UV": uv.find_uv_bin()}


def isolation(forced: str | None) -> str:
    """The jail tier a node here will pick, described for `foundry up`'s banner."""
    from node.jail import PLAIN, JailError, choose_tier, probe

    try:
        choice = choose_tier(probe()[0], forced)
    except JailError as e:
        return f"unknown ({e})"
    if choice.tier == PLAIN:
        return f"plain - WARNING: not a security boundary ({choice.reason})"
    return f"{choice.tier} ({choice.reason})"


def sweep_cgroups(home: Path) -> int:
    """Remove the jail cgroups of the node at `home` that a killed agent left; how many."""
    from node import cgroups
    from node.jail import scope_of

    driver = cgroups.detect()
    if driver is None:
        return 0
    return driver.scoped(scope_of(str(home))[0]).sweep()


def join_token(flag: str | None, file: str | None, env: str | None) -> str | None:
    """The join token from --token-file (a path, or - for stdin), FOUNDRY_JOIN_TOKEN or
    --token, in that order; JoinError when it is given twice or the file has none."""
    if flag is not None and file is not None:
        raise JoinError("give the join token once: --token or --token-file")
    if file is None:
        return flag if flag is not None else env or None
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise JoinError(f"--token-file {file}: {e}") from None
    if not text.strip():
        raise JoinError(f"--token-file {file}: no token in it")
    return text.strip()
