"""Finding every process that belongs to an instance, to watch and to signal them all.

Without a cgroup (the plain and rootless tiers) an instance's processes are found two
ways, both from /proc: descendants of its first process, and any process whose
environment carries the instance's marker variable (which survives setsid and double
forks). With a cgroup, the jail uses the cgroup instead (see node/jail.py). Zombies are
never counted: they are already dead and only wait for their parent.

Rules kept here:
  * One pass (`Scanner.scan`) reads /proc once for the whole node: the list of pids and
    each process's `stat` (parent, state, resident pages, start time). A pass costs the
    same however many instances share the node; `Table.groups` then hands every instance
    its process set from that one table.
  * A process's environment is read once in its life, keyed by (pid, start time): the
    marker cannot be gained later except by an exec, and a process keeps the identity it
    was born with if it clears its environment (it is still the instance's). A reused
    pid has another start time, so it is read afresh.
  * `ProcFS` is the only thing that touches /proc, so a test can count or fake its reads.
  * The node has one `Watchdog`: however many jails it watches, one pass runs per
    interval, in a worker thread (a pass reads hundreds of files; the event loop serves
    health checks, logs and heartbeats meanwhile). The task that runs the passes is one
    of the watching tasks, the "lead"; when it ends, another watching task takes over, so
    no jail is ever left unwatched and no extra task must be started for it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

MARKER = "FOUNDRY_INSTANCE_ID"
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Proc:
    """One live process as one line of /proc/<pid>/stat tells it."""

    ppid: int
    rss: int  # resident bytes
    start: int  # clock ticks after boot: tells a reused pid from the process before it


def parse_stat(text: str) -> Proc | None:
    """A /proc/<pid>/stat line; None for zombies, dying processes and garbage."""
    # The command name (field 2) may contain spaces and parentheses: split after it.
    fields = text.rpartition(")")[2].split(maxsplit=22)  # up to rss, field 24
    try:
        state, ppid, start, rss = fields[0], int(fields[1]), int(fields[19]), int(fields[21])
    except (IndexError, ValueError):
        return None
    return None if state in ("Z", "X") else Proc(ppid, rss * PAGE, start)


def marker_of(environ: bytes) -> str | None:
    """The instance marker in a process's environment block, if it has one."""
    prefix = MARKER.encode() + b"="
    for var in environ.split(b"\0"):
        if var.startswith(prefix):
            return var[len(prefix) :].decode(errors="replace")
    return None


class ProcFS:
    """Reads of /proc: the node's only view of other processes. Paths are opened relative
    to one directory descriptor kept open (no path building or lookup of /proc itself per
    read: that alone halved the cost of a pass)."""

    def __init__(self, root: Path = Path("/proc")) -> None:
        self.root = root
        self._fd: int | None = None

    def _dir(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        return self._fd

    def pids(self) -> list[int]:
        return [int(p) for p in os.listdir(self._dir()) if p.isdigit()]

    def _read(self, path: str, whole: bool) -> bytes | None:
        """The file's bytes (only the first 4 KiB unless `whole`); None if it is gone."""
        try:
            fd = os.open(path, os.O_RDONLY, dir_fd=self._dir())
        except OSError:
            return None
        try:
            chunks = [os.read(fd, 4096)]
            while whole and chunks[-1]:
                chunks.append(os.read(fd, 65536))
            return b"".join(chunks)
        except OSError:
            return None
        finally:
            os.close(fd)

    def stat(self, pid: int) -> str | None:
        data = self._read(f"{pid}/stat", whole=False)  # one line, well under 4 KiB
        return None if data is None else data.decode(errors="replace")

    def environ(self, pid: int) -> bytes | None:
        return self._read(f"{pid}/environ", whole=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class Table:
    """Every live process of the machine at one moment, with the markers known for them."""

    procs: Mapping[int, Proc]
    marks: Mapping[int, str]  # pid -> the instance its environment names

    def groups(
        self, roots: Mapping[str, int | None], exclude: Iterable[int] = ()
    ) -> dict[str, set[int]]:
        """Each instance's processes: its root (if alive), every process marked with its
        name, and all their descendants (pure; the children map is built once)."""
        children: dict[int, list[int]] = defaultdict(list)
        for pid, proc in self.procs.items():
            children[proc.ppid].append(pid)
        marked: dict[str, list[int]] = defaultdict(list)
        for pid, name in self.marks.items():
            if name in roots and pid in self.procs:
                marked[name].append(pid)
        skip = set(exclude)
        found: dict[str, set[int]] = {}
        for name, root in roots.items():
            todo = list(marked[name])
            if root is not None and root in self.procs:
                todo.append(root)
            seen: set[int] = set()
            while todo:
                pid = todo.pop()
                if pid not in seen and pid not in skip:
                    seen.add(pid)
                    todo.extend(children.get(pid, ()))
            found[name] = seen
        return found

    def rss(self, pids: Iterable[int]) -> int:
        return sum(self.procs[p].rss for p in pids if p in self.procs)


@dataclass
class Scanner:
    """One /proc pass at a time (thread-safe: passes may run in worker threads)."""

    fs: ProcFS = field(default_factory=ProcFS)
    _marks: dict[tuple[int, int], str | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def scan(self) -> Table:
        """Read /proc once: every live process, and the marker of each (environments only
        of processes not seen in an earlier pass)."""
        with self._lock:
            procs: dict[int, Proc] = {}
            for pid in self.fs.pids():
                text = self.fs.stat(pid)
                proc = parse_stat(text) if text is not None else None
                if proc is not None:
                    procs[pid] = proc
            marks: dict[tuple[int, int], str | None] = {}
            for pid, proc in procs.items():
                key = (pid, proc.start)
                if key in self._marks:
                    marks[key] = self._marks[key]
                else:
                    environ = self.fs.environ(pid)
                    marks[key] = marker_of(environ) if environ is not None else None
            self._marks = marks  # forget processes that are gone
            return Table(procs, {pid: name for (pid, _), name in marks.items() if name is not None})

    def pids_of(self, root: int | None, instance_id: str) -> set[int]:
        """Pids of `root`, its descendants and every process marked with `instance_id`."""
        return self.scan().groups({instance_id: root}, exclude=(os.getpid(),))[instance_id]


def instance_pids(root: int | None, instance_id: str) -> set[int]:
    """Pids of `root`, its descendants and every process marked with `instance_id`."""
    return Scanner().pids_of(root, instance_id)


def signal_instance(root: int | None, instance_id: str, sig: signal.Signals) -> int:
    """Send `sig` to every process of the instance; returns how many were signalled."""
    count = 0
    for pid in instance_pids(root, instance_id):
        try:
            os.kill(pid, sig)
            count += 1
        except ProcessLookupError:
            pass
    return count


@dataclass(frozen=True)
class Limits:
    pids: int
    memory_bytes: int


def over_limit(count: int, rss: int, limits: Limits) -> str | None:
    """Which limit a jail with `count` processes using `rss` bytes is over, if any."""
    if count > limits.pids:
        return "pids"
    if rss > limits.memory_bytes:
        return "memory"
    return None


@dataclass(eq=False)
class _Entry:
    name: str
    root: Callable[[], int | None]  # the jail's first process while it lives
    limits: Limits
    interval: float
    wake: trio.Event = field(default_factory=trio.Event)
    reason: str | None = None


@dataclass
class Watchdog:
    """Memory and process limits for jails without cgroups: one pass for the whole node."""

    scanner: Scanner = field(default_factory=Scanner)
    passes: int = 0  # how many passes ran (shown in logs and tests)
    _entries: set[_Entry] = field(default_factory=set)
    _leading: bool = False

    async def watch(
        self, name: str, root: Callable[[], int | None], limits: Limits, interval: float
    ) -> str:
        """Wait until jail `name` is over a limit and return which one (`pids`, `memory`);
        the pass runs every `interval` s at least while this jail is watched."""
        entry = _Entry(name, root, limits, interval)
        self._entries.add(entry)
        try:
            while entry.reason is None:
                if self._leading:
                    await entry.wake.wait()
                    entry.wake = trio.Event()
                    continue
                self._leading = True
                try:
                    await self._lead(entry)
                finally:
                    self._leading = False
                    for other in self._entries:  # the next one to wake takes over
                        other.wake.set()
            return entry.reason
        finally:
            self._entries.discard(entry)

    async def _lead(self, mine: _Entry) -> None:
        """Run passes until `mine` is over a limit (or this task is cancelled)."""
        while mine.reason is None:
            entries = list(self._entries)
            roots = {e.name: e.root() for e in entries}
            usage = await trio.to_thread.run_sync(self._measure, roots)
            self.passes += 1
            for e in entries:
                count, rss = usage.get(e.name, (0, 0))
                e.reason = e.reason or over_limit(count, rss, e.limits)
                if e.reason is not None:
                    e.wake.set()
            if mine.reason is None:
                await trio.sleep(min(e.interval for e in self._entries))

    def _measure(self, roots: Mapping[str, int | None]) -> dict[str, tuple[int, int]]:
        """(process count, resident bytes) of each jail, from one pass (worker thread)."""
        table = self.scanner.scan()
        groups = table.groups(roots, exclude=(os.getpid(),))
        return {name: (len(pids), table.rss(pids)) for name, pids in groups.items()}
