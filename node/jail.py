"""Jails: the isolation every build and every instance runs in, in three tiers.

* `full` (root on Linux, bubblewrap, cgroups): new pid/mount/ipc/uts namespaces; a
  root of read-only /usr (+ the /bin, /lib, /lib64, /sbin links), a filtered /etc,
  the app dir read-write at /app, private /tmp and /dev/shm, fresh /proc, minimal
  /dev; an unprivileged uid of its own (from `uid_base`), no_new_privs, no
  capabilities; the default seccomp filter (node/seccomp.py: no new namespaces, no
  dangerous syscalls); cgroup limits on memory (no swap), pids and CPU share.
* `rootless` (namespaces but no cgroups, e.g. not root): the same view and filter; memory and
  process count are enforced by a watchdog, core dumps by rlimits.
* `plain` (no namespaces): a process group and a clean environment. Not a security
  boundary, and the node says so loudly.

Invariants: the tier is decided once, by the pure `choose_tier` over a `Probe`; a
jailed process is in its cgroup before anything of the app runs (the launcher shell
writes its own pid into `cgroup.procs`, then execs bubblewrap; no `preexec_fn`);
`Jailed.close()` leaves no process, cgroup or uid reservation behind; `out of
memory` is reported only for a SIGKILL death with OOM evidence (the cgroup's
oom_kill counter went up, or the watchdog fired).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from node import cgroups, seccomp, spawn
from node.proctree import MARKER, Limits, Scanner, Watchdog

log = logging.getLogger("foundry.node")

FULL, ROOTLESS, PLAIN = "full", "rootless", "plain"
TIERS = (FULL, ROOTLESS, PLAIN)  # strongest first
APP = "/app"
UID_BASE, UID_BLOCK = 20000, 1000  # node k's jail uids: UID_BASE + k*UID_BLOCK, 1000 of them
UNFILTERED = seccomp.Filter(None, "none: not configured")  # frozen, so one shared default
# Seconds between the watchdog's passes (tiers without cgroups). A pass reads every
# process's /proc/<pid>/stat (~40 us each on a busy laptop): at 0.5 s, a node with a few
# hundred processes spends ~3 % of a core on it; a memory hog may outgrow its limit for
# at most that long (the full tier's cgroups are exact).
WATCH_INTERVAL = 0.5
ETC = (
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "resolv.conf",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "gai.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "timezone",
    "mime.types",
    "protocols",
    "services",
    "os-release",
    "debian_version",
)
SYSTEM_LINKS = ("bin", "lib", "lib64", "sbin")
# Puts the launcher shell into each cgroup.procs file given before "--", then execs the rest.
ENTER_CGROUPS = (
    'for f do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; shift; exec "$@"'
)


class JailError(RuntimeError):
    """A jail could not be set up."""


@dataclass(frozen=True)
class Probe:
    """What the machine offers, as found at node start."""

    linux: bool
    root: bool
    bwrap: bool
    setpriv: bool
    userns: bool
    cgroup_version: int | None  # a usable driver (memory + pids [+ freezer on v1])


@dataclass(frozen=True)
class TierChoice:
    tier: str
    reason: str


def _best_tier(p: Probe) -> TierChoice:
    if not p.linux:
        return TierChoice(PLAIN, "not Linux: no namespaces or cgroups")
    if not p.bwrap:
        return TierChoice(PLAIN, "bubblewrap (bwrap) is not installed")
    if p.root and not p.setpriv:
        return TierChoice(PLAIN, "setpriv (util-linux) is missing: cannot drop to a jail uid")
    if p.root and p.cgroup_version:
        return TierChoice(FULL, f"root with bubblewrap and cgroup v{p.cgroup_version}")
    if p.root:
        return TierChoice(
            ROOTLESS, "no usable cgroup memory/pids controllers: limits by watchdog and rlimits"
        )
    if p.userns:
        return TierChoice(ROOTLESS, "not root: user namespaces; limits by watchdog and rlimits")
    return TierChoice(PLAIN, "not root and user namespaces do not work")


def choose_tier(p: Probe, forced: str | None = None) -> TierChoice:
    """The tier to run: the strongest available, or `forced` if it is not stronger."""
    best = _best_tier(p)
    if not forced or forced == best.tier:
        return best
    if forced not in TIERS:
        raise JailError(f"unknown jail tier {forced!r}: use one of {', '.join(TIERS)}")
    if TIERS.index(forced) < TIERS.index(best.tier):
        return TierChoice(best.tier, f"{forced} was asked for but is unavailable: {best.reason}")
    return TierChoice(forced, f"forced (this machine allows {best.tier})")


def probe(bwrap: str | None = None) -> tuple[Probe, cgroups.Driver | None]:
    """Look at this machine (runs bwrap once to test user namespaces)."""
    linux = sys.platform.startswith("linux")
    bwrap = bwrap or shutil.which("bwrap")
    root = linux and os.geteuid() == 0
    driver = cgroups.detect() if root else None
    userns = False
    if linux and bwrap:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            userns = (
                subprocess.run(
                    [bwrap, "--unshare-user", "--ro-bind", "/", "/", "true"],
                    capture_output=True,
                    timeout=10,
                ).returncode
                == 0
            )
    return Probe(
        linux=linux,
        root=root,
        bwrap=bool(bwrap),
        setpriv=bool(shutil.which("setpriv")),
        userns=userns,
        cgroup_version=driver.version if driver else None,
    ), driver


@dataclass(frozen=True)
class Bind:
    """A host path shown inside the jail at `inside`."""

    host: Path
    inside: str
    writable: bool = False


@dataclass(frozen=True)
class JailSpec:
    name: str  # unique per jail: an instance or build id
    argv: tuple[str, ...]  # in the jail's paths
    env: dict[str, str]
    app_dir: Path  # read-write at /app; the working directory
    memory_mb: int = 256
    binds: tuple[Bind, ...] = ()


def system_view(etc_root: Path = Path("/etc"), root: Path = Path("/")) -> list[str]:
    """bwrap arguments for the read-only system part of the root (what this host has)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in SYSTEM_LINKS:
        path = root / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir():
            args += ["--ro-bind", str(path), f"/{name}"]
    args += ["--dir", "/etc"]
    for name in ETC:
        if (etc_root / name).exists():
            args += ["--ro-bind", str(etc_root / name), f"/etc/{name}"]
    return args


def bwrap_args(
    spec: JailSpec,
    system: Sequence[str],
    passwd_fd: int,
    group_fd: int,
    userns: bool,
    seccomp_fd: int | None = None,
) -> list[str]:
    """bubblewrap's arguments for `spec` (pure: fds and the system view are given)."""
    args = [
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "app",
    ]
    if userns:
        args += ["--unshare-user", "--disable-userns"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    args += [
        *system,
        "--perms",
        "0444",
        "--ro-bind-data",
        str(passwd_fd),
        "/etc/passwd",
        "--perms",
        "0444",
        "--ro-bind-data",
        str(group_fd),
        "/etc/group",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
    ]
    tmp_size = str(spec.memory_mb << 20)
    for tmp in ("/tmp", "/dev/shm"):
        args += ["--perms", "1777", "--size", tmp_size, "--tmpfs", tmp]
    args += ["--bind", str(spec.app_dir), APP]
    made = {"/"}
    for b in spec.binds:
        for parent in reversed(Path(b.inside).parents):  # bwrap would make them 0700
            if str(parent) not in made:
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--bind" if b.writable else "--ro-bind", str(b.host), b.inside]
    return [*args, "--chdir", APP, "--remount-ro", "/"]


def drop_to(uid: int) -> list[str]:
    """argv prefix that becomes `uid` with no groups, capabilities or new privileges."""
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]


def identity_files(uid: int) -> tuple[bytes, bytes]:
    """/etc/passwd and /etc/group as a jail shows them: root, nobody and the app user."""
    passwd = (
        f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"app:x:{uid}:{uid}:app:{APP}:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    group = f"root:x:0:\napp:x:{uid}:\nnogroup:x:65534:\n"
    return passwd.encode(), group.encode()


def decode_exit(code: int, bwrapped: bool) -> int:
    """Exit status as Popen reports it (negative = signal); bwrap says 128+N for signal N."""
    if bwrapped and 128 < code < 128 + signal.NSIG:
        return -(code - 128)
    return code


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@dataclass
class Jailer:
    """Starts processes in this node's jail tier; owns the pool of jail uids."""

    choice: TierChoice
    driver: cgroups.Driver | None = None
    bwrap: str = "bwrap"
    uid_base: int = UID_BASE
    uid_count: int = UID_BLOCK
    pids_limit: int = 512
    system: list[str] = field(default_factory=list)
    prlimit: str | None = None
    seccomp: seccomp.Filter = UNFILTERED
    watchdog: Watchdog = field(default_factory=Watchdog)  # the node's one, for every jail
    _uids: set[int] = field(default_factory=set)

    @property
    def scanner(self) -> Scanner:
        return self.watchdog.scanner

    @property
    def tier(self) -> str:
        return self.choice.tier

    @property
    def isolates(self) -> bool:
        """True when jailed processes see the jail's paths (/app …) instead of the host's."""
        return self.tier != PLAIN

    @property
    def drops_uid(self) -> bool:
        return self.isolates and os.geteuid() == 0

    def inside(self, host: str, spec_app: Path, binds: Sequence[Bind] = ()) -> str:
        """Where a host path (the app dir, a bind or below) appears inside the jail."""
        if not self.isolates:
            return host
        for src, dest in [(str(spec_app), APP), *((str(b.host), b.inside) for b in binds)]:
            if host == src or host.startswith(src + "/"):
                return dest + host[len(src) :]
        return host

    def _take_uid(self) -> int:
        for uid in range(self.uid_base, self.uid_base + self.uid_count):
            if uid not in self._uids:
                self._uids.add(uid)
                return uid
        raise JailError("no free jail uid")

    def argv(
        self, spec: JailSpec, uid: int, args_fd: int, group: cgroups.Cgroup | None
    ) -> list[str]:
        """The full command line that starts `spec` in this tier (bwrap's options, host
        paths included, come from `args_fd`: neither `ps` nor the app sees them)."""
        rlimits = [self.prlimit, "--core=0"] if self.prlimit and not group else []
        if not self.isolates:
            return [*rlimits, *spec.argv]
        inner = [*(drop_to(uid) if self.drops_uid else []), *spec.argv]
        jail = [self.bwrap, "--args", str(args_fd), "--", *inner]
        if group is None:
            return [*rlimits, *jail]
        return ["/bin/sh", "-c", ENTER_CGROUPS, "foundry-jail", *group.procs_files(), "--", *jail]

    def _fds(self, spec: JailSpec, uid: int) -> list[int]:
        """memfds for the jail's /etc/passwd, /etc/group, the seccomp program (if any) and
        bwrap's options (last)."""
        if not self.isolates:
            return []
        passwd, grp = identity_files(uid)
        fds = [_memfd("passwd", passwd), _memfd("group", grp)]
        program = self.seccomp.program
        if program is not None:
            fds.append(_memfd("seccomp", program))
        options = bwrap_args(
            spec,
            self.system,
            fds[0],
            fds[1],
            userns=not self.drops_uid,
            seccomp_fd=fds[2] if program is not None else None,
        )
        fds.append(_memfd("bwrap-args", b"".join(o.encode() + b"\0" for o in options)))
        return fds

    async def _own(self, spec: JailSpec, uid: int) -> None:
        owned = [spec.app_dir, *(b.host for b in spec.binds if b.writable)]
        done = await trio.run_process(
            ["chown", "-R", f"{uid}:{uid}", *map(str, owned)], check=False, capture_stderr=True
        )
        if done.returncode != 0:
            raise JailError(f"chown failed: {done.stderr.decode(errors='replace')}")

    async def spawn(self, spec: JailSpec) -> Jailed:
        """Start `spec` in a jail; stdout and stderr come back merged as `proc.stdout`."""
        uid = self._take_uid() if self.drops_uid else os.geteuid()
        group = self.driver.group(spec.name) if self.driver and self.tier == FULL else None
        fds: list[int] = []
        try:
            if self.drops_uid:
                await self._own(spec, uid)
            if group is not None:
                group.create(cgroups.limits_for(spec.memory_mb, self.pids_limit))
            fds = self._fds(spec, uid)
            # Forked from this thread, never a worker thread: see node/spawn.py for why
            # (bwrap's --die-with-parent follows the forking thread, not the agent).
            proc = await spawn.open_process(
                self.argv(spec, uid, fds[-1] if fds else -1, group),
                env={**spec.env, MARKER: spec.name},
                cwd=None if self.isolates else spec.app_dir,
                pass_fds=fds,
            )
        except BaseException:
            if group is not None:
                await trio.to_thread.run_sync(group.remove)
            self._uids.discard(uid)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        log.info("jail-started name=%s tier=%s pid=%s uid=%s", spec.name, self.tier, proc.pid, uid)
        return Jailed(proc, spec.name, self, uid, group, spec.memory_mb << 20)

    def release(self, uid: int) -> None:
        self._uids.discard(uid)

    def close(self) -> None:
        """A clean stop of the node: no cgroup directory of its scope is left behind."""
        if self.driver is not None:
            left = self.driver.close()
            log.info("jail-scope-removed groups-left=%d", left)


@dataclass
class Jailed:
    """One running jail: signal it, kill it whole, tell why it died, clean it up."""

    proc: spawn.Child
    name: str
    jailer: Jailer
    uid: int
    cgroup: cgroups.Cgroup | None
    memory_bytes: int
    watchdog_fired: str | None = None
    oom_kills: int | None = None  # the cgroup's counter, kept when the group is removed

    def pids(self) -> set[int]:
        if self.cgroup is not None:
            return self.cgroup.pids()
        return self.jailer.scanner.pids_of(self.proc.pid, self.name)

    def _is_helper(self, pid: int) -> bool:
        # bwrap's own processes: a SIGTERM there would skip the app's grace period.
        try:
            return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "bwrap"
        except OSError:
            return False

    def terminate(self) -> int:
        """SIGTERM to every process of the jail except bubblewrap itself."""
        count = 0
        for pid in self.pids():
            if pid != os.getpid() and not self._is_helper(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                    count += 1
        return count

    def kill(self) -> None:
        """SIGKILL everything in the jail (the cgroup, or every process found by marker)."""
        if self.cgroup is not None:
            self.cgroup.kill()
            return
        for pid in self.pids():
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def exit_code(self, code: int) -> int:
        return decode_exit(code, self.jailer.isolates)

    def out_of_memory(self, code: int) -> bool:
        """SIGKILLed, with evidence of an OOM kill (cgroup counter or the watchdog)."""
        if self.exit_code(code) != -signal.SIGKILL:
            return False
        if self.cgroup is not None:
            count = self.oom_kills if self.oom_kills is not None else self.cgroup.oom_kills()
            return count > 0
        return self.watchdog_fired == "memory"

    def limit_reason(self, code: int) -> str | None:
        """Why the jail's limits ended it, if they did."""
        if self.out_of_memory(code):
            return "out of memory"
        if self.watchdog_fired == "pids":
            return f"more than {self.jailer.pids_limit} processes"
        return None

    def _root(self) -> int | None:
        return self.proc.pid if self.proc.returncode is None else None

    async def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Without cgroups: kill the jail when it outgrows its memory or process limit.
        Runs until cancelled (the caller cancels it once the jail's process has exited).
        With a cgroup the kernel enforces both limits, so there is nothing to watch."""
        if self.cgroup is not None:
            return
        limits = Limits(self.jailer.pids_limit, self.memory_bytes)
        fired = await self.jailer.watchdog.watch(self.name, self._root, limits, interval)
        self.watchdog_fired = fired
        log.warning("jail-watchdog name=%s limit=%s", self.name, fired)
        self.kill()

    async def close(self) -> None:
        """Kill what is left, remove the cgroup, give back the uid."""
        self.kill()
        if self.cgroup is not None:
            self.oom_kills = self.cgroup.oom_kills()
            await trio.to_thread.run_sync(self.cgroup.remove)
        else:
            with trio.move_on_after(2):
                # Each look is a /proc pass: in a worker thread, as the watchdog's are.
                while await trio.to_thread.run_sync(self.pids):
                    await trio.sleep(0.01)
                    self.kill()
        if self.jailer.drops_uid:
            self.jailer.release(self.uid)
        spawn.reap_orphans()  # the jail's inner bwrap, orphaned when the outer one exited
        log.info("jail-closed name=%s", self.name)


def scope_of(home: str) -> tuple[str, int]:
    """A node's cgroup scope name and first jail uid, both derived from its home, so
    several nodes on one machine neither sweep each other's groups nor share uids."""
    digest = hashlib.sha256(home.encode()).hexdigest()
    return f"node-{digest[:12]}", UID_BASE + (int(digest[12:20], 16) % 4000) * UID_BLOCK


def make_jailer(forced: str | None = None, home: str = "") -> Jailer:
    """Probe the machine and build the jailer for its tier; warns loudly below `full`."""
    found, driver = probe()
    choice = choose_tier(found, forced)
    scope, uid_base = scope_of(home)
    if choice.tier == FULL and driver is not None:
        driver = driver.scoped(scope)
        cleaned = driver.sweep()
        if cleaned:
            log.warning("jail-sweep removed=%d (cgroups left by an earlier run)", cleaned)
        empty = driver.sweep_empty_scopes()
        if empty:
            log.info("jail-sweep empty-scopes=%d", empty)
    if choice.tier == PLAIN:
        log.warning(
            "jail-tier tier=plain reason=%r: apps run as plain child processes; "
            "this is NOT a security boundary",
            choice.reason,
        )
    elif choice.tier == ROOTLESS:
        log.warning("jail-tier tier=rootless reason=%r: no cgroup limits", choice.reason)
    else:
        log.info("jail-tier tier=full reason=%r", choice.reason)
    return Jailer(
        choice,
        driver if choice.tier == FULL else None,
        bwrap=shutil.which("bwrap") or "bwrap",
        uid_base=uid_base,
        uid_count=UID_BLOCK,
        system=system_view(),
        prlimit=shutil.which("prlimit"),
        seccomp=jail_filter(choice.tier, os.uname().machine),
    )


def jail_filter(tier: str, machine: str) -> seccomp.Filter:
    """The seccomp filter jails of `tier` get on `machine`; warns loudly when a jailing
    tier has none (an unknown architecture gets no filter rather than a wrong one)."""
    if tier == PLAIN:
        return seccomp.Filter(None, "none: the plain tier has no jail to filter")
    found = seccomp.for_machine(machine)
    if found.program is None:
        log.warning(
            "jail-seccomp tier=%s filter=%r: jailed apps may use every system call",
            tier,
            found.summary,
        )
    else:
        log.info("jail-seccomp tier=%s filter=%r", tier, found.summary)
    return found
