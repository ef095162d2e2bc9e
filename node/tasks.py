"""One-off tasks: `foundry run` commands and each deploy's release phase.

A task runs the app's droplet in a jail like an instance does (its own copy, the
release's environment, the memory limit), but it has no port and no health check:
it runs to its exit, its output streams to the app's log (tagged with the task's
correlation id so the caller can follow just those lines), and its exit code is
reported. A task that outlives its timeout is killed and reported as such. The log
is flushed before the result is sent, so a follower never misses the last lines.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import trio

from node import spawn
from node.client import ControlClient, ControlError
from node.droplets import DropletCache
from node.instances import LAUNCHER, exit_reason
from node.jail import Jailer, JailSpec
from node.logship import LogShipper
from node.wire import TaskResult, TaskWork

log = logging.getLogger("foundry.node")


@dataclass
class TaskRunner:
    home: Path
    droplets: DropletCache
    logs: LogShipper
    client: ControlClient
    jail: Jailer
    base_env: dict[str, str]

    async def run(self, item: TaskWork) -> None:
        """Run one `task` work item and report how it ended (never raises)."""
        task, app = item["task"], item["app"]
        workdir = self.home / "tasks" / task
        tag = item.get("tag") or task
        source = item.get("source") or f"task/{task}"
        result: TaskResult
        try:
            result = await self._run(item, workdir, source, tag)
        except Exception as e:  # top of a task: report it, never vanish
            log.exception("task-failed id=%s", task)
            result = {"exit_code": None, "reason": f"node error: {e}"}
        finally:
            await trio.to_thread.run_sync(shutil.rmtree, workdir, True)
        self.logs.emit(app, source, f"[foundry] {describe(result)}", tag)
        await self.logs.flush()
        try:
            await self.client.task_result(task, result)
        except ControlError as e:  # refused for good (say, failed meanwhile as lost)
            log.warning("task-result-dropped id=%s error=%s", task, e)

    async def _run(self, item: TaskWork, workdir: Path, source: str, tag: str) -> TaskResult:
        app_dir = await self.droplets.checkout(item["droplet"], workdir / "app")
        home = self.jail.inside(str(app_dir), app_dir)
        env = {
            **self.base_env,
            **{str(k): str(v) for k, v in item.get("env", {}).items()},
            "HOME": home,
            "FOUNDRY_APP_NAME": item["app"],
            "FOUNDRY_RELEASE": f"v{item.get('release', 0)}",
            "FOUNDRY_PROCESS_TYPE": "task",
            "VCAP_APPLICATION": json.dumps({"application_name": item["app"]}),
            "VCAP_SERVICES": "{}",
            "FOUNDRY_COMMAND": item["command"],
        }
        jailed = await self.jail.spawn(
            JailSpec(
                f"task-{item['task']}",
                ("/bin/sh", "-c", LAUNCHER),
                env,
                app_dir,
                int(item.get("memory_mb") or 256),
            )
        )
        timed_out = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, item["app"], source, tag, jailed.proc)
                nursery.start_soon(jailed.watch)
                with trio.move_on_after(float(item.get("timeout") or 3600)) as scope:
                    code = await jailed.proc.wait()
                timed_out = scope.cancelled_caught
                jailed.kill()
                code = await jailed.proc.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await jailed.close()
        if timed_out:
            return {"exit_code": None, "reason": f"timed out after {item.get('timeout')} s"}
        limit = jailed.limit_reason(code)
        real = jailed.exit_code(code)
        return {
            "exit_code": real if real >= 0 and not limit else None,
            "reason": limit or (None if real >= 0 else exit_reason(real)),
        }

    async def _pump(self, app: str, source: str, tag: str, proc: spawn.Child) -> None:
        assert proc.stdout is not None
        buf = b""
        async for chunk in proc.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                self.logs.emit(app, source, line.decode(errors="replace"), tag)
        if buf:
            self.logs.emit(app, source, buf.decode(errors="replace"), tag)


def describe(result: TaskResult) -> str:
    if result.get("exit_code") is not None:
        return f"task exited with code {result['exit_code']}"
    return f"task failed: {result.get('reason')}"
