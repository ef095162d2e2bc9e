"""The node agent's main loop: join once, then heartbeat and long-poll for work.

Identity (node id + node token) is kept in `<home>/identity.json` so a restarted
agent is the same node. The work cursor (`<home>/work_seq`) is advanced only after
an item has been taken in hand, and each poll acknowledges everything up to it, so
an item is never lost and never applied twice. Heartbeats go out every
`heartbeat_interval` seconds and at once when an instance changes state; one that
fails is followed by a fresh one after the reports' jittered backoff (never a stale
one resent), and a refusal (4xx) is logged once, not at every beat.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from node import spawn
from node.client import REPORTS, ControlClient, ControlError, deliver, is_retriable, retry_delay
from node.diskstate import DiskState
from node.droplets import DropletCache
from node.instances import Supervisor
from node.jail import make_jailer
from node.logship import LogShipper
from node.proctree import signal_instance
from node.stager import Stager
from node.tasks import TaskRunner
from node.wire import Heartbeat, JoinAnswer, JoinRequest, WorkItem

log = logging.getLogger("foundry.node")


@dataclass(frozen=True)
class NodeConfig:
    home: Path
    control_url: str
    packs_dir: Path
    join_token: str | None = None
    name: str = "node"
    address: str = "127.0.0.1"
    memory_mb: int = 4096
    heartbeat_interval: float = 2.0
    grace: float = 10.0
    start_timeout: float = 60.0
    liveness_interval: float = 30.0
    base_env: dict[str, str] = field(default_factory=dict)  # every process the node starts
    build_env: dict[str, str] = field(default_factory=dict)  # added for builds: staging env, tools
    tier: str | None = None  # force a weaker jail tier (tests); None = the strongest there is


class JoinError(Exception):
    """The node cannot join: no identity and no (valid) join token."""


class Agent:
    def __init__(self, config: NodeConfig, http: httpx.AsyncClient) -> None:
        self.config = config
        self.client = ControlClient(http)
        self.boot = uuid.uuid4().hex[:12]
        self.node_id = ""
        self.work_seq = 0
        self.logs = LogShipper(self.client)
        self.changed = trio.Event()
        home = config.home
        self.jail = make_jailer(config.tier, str(config.home.resolve()))
        droplets = DropletCache(home / "droplets", self.client)
        self.disk = DiskState(home, config.name)
        self.supervisor = Supervisor(
            home=home,
            droplets=droplets,
            logs=self.logs,
            address=config.address,
            base_env=config.base_env,
            grace=config.grace,
            start_timeout=config.start_timeout,
            liveness_interval=config.liveness_interval,
            on_change=self.changed.set,
            jail=self.jail,
        )
        self.stager = Stager(
            home,
            config.packs_dir,
            self.client,
            self.logs,
            {**config.base_env, **config.build_env},
            self.jail,
            self.disk,
        )
        self.tasks = TaskRunner(home, droplets, self.logs, self.client, self.jail, config.base_env)

    async def identify(self) -> None:
        """Load this node's identity, or join with the join token."""
        ident = self.config.home / "identity.json"
        if ident.exists():
            data = json.loads(ident.read_text())
            self.node_id, self.client.token = data["id"], data["token"]
            seq = self.config.home / "work_seq"
            self.work_seq = int(seq.read_text()) if seq.exists() else 0
            return
        if not self.config.join_token:
            raise JoinError("this node has not joined yet: give it a join token")
        answer = await self._join(self.config.join_token.split("#", 1)[0])
        self.node_id = answer["id"]
        self.config.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(ident, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(
                {"id": self.node_id, "token": answer["token"], "control": self.config.control_url},
                f,
            )
        log.info("node-joined id=%s", self.node_id)

    async def _join(self, token: str) -> JoinAnswer:
        """Exchange the join token, waiting (capped backoff) while the control plane is
        unreachable; a refused token is final."""
        body: JoinRequest = {
            "name": self.config.name,
            "address": self.config.address,
            "memory_mb": self.config.memory_mb,
            "tier": self.jail.tier,
            "seccomp": self.jail.seccomp.summary,
        }
        delay = 0.2
        while True:
            try:
                return await self.client.join(token, body)
            except ControlError as e:
                if e.status is not None:
                    raise JoinError(f"the control plane refused to join: {e}") from None
                log.warning("join-waiting error=%s", e)
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def reap_leftovers(self) -> None:
        """Kill what a previous agent on this home left running (it died without stopping
        its instances): the control plane replaces them, so none may linger as orphans."""
        root = self.config.home / "instances"
        if not root.is_dir():
            return
        for leftover in root.iterdir():
            killed = signal_instance(None, leftover.name, signal.SIGKILL)
            shutil.rmtree(leftover, ignore_errors=True)
            log.info("instance-reaped id=%s processes=%d", leftover.name, killed)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.identify()
        spawn.adopt_orphans()  # jails' orphaned bwrap processes come to us to be reaped
        self.reap_leftovers()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.logs.run)
                await deliver("heartbeat", self.heartbeat_once)
                nursery.start_soon(self.heartbeat_loop)
                nursery.start_soon(self.work_loop, nursery)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.shutdown()
                await trio.to_thread.run_sync(self.jail.close)

    async def shutdown(self) -> None:
        """Stop every instance gracefully (SIGTERM, grace, kill) and report it, before the
        agent's tasks are cancelled; safe to call twice."""
        with trio.move_on_after(self.config.grace + 2):
            await self.supervisor.stop_all()
        with trio.move_on_after(1):
            try:
                await self.heartbeat_once()
            except ControlError as e:
                log.warning("final-heartbeat-failed error=%s", e)

    async def heartbeat_once(self) -> None:
        instances = self.supervisor.report()
        disk_free, disk_full = self.disk.report()
        body: Heartbeat = {
            "boot": self.boot,
            "address": self.config.address,
            "tier": self.jail.tier,
            "seccomp": self.jail.seccomp.summary,
            "memory_mb": self.config.memory_mb,
            "work_seq": self.work_seq,
            "instances": instances,
            "disk_free": disk_free,
            "disk_full": disk_full,
        }
        await self.client.heartbeat(self.node_id, body)
        self.supervisor.prune(instances)

    async def heartbeat_loop(self) -> None:
        failures, refused = 0, ""
        while True:
            with trio.move_on_after(self.config.heartbeat_interval):
                await self.changed.wait()
            self.changed = trio.Event()
            self.supervisor.on_change = self.changed.set
            try:
                await self.heartbeat_once()
                failures, refused = 0, ""
            except ControlError as e:
                failures += 1
                if is_retriable(e.status, bytes_sent=True, idempotent=True):
                    log.warning("heartbeat-failed attempt=%d error=%s", failures, e)
                elif str(e) != refused:  # the same refusal at every beat is said once
                    refused = str(e)
                    log.warning("heartbeat-refused error=%s", e)
                await trio.sleep(retry_delay(failures, REPORTS, random.random()))
                self.changed.set()  # whatever changed meanwhile goes in the next one at once
            await trio.sleep(0.02)  # coalesce bursts of state changes into one report

    async def work_loop(self, nursery: trio.Nursery) -> None:
        backoff = 0.5
        while True:
            try:
                items = await self.client.work(self.node_id, self.work_seq, wait=25)
            except ControlError as e:
                log.warning("work-poll-failed error=%s", e)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 5)
                continue
            backoff = 0.5
            for item in items:
                self.take(item, nursery)
                self.work_seq = item["seq"]
            if items:
                (self.config.home / "work_seq").write_text(str(self.work_seq))
                self.changed.set()

    def take(self, item: WorkItem, nursery: trio.Nursery) -> None:
        """Hand one work item to whoever does it."""
        log.info("work-received seq=%s kind=%s", item["seq"], item["kind"])
        if item["kind"] == "start":
            self.supervisor.start(item, nursery)
        elif item["kind"] == "stop":
            self.supervisor.stop(item["instance"], float(item.get("drain") or 0))
        elif item["kind"] == "stage":
            nursery.start_soon(self.stager.stage, item)
        elif item["kind"] == "task":
            nursery.start_soon(self.tasks.run, item)
        else:  # a newer control plane's kind: say so, never crash the loop
            log.warning("work-unknown kind=%s", item["kind"])
