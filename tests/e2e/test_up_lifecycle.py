"""Nothing outlives `foundry up`: not after kill -9, not after SIGHUP (a closed terminal),
not after the SIGTERM-then-SIGKILL of an impatient service manager; and a `foundry up`
on a home that an earlier crash left dirty cleans it up and says so.

Each case runs its own platform on a fresh home, with instances and a one-off task
running, and then looks at every process on the machine."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from control.cli.supervisor import restart_delay
from node import cgroups
from node.jail import scope_of
from tests.e2e.conftest import EXAMPLES, ROOT, Platform, eventually

pytestmark = pytest.mark.slow
GONE_WITHIN = 5.0
KILLS = 6  # one more than the old supervisor's five exits a minute


def processes_of(home: Path, instance_ids: set[str]) -> dict[int, str]:
    """Every live process of the platform at `home`: its roles (they inherit FOUNDRY_HOME
    or name the home) and the jails of its instances and tasks (by their marker)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state == "Z":
            continue
        marker = next(
            (v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"FOUNDRY_INSTANCE_ID=")),
            None,
        )
        if (
            f"FOUNDRY_HOME={home}".encode() in env
            or str(home).encode() in cmd
            or any(marker and marker.startswith(i) for i in instance_ids)
        ):
            found[int(entry)] = cmd.decode(errors="replace")[:120]
    return found


def running_platform(tmp_path: Path) -> tuple[Platform, set[str], subprocess.Popen[str]]:
    """A platform with two instances of an app and a long one-off task running."""
    p = Platform(tmp_path / "home")
    p.start()
    p.cli("push", str(EXAMPLES / "hello-python"), "--name", "doomed", "-i", "2")
    eventually(
        lambda: (
            sum(
                i["state"] == "RUNNING"
                for i in json.loads(p.cli("app", "doomed", "--json").stdout)["instances"]
            )
            == 2
        ),
        60,
        "2 instances",
    )
    task = subprocess.Popen(
        [sys.executable, "-m", "foundry", "run", "doomed", "--", "sleep", "300"],
        env=p.env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    ids = {i["id"] for i in json.loads(p.cli("app", "doomed", "--json").stdout)["instances"]}
    ids.add("task-")  # a one-off task's jail is marked task-<id>
    eventually(lambda: len(processes_of(p.home, ids)) >= 5, 30, "roles, instances and task")
    return p, ids, task


@pytest.mark.parametrize("how", ["kill", "hup", "term-then-kill"])
def test_nothing_outlives_foundry_up(tmp_path: Path, how: str) -> None:
    p, ids, task = running_platform(tmp_path)
    assert p.proc is not None
    try:
        before = processes_of(p.home, ids)
        if how == "term-then-kill":
            p.proc.terminate()
            time.sleep(2)  # the case itself: SIGKILL lands mid-way through a stop
        began = time.monotonic()  # from the last signal: a SIGHUP stop is counted whole
        p.proc.send_signal(signal.SIGHUP if how == "hup" else signal.SIGKILL)
        p.proc.wait(20)
        while processes_of(p.home, ids) and time.monotonic() - began < GONE_WITHIN:
            time.sleep(0.1)
        left = processes_of(p.home, ids)
        print(
            f"\nmeasured: {len(before)} processes before {how}; {len(left)} left after "
            f"{time.monotonic() - began:.2f} s"
        )
        assert not left, f"left after {how}: {left}"
    finally:
        task.kill()
        task.wait()
        for pid in processes_of(p.home, ids):
            with_suppressed_kill(pid)


def with_suppressed_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_a_new_up_cleans_what_a_crash_left(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "node").mkdir(parents=True)
    # An orphaned role of an earlier run (as older versions left them), a jail cgroup the
    # killed node agent could not remove, and a pid file naming a process that is gone.
    orphan = subprocess.Popen(
        ["sleep", "300"], env={"FOUNDRY_UP_HOME": str(home)}, start_new_session=True
    )
    driver = cgroups.detect() if os.geteuid() == 0 else None
    stale = None
    if driver is not None:
        stale = driver.scoped(scope_of(str((home / "node").resolve()))[0]).group("left-0")
        stale.create(cgroups.limits_for(64, 16))
        jailed = subprocess.Popen(["sleep", "300"], start_new_session=True)
        for f in stale.procs_files():
            Path(f).write_text(str(jailed.pid))
    (home / "up.pid").write_text("999999999 12345\n")
    p = Platform(home)
    try:
        p.start()
        banner = (home.parent / "up.out").read_text()
        assert "Cleaned up after an earlier run" in banner, banner
        assert orphan.wait(5) == -signal.SIGKILL
        if stale is not None:
            assert jailed.wait(5) == -signal.SIGKILL
            assert not any(Path(f).exists() for f in stale.procs_files())
        # The new platform works, and a second `foundry up` on its home is refused.
        second = Platform(home)
        assert p.proc is not None
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "foundry",
                "up",
                "--http-port",
                str(second.http_port),
                "--api-port",
                str(second.api_port),
            ],
            env=second.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode != 0
        assert out.stderr.strip().splitlines() == [
            f"foundry: foundry up is already running for {home} (pid {p.proc.pid})"
        ], out.stderr
        assert p.api("GET", "/v1/health").status_code == 200
    finally:
        orphan.kill()
        if p.proc is not None and p.proc.poll() is None:
            p.stop()


def control_pids(home: Path) -> set[int]:
    """Live (not zombie) control plane processes of the platform at `home`."""
    found = set()
    needle = f"foundry control --home {home / 'control'} ".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in cmd and state != "Z":
            found.add(int(entry))
    return found


def test_a_control_plane_that_keeps_exiting_is_restarted_while_apps_keep_answering(
    tmp_path: Path,
) -> None:
    """`foundry up` used to stop the whole platform after five control-plane exits in a
    minute. Now it restarts it for as long as it runs, with a growing delay, saying so;
    meanwhile the edge and the node keep serving the app."""
    p = Platform(tmp_path / "home")
    p.start()
    answers: list[int | str] = []
    done = threading.Event()

    def keep_asking() -> None:
        while not done.is_set():
            try:
                answers.append(p.get("steady").status_code)
            except httpx.HTTPError as e:
                answers.append(repr(e))
            time.sleep(0.2)

    asker = threading.Thread(target=keep_asking)
    try:
        p.cli("push", str(ROOT / "tests" / "apps" / "tiny-web"), "--name", "steady")
        assert p.get("steady").status_code == 200
        asker.start()
        killed: set[int] = set()
        for _ in range(KILLS):  # each as soon as `foundry up` has started it again
            pid = eventually(
                lambda: next(iter(control_pids(p.home) - killed), None),
                60,
                "the control plane to be started again",
            )
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        assert p.proc is not None
        eventually(
            lambda: p.api("GET", "/v1/health").status_code == 200,
            60,
            "the control plane to answer again",
        )
        assert p.proc.poll() is None, p.logs()
        said = [
            line
            for line in (p.home.parent / "up.out").read_text().splitlines()
            if line.startswith("control exited (killed by SIGKILL)")
        ]
        assert len(said) == KILLS, said
        assert "restarting it now (exit 1 in a row;" in said[0]
        assert f"restarting it in {restart_delay(KILLS):g} s (exit {KILLS} in a row;" in said[-1]
        assert p.api("GET", "/v1/apps/steady").status_code == 200
        time.sleep(3)  # the control plane back in charge: the app is left alone
    finally:
        done.set()
        if asker.is_alive():
            asker.join()
        if p.proc is not None and p.proc.poll() is None:
            p.stop()
    print(f"\nmeasured: {len(answers)} requests through the edge during {KILLS} kills")
    assert len(answers) > 20
    assert set(answers) == {200}, [a for a in answers if a != 200][:5]
