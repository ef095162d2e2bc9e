"""The node's watchdog for jails without cgroups: one /proc pass per interval for the whole
node, however many jails it watches, and still every jail's own limits.

The reads are counted where they happen, with a Python audit hook (`os.listdir` and
`open` events of this process, worker threads included): the jails, the jailer and the
watchdog are the real ones, in the plain tier that every machine has."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

from node.jail import PLAIN, Jailed, Jailer, JailSpec, make_jailer

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
INTERVAL = 0.05
SLOW_INTERVAL = 0.2  # when counting passes: a pass takes far less, even on a loaded machine
JAILS = 12
# /proc/<pid>/stat, or <pid>/stat opened relative to a descriptor of /proc
STAT = re.compile(r"^(/proc/)?\d+/stat$")
ENVIRON = re.compile(r"^(/proc/)?\d+/environ$")


@dataclass
class Reads:
    passes: int = 0  # listings of /proc
    stats: int = 0
    environs: int = 0


_COUNTING: list[Reads] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if not _COUNTING:
        return
    reads = _COUNTING[-1]
    if event == "os.listdir" and (str(args[0]) == "/proc" or isinstance(args[0], int)):
        reads.passes += 1  # (nothing else here lists a directory by descriptor)
    elif event == "open" and isinstance(args[0], str | Path):
        path = str(args[0])
        reads.stats += bool(STAT.match(path))
        reads.environs += bool(ENVIRON.match(path))


_HOOKED: list[bool] = []


@contextlib.contextmanager
def counting() -> Iterator[Reads]:
    """Count this process's reads of /proc while the block runs (the hook, once added,
    stays for the session but counts nothing outside such a block)."""
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED.append(True)
    reads = Reads()
    _COUNTING.append(reads)
    try:
        yield reads
    finally:
        _COUNTING.remove(reads)


def jailer() -> Jailer:
    return make_jailer(PLAIN, f"test-watchdog-{os.getpid()}")


async def spawn(j: Jailer, app: Path, *argv: str) -> Jailed:
    app.mkdir(parents=True)
    return await j.spawn(JailSpec(f"w{os.urandom(4).hex()}", argv, ENV, app))


async def watched(jailed: Jailed, scope: trio.CancelScope, interval: float = INTERVAL) -> None:
    with scope:
        await jailed.watch(interval)


async def test_one_proc_pass_per_interval_whatever_the_number_of_jails(tmp_path: Path) -> None:
    j = jailer()
    jails = [await spawn(j, tmp_path / f"a{i}", "sleep", "60") for i in range(JAILS)]
    try:
        async with trio.open_nursery() as nursery:
            for jailed in jails:
                nursery.start_soon(watched, jailed, trio.CancelScope(), SLOW_INTERVAL)
            with counting() as reads:
                began = trio.current_time()
                await trio.sleep(10 * SLOW_INTERVAL)
                elapsed = trio.current_time() - began
            nursery.cancel_scope.cancel()
    finally:
        for jailed in jails:
            jailed.kill()
            await jailed.proc.wait()
            await jailed.close()
    # One pass, then a sleep of the interval: no more passes than that allows (+1 in
    # flight when counting began), where a watchdog per jail makes JAILS times as many.
    assert 1 <= reads.passes <= elapsed / SLOW_INTERVAL + 2, (reads, elapsed)
    # Each pass reads every process's stat once; environments only of processes new to
    # the node (a pass per jail read every environment every time).
    assert reads.stats >= reads.passes
    assert reads.environs * 4 < reads.stats, reads


async def test_the_shared_pass_still_enforces_each_jails_own_limit(tmp_path: Path) -> None:
    """Among quiet jails, the one that forks past the process limit is killed and says
    why; the others live on. The watch that ran the passes ends first, and the next one
    takes over (no jail is left unwatched)."""
    j = jailer()
    j.pids_limit = 6
    quiet = [await spawn(j, tmp_path / f"q{i}", "sleep", "60") for i in range(4)]
    scopes = [trio.CancelScope() for _ in quiet]
    bomb_script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 60 & done; echo forked; wait"
    try:
        async with trio.open_nursery() as nursery:
            for jailed, scope in zip(quiet, scopes, strict=True):
                nursery.start_soon(watched, jailed, scope)
            with trio.fail_after(10):
                while j.watchdog.passes < 2:
                    await trio.sleep(INTERVAL)
            scopes[0].cancel()  # the first watch (the one running the passes) ends
            quiet[0].kill()
            bomb = await spawn(j, tmp_path / "bomb", "sh", "-c", bomb_script)
            nursery.start_soon(watched, bomb, trio.CancelScope())
            with trio.fail_after(20):
                code = await bomb.proc.wait()
            assert bomb.limit_reason(code) == "more than 6 processes"
            assert bomb.watchdog_fired == "pids"
            await bomb.close()
            for jailed in quiet[1:]:
                assert jailed.proc.returncode is None
                assert jailed.watchdog_fired is None
            nursery.cancel_scope.cancel()
    finally:
        for jailed in quiet:
            jailed.kill()
            await jailed.proc.wait()
            await jailed.close()
