"""Starting the node's child processes from the agent's own (main) thread.

Why this module exists: a parent-death signal (bubblewrap's `--die-with-parent`, or
`prctl(PR_SET_PDEATHSIG)`) is tied to the *thread* that forked the child, not to the
process. `trio.lowlevel.open_process` forks in a worker thread, and trio retires a worker
thread after ~10 s without work, so on a quiet node every jail got SIGKILL ten seconds
after it started. Forking here, on the thread that runs trio (the agent's main thread,
which lives exactly as long as the agent), makes "dies with its parent" mean "dies with
the node agent", which is the promise the jails need.

Rules: `open_process` is the only way the node starts a long-lived child; the fork itself
is synchronous (Popen uses vfork, well under a millisecond); waiting for the exit is async
(a pidfd the event loop watches, or a short poll where pidfds do not exist).

Orphans: bubblewrap's outer process exits as soon as the app does, before its inner
process (the jail's pid 1) has finished, so that inner `bwrap` is orphaned and left a
zombie for whatever init the machine has (in a container, often one that never reaps).
The agent therefore makes itself the child subreaper (`adopt_orphans`) and reaps those
orphans itself (`reap_orphans`): only zombie children named `bwrap` that no `Child` of
ours still waits for, so no exit status Popen or trio waits for is ever taken.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

POLL_INTERVAL = 0.05  # only without pidfds (not Linux >= 5.3)
PR_SET_CHILD_SUBREAPER = 36
_WAITED: set[int] = set()  # pids of our Children whose exit status Popen has not taken yet


class Child:
    """A started process: its pid, merged stdout stream (if piped) and its exit."""

    def __init__(self, popen: subprocess.Popen[bytes], stdout: trio.lowlevel.FdStream | None):
        self._popen = popen
        self.stdout = stdout
        self.pid = popen.pid
        _WAITED.add(self.pid)

    @property
    def returncode(self) -> int | None:
        code = self._popen.poll()
        if code is not None:
            _WAITED.discard(self.pid)
        return code

    async def wait(self) -> int:
        """Wait for the exit without a thread; returns Popen's code (negative = signal)."""
        if self._popen.poll() is not None:
            return self._popen.returncode
        pidfd = _pidfd(self.pid)
        try:
            while self._popen.poll() is None:
                if pidfd is None:
                    await trio.sleep(POLL_INTERVAL)
                else:
                    await trio.lowlevel.wait_readable(pidfd)
        finally:
            if pidfd is not None:
                trio.lowlevel.notify_closing(pidfd)
                os.close(pidfd)
        _WAITED.discard(self.pid)
        return self._popen.returncode


def adopt_orphans() -> bool:
    """Become the reaper of this process's orphaned descendants (Linux; False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def reap_orphans() -> int:
    """Reap adopted jail orphans: zombie children named `bwrap` that no Child waits for."""
    me, reaped = os.getpid(), 0
    for entry in os.listdir("/proc") if sys.platform.startswith("linux") else ():
        if not entry.isdigit() or int(entry) in _WAITED:
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = text[text.find("(") + 1 : text.rfind(")")]
        state, ppid = text[text.rfind(")") + 2 :].split()[:2]
        if state == "Z" and int(ppid) == me and name == "bwrap":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry), os.WNOHANG)
                reaped += 1
    return reaped


def _pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:  # already reaped, or a kernel without pidfds
        return None
    return fd


async def open_process(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None, pass_fds: Sequence[int] = ()
) -> Child:
    """Fork `argv` from this thread in a new session, stdin from /dev/null, stdout and
    stderr merged into one pipe the caller reads as `child.stdout`."""
    await trio.lowlevel.checkpoint()
    read_end, write_end = os.pipe()
    try:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=write_end,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return Child(popen, trio.lowlevel.FdStream(read_end))
