"""Instances on this node: their lifecycle, processes, health checks and stops.

Lifecycle (refused transitions raise; status names shown to users are these):

    STARTING -> RUNNING | STOPPING | CRASHED
    RUNNING  -> STOPPING | CRASHED
    STOPPING -> STOPPED
    STOPPED, CRASHED: final

An instance is RUNNING only once its health check passes (`port`: the port accepts
connections; `process`: alive). Every instance runs in a jail (node/jail.py) with
its droplet copy at the jail's app path. Stop = SIGTERM to every process of the
instance, `grace` seconds, then a kill of the whole jail. Nothing of an instance
outlives it: after its main process exits, the jail is killed and closed too. The
crash reason is `out of memory` only with the jail's OOM evidence. Every instance
task lives in the supervisor's nursery.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from node import health, spawn
from node.droplets import DropletCache
from node.jail import PLAIN, Jailed, Jailer, JailSpec, TierChoice
from node.logship import LogShipper
from node.wire import InstanceReport, StartWork

log = logging.getLogger("foundry.node")

STARTING, RUNNING, STOPPING, STOPPED, CRASHED = (
    "STARTING",
    "RUNNING",
    "STOPPING",
    "STOPPED",
    "CRASHED",
)
TRANSITIONS: dict[str, frozenset[str]] = {
    STARTING: frozenset({RUNNING, STOPPING, CRASHED}),
    RUNNING: frozenset({STOPPING, CRASHED}),
    STOPPING: frozenset({STOPPED}),
    STOPPED: frozenset(),
    CRASHED: frozenset(),
}
LAUNCHER = (
    'for f in "$HOME"/.profile.d/*.sh; do [ -r "$f" ] && . "$f"; done; '
    'exec /bin/sh -c "$FOUNDRY_COMMAND"'
)


class InvalidTransition(RuntimeError):
    pass


@dataclass
class Instance:
    spec: StartWork
    state: str = STARTING
    port: int | None = None
    pid: int | None = None
    reason: str | None = None
    stop_requested: trio.Event = field(default_factory=trio.Event)
    drain: float = 0.0
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def id(self) -> str:
        return str(self.spec["instance"])

    @property
    def source(self) -> str:
        return f"app/{self.spec['process']}.{self.spec['index']}"

    def move(self, state: str, reason: str | None = None) -> None:
        if state not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"instance {self.id}: {self.state} -> {state}")
        self.state = state
        if reason:
            self.reason = reason

    def report(self) -> InstanceReport:
        return {
            "id": self.id,
            "app": self.spec["app"],
            "state": self.state,
            "port": self.port,
            "reason": self.reason,
            "pid": self.pid,
        }


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Supervisor:
    """Starts, watches and stops this node's instances."""

    home: Path
    droplets: DropletCache
    logs: LogShipper
    address: str = "127.0.0.1"
    base_env: dict[str, str] = field(default_factory=dict)
    grace: float = 10.0
    start_timeout: float = 60.0
    liveness_interval: float = 30.0
    on_change: Callable[[], None] = lambda: None
    instances: dict[str, Instance] = field(default_factory=dict)
    jail: Jailer = field(default_factory=lambda: Jailer(TierChoice(PLAIN, "not configured")))

    def start(self, spec: StartWork, nursery: trio.Nursery) -> None:
        """Begin starting an instance (idempotent by instance id)."""
        if spec["instance"] in self.instances:
            return
        inst = Instance(spec)
        self.instances[inst.id] = inst
        self.on_change()
        nursery.start_soon(self._run, inst)

    def stop(self, instance_id: str, drain: float = 0.0) -> None:
        inst = self.instances.get(instance_id)
        if inst is not None:
            inst.drain = max(0.0, min(drain, 30.0))
            inst.stop_requested.set()

    async def stop_all(self) -> None:
        for inst in list(self.instances.values()):
            inst.stop_requested.set()
        for inst in list(self.instances.values()):
            await inst.done.wait()

    def report(self) -> list[InstanceReport]:
        return [i.report() for i in self.instances.values()]

    def prune(self, reported: list[InstanceReport]) -> None:
        """Forget final instances once a heartbeat has carried their final state."""
        for rep in reported:
            inst = self.instances.get(rep["id"])
            final = rep["state"] in (STOPPED, CRASHED)
            if inst is not None and final and inst.state == rep["state"]:
                del self.instances[rep["id"]]

    def _move(self, inst: Instance, state: str, reason: str | None = None) -> None:
        inst.move(state, reason)
        log.info(
            "instance-%s id=%s app=%s port=%s%s",
            state.lower(),
            inst.id,
            inst.spec["app"],
            inst.port,
            f" reason={reason!r}" if reason else "",
        )
        if state in (CRASHED, STOPPED, RUNNING):
            note = f"{state.lower()}" + (f": {reason}" if reason else "")
            self.logs.emit(inst.spec["app"], inst.source, f"[foundry] instance {note}")
        self.on_change()

    def _env(self, inst: Instance, app_dir: str) -> dict[str, str]:
        spec = inst.spec
        vcap = {
            "application_name": spec["app"],
            "application_id": spec["app"],
            "instance_id": inst.id,
            "instance_index": spec["index"],
            "port": inst.port,
            "application_version": f"v{spec['release']}",
            "limits": {"mem": spec.get("memory_mb", 256)},
            "application_uris": [],
            "process_type": spec["process"],
        }
        return {
            **self.base_env,
            **{str(k): str(v) for k, v in spec.get("env", {}).items()},
            "HOME": app_dir,
            "PORT": str(inst.port),
            "FOUNDRY_APP_NAME": spec["app"],
            "FOUNDRY_INSTANCE_INDEX": str(spec["index"]),
            "FOUNDRY_RELEASE": f"v{spec['release']}",
            "FOUNDRY_PROCESS_TYPE": spec["process"],
            "VCAP_APPLICATION": json.dumps(vcap),
            "VCAP_SERVICES": "{}",
            "FOUNDRY_COMMAND": spec["command"],
        }

    async def _run(self, inst: Instance) -> None:
        workdir = self.home / "instances" / inst.id
        try:
            await self._run_process(inst, workdir)
        except Exception as e:  # top of a long-running task: report, never vanish
            log.exception("instance-failed id=%s", inst.id)
            if inst.state in (STARTING, RUNNING):
                self._move(inst, CRASHED, f"node error: {e}")
            elif inst.state == STOPPING:
                self._move(inst, STOPPED)
        finally:
            await trio.to_thread.run_sync(shutil.rmtree, workdir, True)
            inst.done.set()

    async def _run_process(self, inst: Instance, workdir: Path) -> None:
        try:
            app_dir = await self.droplets.checkout(inst.spec["droplet"], workdir / "app")
        except Exception as e:
            self._move(inst, CRASHED, f"droplet unavailable: {e}")
            return
        if inst.stop_requested.is_set():
            self._move(inst, STOPPING)
            self._move(inst, STOPPED)
            return
        inst.port = free_port(self.address)
        memory_mb = int(inst.spec.get("memory_mb") or 256)
        env = self._env(inst, self.jail.inside(str(app_dir), app_dir))
        jailed = await self.jail.spawn(
            JailSpec(inst.id, ("/bin/sh", "-c", LAUNCHER), env, app_dir, memory_mb)
        )
        try:
            await self._supervise(inst, jailed)
        finally:
            with trio.CancelScope(shield=True):
                await jailed.close()

    async def _supervise(self, inst: Instance, jailed: Jailed) -> None:
        proc = jailed.proc
        inst.pid = proc.pid
        self.on_change()
        failure: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, inst, proc)
            nursery.start_soon(self._health, inst, jailed, failure)
            nursery.start_soon(self._stopper, inst, jailed)
            nursery.start_soon(jailed.watch)
            code = await proc.wait()
            jailed.kill()
            nursery.cancel_scope.cancel()
        if inst.state == STOPPING:
            self._move(inst, STOPPED)
        else:
            reason = jailed.limit_reason(code) or (failure[0] if failure else None)
            self._move(inst, CRASHED, reason or exit_reason(jailed.exit_code(code)))

    async def _pump(self, inst: Instance, proc: spawn.Child) -> None:
        assert proc.stdout is not None
        buf = b""
        async for chunk in proc.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                self.logs.emit(inst.spec["app"], inst.source, line.decode(errors="replace"))
            if len(buf) > 65536:
                self.logs.emit(inst.spec["app"], inst.source, buf.decode(errors="replace"))
                buf = b""
        if buf:
            self.logs.emit(inst.spec["app"], inst.source, buf.decode(errors="replace"))

    async def _health(self, inst: Instance, jailed: Jailed, failure: list[str]) -> None:
        """Readiness until the start timeout, then liveness every `liveness_interval`."""
        kind = inst.spec.get("health_check") or "port"
        why = ""
        with trio.move_on_after(self.start_timeout):
            while not (answer := await health.check(kind, self.address, inst.port or 0))[0]:
                why = answer[1]
                await trio.sleep(0.05)
            if inst.state == STARTING:
                self._move(inst, RUNNING)
        if inst.state == STARTING:
            failure.append(f"never became healthy within {self.start_timeout:.0f} s ({why})")
            jailed.kill()
            return
        while inst.state == RUNNING:
            await trio.sleep(self.liveness_interval)
            for _ in range(3):  # three failures in a row, a second apart, mean unhealthy
                ok, why = await health.check(kind, self.address, inst.port or 0)
                if ok or inst.state != RUNNING:
                    break
                await trio.sleep(1)
            else:
                failure.append(f"health check failed: {why}")
                jailed.kill()
                return

    async def _stopper(self, inst: Instance, jailed: Jailed) -> None:
        await inst.stop_requested.wait()
        self._move(inst, STOPPING)
        # The control plane took the instance out of the routing table when it asked for
        # the stop; requests already on their way get `drain` seconds to arrive.
        with trio.move_on_after(inst.drain):
            await jailed.proc.wait()
        jailed.terminate()
        with trio.move_on_after(self.grace):
            await jailed.proc.wait()
        jailed.kill()
