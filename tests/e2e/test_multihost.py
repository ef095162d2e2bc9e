"""Several hosts on one machine: network namespaces joined by veth pairs to a bridge, with
addresses in a private range that exists only inside them. The control plane and the
edge run in one namespace, a node agent in each of two others; an app's two instances
land on both nodes; one node dies (its agent and its instances) under load, and its
instance comes back on the other node."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.store import Store
from tests.e2e.conftest import ROOT, eventually

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
    ),
]
APP = ROOT / "tests" / "apps" / "tiny-web"
SUBNET = "10.231.77"
LOAD = """
import json, sys, time, httpx
ok, failed, deadline = 0, 0, time.monotonic() + float(sys.argv[1])
with httpx.Client(headers={"host": "multi.localhost"}, timeout=5) as c:
    while time.monotonic() < deadline:
        try:
            ok += c.get("http://127.0.0.1:8080/").status_code == 200
        except httpx.HTTPError:
            failed += 1
            continue
        if ok == 1:
            print("flowing", flush=True)   # the test kills a host only once load flows
        time.sleep(0.01)                   # pacing: ~100 requests a second
print(json.dumps({"ok": ok, "failed": failed}))
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


class Hosts:
    """Namespaces `<tag>-c` (control + edge), `<tag>-n1`, `<tag>-n2` on one bridge."""

    def __init__(self, home: Path) -> None:
        self.tag = "fdy" + uuid.uuid4().hex[:5]
        self.home = home
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for var in ("FOUNDRY_API", "FOUNDRY_TOKEN", "FOUNDRY_HOME"):
            self.env.pop(var, None)

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def create(self) -> None:
        c = self.ns("c")
        sh("ip", "netns", "add", c)
        sh("ip", "-n", c, "link", "set", "lo", "up")
        sh("ip", "-n", c, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", c, "addr", "add", f"{SUBNET}.1/24", "dev", "br0")
        sh("ip", "-n", c, "link", "set", "br0", "up")
        for n in (1, 2):
            node = self.ns(f"n{n}")
            sh("ip", "netns", "add", node)
            sh("ip", "-n", node, "link", "set", "lo", "up")
            sh(
                "ip",
                "link",
                "add",
                f"{self.tag}h{n}",
                "netns",
                c,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                node,
            )
            sh("ip", "-n", c, "link", "set", f"{self.tag}h{n}", "master", "br0", "up")
            sh("ip", "-n", node, "addr", "add", f"{SUBNET}.{10 + n}/24", "dev", "eth0")
            sh("ip", "-n", node, "link", "set", "eth0", "up")

    def destroy(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for name in ("n1", "n2", "c"):
            subprocess.run(["ip", "netns", "del", self.ns(name)], capture_output=True)

    def start(self, key: str, ns: str, *args: str, **env: str) -> None:
        log = open(self.home / f"{key}.log", "wb")  # noqa: SIM115 (the child keeps it)
        self.procs[key] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(ns), sys.executable, "-m", "foundry", *args],
            env={**self.env, **env},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def run(self, ns: str, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(ns), *argv],
            env={**self.env, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    h = Hosts(tmp_path)
    try:
        h.create()
        yield h
    finally:
        h.destroy()


def test_a_lost_hosts_instance_comes_back_on_the_other_host(hosts: Hosts, tmp_path: Path) -> None:
    (tmp_path / "control").mkdir()
    store = Store(tmp_path / "control" / "foundry.db")
    _, admin = store.create_token("admin")
    _, edge = store.create_token("edge")
    _, join = store.create_token("join", uses=2)
    store.close()
    hosts.start(
        "control", "c", "control", "--home", str(tmp_path / "control"), "--listen", "0.0.0.0:7070"
    )
    hosts.start(
        "edge",
        "c",
        "edge",
        "--listen",
        "127.0.0.1:8080",
        "--control",
        "http://127.0.0.1:7070",
        FOUNDRY_EDGE_TOKEN=edge,
    )
    for n in (1, 2):
        hosts.start(
            f"n{n}",
            f"n{n}",
            "node",
            "join",
            f"http://{SUBNET}.1:7070",
            "--home",
            str(tmp_path / f"node{n}"),
            "--name",
            f"n{n}",
            "--advertise",
            f"{SUBNET}.{10 + n}",
            FOUNDRY_JOIN_TOKEN=join,
        )
    cli_env = {"FOUNDRY_API": "http://127.0.0.1:7070", "FOUNDRY_TOKEN": admin}

    def cli(*args: str) -> Any:
        result = hosts.run("c", sys.executable, "-m", "foundry", *args, **cli_env)
        assert result.returncode == 0, result.stderr + "".join(
            (tmp_path / f"{k}.log").read_text()[-2000:] for k in hosts.procs
        )
        return json.loads(result.stdout) if "--json" in args else result.stdout

    eventually(
        lambda: sum(n["state"] == "ready" for n in cli("nodes", "--json")) == 2,
        60,
        "both nodes ready",
    )
    cli("push", str(APP), "--name", "multi", "-i", "2")
    placed = {i["node"] for i in cli("app", "multi", "--json")["instances"]}
    assert len(placed) == 2  # one instance on each host
    names = {n["id"]: n["name"] for n in cli("nodes", "--json")}
    load = subprocess.Popen(
        ["ip", "netns", "exec", hosts.ns("c"), sys.executable, "-c", LOAD, "40"],
        env=hosts.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert load.stdout is not None
        # The load's first answer (or, if none ever comes, its final count at the end).
        assert load.stdout.readline() == "flowing\n", "no request went through the edge"
        began = time.monotonic()
        os.killpg(hosts.procs["n2"].pid, signal.SIGKILL)  # the host dies: agent first
        for pid in subprocess.run(
            ["ip", "netns", "pids", hosts.ns("n2")], capture_output=True, text=True
        ).stdout.split():
            with contextlib.suppress(ProcessLookupError):  # ...and everything it ran
                os.kill(int(pid), signal.SIGKILL)

        def back_on_n1() -> bool:
            view = cli("app", "multi", "--json")
            running = [i for i in view["instances"] if i["state"] == "RUNNING"]
            return len(running) == 2 and {names[i["node"]] for i in running} == {"n1"}

        eventually(back_on_n1, 45, "both instances on n1")
        took = time.monotonic() - began
        out, _ = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
            load.communicate()
    counts = json.loads(out)
    print(
        f"\nmeasured: rescheduled after {took:.1f} s; requests ok={counts['ok']} "
        f"failed={counts['failed']}"
    )
    assert took < 15 + 10  # node TTL plus a few seconds
    assert counts["ok"] > 100
    states = {n["name"]: n["state"] for n in cli("nodes", "--json")}
    assert states == {"n1": "ready", "n2": "lost"}
