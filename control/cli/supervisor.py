"""`foundry up`: the three roles as supervised child processes of one foreground process.

Rules kept here:
  * One live `foundry up` per home (its pid and start time in up.pid); a crashed one's
    leftovers (processes, jail cgroups) are removed before anything starts.
  * Our ports are checked free after that claim and before anything is written but the
    pid file: the readiness checks would take another program's answers for ours.
  * Children run in their own sessions, so a Ctrl-C reaches only the supervisor, which
    then stops them in order: edge and node first (the node stops its apps), then the
    control plane, all within 10 s. A child that dies on its own is restarted, for as
    long as `foundry up` runs: at once the first time, then after a delay that doubles
    with each exit in a row up to 30 s (`restart_delay`); a role that stayed up a minute
    starts the count again. Each exit is said in one line (role, exit status, delay),
    and the other roles keep running meanwhile: the edge keeps serving the apps while
    the control plane is away. SIGHUP (a closed terminal) stops the platform as Ctrl-C
    does; if the supervisor dies without stopping (kill -9), the kernel kills each role
    with it (`upprocs.die_with_up`).
  * What the node and edge know (the jail marker, jail cgroups, isolation tier, port
    probing) is handed in as `Machine`: control/ never imports node/ or edge/.
  * Nothing here prints: lines go to `say`; failures are CLIError.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from control.cli.client import CLIError
from control.cli.upprocs import UP_HOME_ENV, UP_PID_ENV, leftovers, processes, start_time
from control.store import Store
from control.vault import secure_home

ROOT = Path(__file__).resolve().parents[1]  # where `python -m foundry` finds foundry.py
FIRST_DELAY = 0.5  # seconds before the second restart in a row; doubles from there
MAX_DELAY = 30.0
STABLE_AFTER = 60.0  # a role up this long has stopped crash-looping: its count restarts


def restart_delay(exits_in_a_row: int) -> float:
    """Seconds to wait before restarting a role that exited `exits_in_a_row` times, each
    within STABLE_AFTER of its start: at once the first time, then doubling, capped."""
    if exits_in_a_row <= 1:
        return 0.0
    return min(MAX_DELAY, FIRST_DELAY * 2.0 ** min(exits_in_a_row - 2, 32))


def exits_in_a_row(before: int, ran: float) -> int:
    """The count after one more exit of a role that ran `ran` seconds this time."""
    return 1 if ran >= STABLE_AFTER else before + 1


def exit_status(code: int) -> str:
    """How a role's exit reads in the restart line."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Say(Protocol):
    def __call__(self, text: str, /, *, err: bool = False) -> None:
        """Show a line to the user (stdout, or stderr with `err`)."""


@dataclass(frozen=True)
class Machine:
    """What `foundry up` needs from the node and edge roles, given by foundry.py."""

    jail_marker: str  # the environment name the node sets in every jail
    sweep_cgroups: Callable[[Path], int]  # node home -> jail cgroups removed
    port_problem: Callable[[str, int], str | None]  # why host:port cannot be listened on
    isolation: Callable[[], str]  # the jail tier the local node will pick, described


def write_secret(path: Path, secret: str) -> None:
    """Write `secret` to a file only its owner may read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


class Up:
    """`foundry up`: the three roles as supervised child processes of this one."""

    NODE_GRACE = 6.0

    def __init__(
        self, home: Path, http_port: int, api_port: int, domain: str, machine: Machine, say: Say
    ) -> None:
        self.home = home
        self.http_port = http_port
        self.api_port = api_port
        self.domain = domain
        self.machine = machine
        self.say = say
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.env: dict[str, dict[str, str]] = {}

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "up.pid"

    def apps_url(self) -> str:
        return f"http://{{app}}.{self.domain}:{self.http_port}"

    def run(self) -> None:
        """Start the roles, wait until they serve, and supervise them until told to stop."""
        self.prepare()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: setattr(self, "stopping", True))
        try:
            self.spawn("control")
            self.wait_ready("control", lambda: _http_ok(self.api_url + "/v1/health"))
            self.spawn("node")
            self.spawn("edge")
            self.wait_ready("edge", lambda: _port_open(self.http_port))
            self.banner()
            self.supervise()
        finally:
            self.shutdown()

    # --- before the roles start ---------------------------------------------------------
    def claim_home(self) -> None:
        """Refuse a home another live `foundry up` runs; clear what a crashed one left."""
        try:
            pid, started = self.pid_file.read_text().split()
        except (OSError, ValueError):
            pid, started = "0", ""
        if pid.isdigit() and int(pid) != os.getpid() and start_time(int(pid)) == started:
            raise CLIError(f"foundry up is already running for {self.home} (pid {pid})")
        killed = self._kill_leftovers() if sys.platform.startswith("linux") else 0
        groups = self._sweep_cgroups()
        if killed or groups or self.pid_file.exists():
            self.say(
                f"Cleaned up after an earlier run that did not stop: {killed} "
                f"processes killed, {groups} jail cgroups removed"
            )
        write_secret(self.pid_file, f"{os.getpid()} {start_time(os.getpid())}")

    def _kill_leftovers(self) -> int:
        pids = leftovers(processes(self.machine.jail_marker), self.home, os.getpid())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.05)  # (a zombie whose parent is gone is reaped by init at once)
        return len(pids)

    def _sweep_cgroups(self) -> int:
        """Jail cgroups of this home's node that a killed node agent could not remove."""
        if not sys.platform.startswith("linux") or os.geteuid() != 0:
            return 0
        return self.machine.sweep_cgroups((self.home / "node").resolve())

    def check_ports(self) -> None:
        """Refuse to start beside another program on our ports, before writing anything
        but the pid file. The roles refuse too, but the readiness checks would take the
        other program's answers for theirs (another platform's health, another edge's open
        port) and report a platform that is not ours."""
        for host, port, option in (
            ("127.0.0.1", self.api_port, "--api-port"),
            ("0.0.0.0", self.http_port, "--http-port"),
        ):
            problem = self.machine.port_problem(host, port)
            if problem:
                raise CLIError(f"{problem} (pick another with {option})")

    def prepare(self) -> None:
        """Create the home, the tokens the roles need, and the CLI's settings."""
        for sub in ("control", "node", "logs"):
            (self.home / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        self.claim_home()
        try:
            self.check_ports()  # after claim_home: a crashed run of this home held them
        except CLIError:
            self.pid_file.unlink(missing_ok=True)
            raise
        tightened = secure_home(self.home / "control")
        if tightened:
            self.say(
                f"tightened {tightened} path(s) under {self.home / 'control'}: "
                "group/other access removed",
                err=True,
            )
        self.env = self._role_env()
        (self.home / "cli.json").write_text(
            json.dumps(
                {
                    "api": self.api_url,
                    "token_file": str(self.home / "admin-token"),
                    "apps_url": self.apps_url(),
                },
                indent=2,
            )
        )

    def _role_env(self) -> dict[str, dict[str, str]]:
        """The tokens each role starts with (made now where the home has none that works)."""
        store = Store(self.home / "control" / "foundry.db")
        try:
            _token(store, self.home / "admin-token", "admin")
            edge_token = _token(store, self.home / "edge-token", "edge")
            node_env = {}
            if not (self.home / "node" / "identity.json").exists():
                _, node_env["FOUNDRY_JOIN_TOKEN"] = store.create_token(
                    "join", uses=1, ttl=3600, label="foundry up (local node)"
                )
        finally:
            store.close()
        return {"control": {}, "node": node_env, "edge": {"FOUNDRY_EDGE_TOKEN": edge_token}}

    # --- the roles ----------------------------------------------------------------------
    def argv(self, role: str) -> list[str]:
        me = [sys.executable, "-m", "foundry"]
        if role == "control":
            return [
                *me,
                "control",
                "--home",
                str(self.home / "control"),
                "--listen",
                f"127.0.0.1:{self.api_port}",
                "--domain",
                self.domain,
                "--apps-url",
                self.apps_url(),
            ]
        if role == "node":
            return [
                *me,
                "node",
                "join",
                self.api_url,
                "--home",
                str(self.home / "node"),
                "--name",
                "local",
                "--grace",
                str(self.NODE_GRACE),
            ]
        return [*me, "edge", "--listen", f"0.0.0.0:{self.http_port}", "--control", self.api_url]

    def spawn(self, role: str) -> None:
        log = open(self.home / "logs" / f"{role}.log", "ab")  # noqa: SIM115 (child keeps it)
        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {
            **os.environ,
            **self.env[role],
            "PYTHONPATH": pythonpath,
            UP_PID_ENV: str(os.getpid()),
            UP_HOME_ENV: str(self.home),
        }
        self.procs[role] = subprocess.Popen(
            self.argv(role),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, role: str, check: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            if self.procs[role].poll() is not None:
                break
            if check():
                return
            time.sleep(0.05)
        log = self.home / "logs" / (role + ".log")
        reason = _last_line(log) if self.procs[role].poll() is not None else ""
        raise CLIError(f"{role} did not start{': ' + reason if reason else ''}; see {log}")

    def banner(self) -> None:
        self.say(f"Foundry is up (home {self.home})")
        self.say(f"  API:        {self.api_url}  (also http://api.{self.domain}:{self.http_port})")
        self.say(f"  Apps:       {self.apps_url().replace('{app}', '<app>')}")
        self.say(f"  Admin token: {self.home / 'admin-token'}")
        self.say(f"  Logs:       {self.home / 'logs'}")
        self.say(f"  Isolation:  {self.machine.isolation()}")
        if self.home != Path.home() / ".foundry":
            self.say(f"In another terminal, first: export FOUNDRY_HOME={self.home.resolve()}")
        self.say("Press Ctrl-C to stop.")
        sys.stdout.flush()

    def supervise(self) -> None:
        """Restart each role that exits, with backoff, until told to stop."""
        started = dict.fromkeys(self.procs, time.monotonic())
        in_a_row: dict[str, int] = {}
        due: dict[str, float] = {}  # role -> when its restart is due
        while not self.stopping:
            time.sleep(0.2)
            for role, proc in list(self.procs.items()):
                now = time.monotonic()
                if self.stopping or (role not in due and proc.poll() is None):
                    continue
                if role in due:
                    if now >= due[role]:
                        del due[role]
                        self.spawn(role)
                        started[role] = now
                    continue
                ran = now - started[role]
                in_a_row[role] = exits_in_a_row(in_a_row.get(role, 0), ran)
                delay = restart_delay(in_a_row[role])
                due[role] = now + delay
                self.say(
                    f"{role} exited ({exit_status(proc.returncode)}) after {ran:.1f} s; "
                    f"restarting it {f'in {delay:g} s' if delay else 'now'} "
                    f"(exit {in_a_row[role]} in a row; see {self.home / 'logs' / role}.log)",
                    err=True,
                )

    def shutdown(self) -> None:
        """Stop edge and node, then the control plane; kill whatever outlives 10 s."""
        deadline = time.monotonic() + 9.5
        for group in (("edge", "node"), ("control",)):
            running = [self.procs[r] for r in group if r in self.procs]
            for proc in running:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in running:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.pid_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            self.say("Foundry stopped.")


def _token(store: Store, path: Path, kind: str) -> str:
    """The token saved at `path` while the store still knows it as `kind`, else a new one."""
    if path.exists():
        secret = path.read_text().strip()
        token = store.authenticate(secret)
        if token is not None and token.kind == kind:
            return secret
    _, secret = store.create_token(kind, label=f"foundry up ({kind})")
    write_secret(path, secret)
    return str(secret)


def _last_line(path: Path) -> str:
    """The last non-empty line of a role's log: why it exited, when it said so."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return last.removeprefix("foundry: ")


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
