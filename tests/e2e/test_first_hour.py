"""The first hour of a new user, black-box through the CLI: secrets stay out of git config
and `ps`, the split deployment can be followed (control writes a first admin token and
says where; app URLs carry the edge's port), and the commands Heroku and cf users reach
for first (--version, open, logs --tail/--json, restart -i, events --limit, delete)."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import EXAMPLES, ROOT, Platform, eventually, free_port

pytestmark = pytest.mark.slow
GIT_ID = ["-c", "user.email=dev@example.test", "-c", "user.name=dev"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for var in ("FOUNDRY_API", "FOUNDRY_TOKEN", "FOUNDRY_JOIN_TOKEN", "DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(var, None)
    return {**env, **extra}


def foundry(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foundry", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        env=env or clean_env(),
        input=input,
        timeout=timeout,
    )


# --- secrets in the open ------------------------------------------------------------
def test_git_remote_gets_an_app_scoped_deploy_token_not_the_admins(
    platform: Platform, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "-C", str(repo), "init", "-q", "-b", "main"], check=True)
    admin = (platform.home / "admin-token").read_text().strip()
    platform.cli("git-remote", "remoted", "--dir", str(repo))
    config = (repo / ".git" / "config").read_text()
    assert admin not in config
    tokens = json.loads(platform.cli("tokens", "list", "--json").stdout)
    label = f"git-remote remoted ({socket.gethostname()})"
    mine = [t for t in tokens if t["label"] == label and not t["revoked"]]
    assert len(mine) == 1
    assert mine[0]["kind"] == "deploy"
    assert mine[0]["apps"] == ["remoted"]
    assert f"fdy_{mine[0]['id']}_" in config

    platform.cli("git-remote", "remoted", "--dir", str(repo))  # again: a new token
    tokens = json.loads(platform.cli("tokens", "list", "--json").stdout)
    states = {t["id"]: t["revoked"] for t in tokens if t["label"] == label}
    assert len(states) == 2
    assert states[mine[0]["id"]]
    assert sum(not r for r in states.values()) == 1


def test_up_banner_and_cli_point_at_a_home_that_is_not_the_default(
    platform: Platform, tmp_path: Path
) -> None:
    banner = (platform.home.parent / "up.out").read_text()
    assert f"export FOUNDRY_HOME={platform.home}" in banner
    lost = foundry("apps", env=clean_env(FOUNDRY_HOME=str(tmp_path / "empty")))
    assert lost.returncode == 1
    assert len(lost.stderr.splitlines()) == 1
    assert str(platform.home) in lost.stderr
    assert "export FOUNDRY_HOME=" in lost.stderr


# --- the split deployment -------------------------------------------------------------
class Control:
    """`foundry control` on its own, as the README's split set-up starts it."""

    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "foundry",
                "control",
                "--home",
                str(home),
                "--listen",
                f"127.0.0.1:{self.port}",
                *args,
            ],
            cwd=ROOT,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        seen = b""
        deadline = time.monotonic() + 30
        while b"Admin token" not in seen and time.monotonic() < deadline:
            # a banner that never comes fails the test, it does not hang it
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                break
            seen += chunk
        self.banner = seen.decode().splitlines()

    @property
    def text(self) -> str:
        return "\n".join(self.banner)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=10)


@pytest.fixture
def control_home(tmp_path: Path) -> Path:
    return tmp_path / "control"


def test_control_alone_writes_a_first_admin_token_and_says_where(control_home: Path) -> None:
    first = Control(control_home, "--tls")
    try:
        token_file = control_home / "admin-token"
        assert f"Admin token: {token_file}" in first.text, first.text
        assert f"https://127.0.0.1:{first.port}" in first.text
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        from control.tls import fingerprint

        cert = control_home / "tls" / "cert.pem"
        assert fingerprint(cert.read_text()) in first.text
        url = f"https://127.0.0.1:{first.port}"
        env = clean_env(
            FOUNDRY_API=url,
            FOUNDRY_TOKEN=token_file.read_text().strip(),
            FOUNDRY_CA=str(cert),
            FOUNDRY_HOME=str(control_home.parent / "cli"),
        )
        eventually(
            lambda: foundry("tokens", "list", env=env).returncode == 0,
            30,
            "the API to answer with the first admin token",
        )
        made = foundry("tokens", "create", "--kind", "edge", env=env)
        assert made.returncode == 0
        assert made.stdout.startswith("fdy_")
    finally:
        first.stop()
    secret = token_file.read_text()
    again = Control(control_home, "--tls")  # a later start makes no second admin token
    try:
        assert "made now" not in again.text
        assert token_file.read_text() == secret
    finally:
        again.stop()


def post_source(url: str, token: str, app: str, tmp: Path) -> None:
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    (src / "index.html").write_text("hi\n")
    tgz = tmp / "src.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(src / "index.html", arcname="index.html")
    answer = httpx.post(
        f"{url}/v1/apps/{app}/builds",
        content=tgz.read_bytes(),
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "http://split.localhost:8080"),  # the edge's default port
        (("--edge-port", "80"), "http://split.localhost"),
        (("--edge-port", "9090", "--domain", "apps.test"), "http://split.apps.test:9090"),
    ],
)
def test_split_control_plane_app_urls_carry_the_edges_port(
    control_home: Path, tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    ctl = Control(control_home, *args)
    try:
        assert f"Apps:        {expected.replace('split', '{app}')}" in ctl.text, ctl.text
        url = f"http://127.0.0.1:{ctl.port}"
        token = (control_home / "admin-token").read_text().strip()
        eventually(lambda: httpx.get(url + "/v1/health").status_code == 200, 30, "the API")
        post_source(url, token, "split", tmp_path)
        view = httpx.get(f"{url}/v1/apps/split", headers={"authorization": f"Bearer {token}"})
        assert view.json()["url"] == expected
    finally:
        ctl.stop()


def test_node_join_takes_its_token_from_a_file_stdin_or_the_environment(
    control_home: Path, tmp_path: Path
) -> None:
    ctl = Control(control_home)
    url = f"http://127.0.0.1:{ctl.port}"
    admin = {"authorization": f"Bearer {(control_home / 'admin-token').read_text().strip()}"}
    procs: list[subprocess.Popen[str]] = []

    def join(name: str, how: str) -> None:
        token = httpx.post(
            url + "/v1/tokens", headers=admin, json={"kind": "join", "uses": 1}
        ).json()["token"]
        argv = [
            sys.executable,
            "-m",
            "foundry",
            "node",
            "join",
            url,
            "--home",
            str(tmp_path / name),
            "--tier",
            "plain",
            "--name",
            name,
            "--memory",
            "256M",
        ]
        env = clean_env()
        if how == "file":
            (tmp_path / "token-file").write_text(token + "\n")
            argv += ["--token-file", str(tmp_path / "token-file")]
        elif how == "stdin":
            argv += ["--token-file", "-"]
        else:
            env["FOUNDRY_JOIN_TOKEN"] = token
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        procs.append(proc)
        assert proc.stdin is not None
        proc.stdin.write(token + "\n" if how == "stdin" else "")
        proc.stdin.close()
        assert not any(token in a for a in argv)  # not on any command line (`ps`)

    try:
        eventually(lambda: httpx.get(url + "/v1/health").status_code == 200, 30, "the API")
        for how in ("file", "stdin", "env"):
            join(f"by-{how}", how)
        eventually(
            lambda: (
                {n["name"] for n in httpx.get(url + "/v1/nodes", headers=admin).json()["nodes"]}
                >= {"by-file", "by-stdin", "by-env"}
            ),
            60,
            "the three nodes to join",
        )
        old_way = foundry(
            "node",
            "join",
            url,
            "--token",
            "fdy_bad",
            "--home",
            str(tmp_path / "old"),
            "--tier",
            "plain",
            timeout=120,
        )
        assert "warning: --token is visible to every user in `ps`" in old_way.stderr
        missing = foundry(
            "node",
            "join",
            url,
            "--token-file",
            str(tmp_path / "nope"),
            "--home",
            str(tmp_path / "none"),
        )
        assert missing.returncode == 1
        assert "--token-file" in missing.stderr
        assert len(missing.stderr.splitlines()) == 1
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        ctl.stop()


# --- habits of Heroku and cf users ------------------------------------------------------
def test_version() -> None:
    shown = foundry("--version")
    assert shown.returncode == 0
    assert shown.stdout.strip().startswith("foundry 0.")


@pytest.fixture(scope="module")
def habits(platform: Platform) -> str:
    platform.cli("push", str(ROOT / "tests" / "apps" / "tiny-web"), "--name", "habits", "-i", "2")
    return "habits"


def test_open_prints_the_url_without_a_browser(platform: Platform, habits: str) -> None:
    shown = platform.cli("open", habits)
    assert shown.stdout.strip() == f"http://{habits}.localhost:{platform.http_port}"
    worker = platform.cli("open", "no-such-app", check=False)
    assert worker.returncode == 1
    assert len(worker.stderr.splitlines()) == 1


def test_logs_tail_follows_and_json_is_one_object_per_line(platform: Platform, habits: str) -> None:
    lines = platform.cli("logs", habits, "--json", "-n", "20").stdout.splitlines()
    assert len(lines) >= 2
    assert all(isinstance(json.loads(line), dict) for line in lines)
    with subprocess.Popen(
        [sys.executable, "-m", "foundry", "logs", habits, "--tail"],
        cwd=ROOT,
        env=platform.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as tail:
        time.sleep(3)  # the check itself: a follower is still running after a while
        assert tail.poll() is None, tail.communicate()  # still following
        tail.terminate()
        out, _ = tail.communicate(timeout=10)
    assert "[build]" in out or "[app/web." in out, out


def test_restart_one_instance_leaves_the_others_alone(platform: Platform, habits: str) -> None:
    def ids() -> dict[int, str]:
        view = json.loads(platform.cli("app", habits, "--json").stdout)
        return {
            i["index"]: i["id"]
            for i in view["instances"]
            if i["state"] == "RUNNING" and i["process"] == "web"
        }

    before = eventually(
        lambda: (lambda r: r if len(r) == 2 else None)(ids()), 60, "two running instances"
    )
    platform.cli("restart", habits, "-i", "1")
    after = eventually(
        lambda: (lambda r: r if len(r) == 2 and r[1] != before[1] else None)(ids()),
        60,
        "instance 1 replaced",
    )
    assert after[0] == before[0]
    assert platform.cli("restart", habits, "-i", "7", check=False).returncode == 1


def test_events_limit(platform: Platform, habits: str) -> None:
    every = json.loads(platform.cli("events", habits, "--json").stdout)
    assert len(every) > 2
    newest = json.loads(platform.cli("events", habits, "--json", "--limit", "2").stdout)
    assert newest == every[-2:]


def test_delete_asks_unless_forced(platform: Platform, tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(EXAMPLES / "static-site", site)
    platform.cli("push", str(site), "--name", "doomed-site", "--no-wait")
    refused = platform.cli("delete", "doomed-site", check=False)
    assert refused.returncode == 1
    assert len(refused.stderr.splitlines()) == 1
    assert "-f" in refused.stderr
    platform.cli("app", "doomed-site")  # still there
    master, slave = pty.openpty()  # a terminal: the user answers "n"
    try:
        os.write(master, b"n\n")
        declined = subprocess.run(
            [sys.executable, "-m", "foundry", "delete", "doomed-site"],
            cwd=ROOT,
            env=platform.env,
            stdin=slave,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(slave)
        os.close(master)
    assert declined.returncode == 1
    assert "not deleted" in declined.stderr
    platform.cli("app", "doomed-site")
    platform.cli("delete", "doomed-site", "-f")
    assert platform.cli("app", "doomed-site", check=False).returncode == 1
