"""Density: N tiny idle apps on one `foundry up` node, on the `full` and the `plain` tier.

Each app is `web: python3 -m http.server $PORT`, pushed one after another with the real
CLI (`foundry push`, which waits until the instance runs). Reported per tier:

* push time of the last app against the first (target <= 1.5x; the median of the last
  five against the first five is shown too, being less noisy on a shared machine);
* the node agent's CPU while every app sits idle for `--idle` seconds (target < 5 % of
  one core), and during the pushes;
* the resident memory of each role (control, node agent, edge);
* false crashes: restarts and `crash` events summed over every app (target 0), and how
  many apps answer 200 through the edge at the end.

`--compare-ref REF` runs the same on REF's code (checked out into a temporary git
worktree) with `--compare-apps` apps, so the growth of the old code shows in the same
run without spending an hour on it.

    python benchmarks/density.py [--apps 100] [--tiers full,plain] [--compare-ref main]

Measured (2 shared, busy cores; --compare-ref main --compare-apps 20):
    full, 100 apps:  last/1st 0.73x (5/5 1.07x), idle 0.8 %, rss 74/56/44 MiB, 0 crashes
    plain, 100 apps: last/1st 0.76x (5/5 1.06x), idle 3.7 %, rss 74/55/44 MiB, 0 crashes
    main, plain, 20: last/1st 13.9x (5/5 7.2x), idle 99.9 % of a core
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, Foundry, rss_mib

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Result:
    label: str
    apps: int
    pushes: list[float]  # seconds per push, in order; failed pushes are not in it
    failed: int
    idle_cpu: float  # node agent, fraction of one core
    push_cpu: float
    rss: dict[str, float]
    restarts: int
    crash_events: int
    answering: int

    @property
    def ratio(self) -> float:
        return self.pushes[-1] / self.pushes[0]

    @property
    def ratio5(self) -> float:
        return statistics.median(self.pushes[-5:]) / statistics.median(self.pushes[:5])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def make_app(parent: Path) -> Path:
    app = parent / "idle-app"
    app.mkdir()
    (app / "Procfile").write_text("web: python3 -m http.server $PORT\n")
    return app


def false_crashes(f: Foundry, names: list[str]) -> tuple[int, int, int]:
    """(restarts, crash events, apps answering 200 through the edge) over `names`."""
    token = (f.home / "admin-token").read_text().strip()
    restarts = crashes = answering = 0
    with httpx.Client(
        base_url=f"http://127.0.0.1:{f.api_port}",
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    ) as api:
        for name in names:
            view = api.get(f"/v1/apps/{name}").json()
            restarts += sum(int(i["restarts"]) for i in view["instances"])
            events = api.get(f"/v1/apps/{name}/events", params={"limit": 1000}).json()["events"]
            crashes += sum(1 for e in events if e["kind"] == "crash")
            with contextlib.suppress(httpx.HTTPError):
                answering += f.get(name).status_code == 200
    return restarts, crashes, answering


def run(label: str, root: Path, tier: str, apps: int, idle: float, memory: str) -> Result:
    print(f"[{label}] {apps} apps, tier {tier}, code from {root}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="density-app-") as tmp,
        Foundry(root, {"FOUNDRY_JAIL_TIER": tier}) as f,
    ):
        app = make_app(Path(tmp))
        node = f.role_pids()["node"]
        names, pushes, failed = [], [], 0
        began, cpu_before = time.monotonic(), cpu_seconds(node)
        for n in range(apps):
            name = f"idle-{n:03d}"
            start = time.monotonic()
            try:
                f.cli("push", str(app), "--name", name, "--memory", memory)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                failed += 1
                why = str(e).strip().splitlines()[-1:] or ["?"]
                print(f"  push {n + 1} failed: {why[0][:200]}", flush=True)
                continue
            names.append(name)
            pushes.append(time.monotonic() - start)
            if n == 0 or (n + 1) % 10 == 0 or n == apps - 1:
                print(f"  push {n + 1:3d}: {pushes[-1]:6.2f} s", flush=True)
        push_cpu = (cpu_seconds(node) - cpu_before) / (time.monotonic() - began)
        time.sleep(5)  # let the last rollout's heartbeats settle
        cpu_before, idle_began = cpu_seconds(node), time.monotonic()
        time.sleep(idle)
        idle_cpu = (cpu_seconds(node) - cpu_before) / (time.monotonic() - idle_began)
        rss = {role: rss_mib(pid) for role, pid in sorted(f.role_pids().items())}
        restarts, crashes, answering = false_crashes(f, names)
    return Result(
        label, apps, pushes, failed, idle_cpu, push_cpu, rss, restarts, crashes, answering
    )


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """`ref` of this repository in a temporary git worktree, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="density-ref-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref],
            check=True,
            capture_output=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )


def report(results: list[Result]) -> None:
    print("\ndensity: tiny idle apps pushed one after another to one node")
    head = (
        f"{'run':<16}{'apps':>5}{'1st s':>7}{'last s':>8}{'last/1st':>9}{'5/5':>6}"
        f"{'idle cpu':>9}{'push cpu':>9}{'rss c/n/e MiB':>16}{'restarts':>9}{'crashes':>8}"
        f"{'up':>5}{'failed':>7}"
    )
    print(head)
    for r in results:
        rss = "/".join(f"{r.rss.get(role, 0):.0f}" for role in ("control", "node", "edge"))
        print(
            f"{r.label:<16}{r.apps:>5}{r.pushes[0]:>7.2f}{r.pushes[-1]:>8.2f}"
            f"{r.ratio:>8.2f}x{r.ratio5:>5.2f}x{r.idle_cpu:>8.1%}{r.push_cpu:>9.1%}"
            f"{rss:>16}{r.restarts:>9}{r.crash_events:>8}{r.answering:>5}{r.failed:>7}"
        )
    print(
        "targets: last/1st <= 1.5x, idle cpu < 5 % of a core, restarts = crashes = 0, "
        "every app answering"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--tiers", default="full,plain", help="comma-separated jail tiers")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measured")
    parser.add_argument("--compare-ref", help="also run this git ref's code (e.g. main)")
    parser.add_argument("--compare-apps", type=int, default=30, help="apps for --compare-ref")
    parser.add_argument(
        "--memory", default="64M", help="each app's memory (100 x the 256M default > a laptop)"
    )
    args = parser.parse_args()
    tiers = [t for t in args.tiers.split(",") if t]
    results = []
    for tier in tiers:
        results.append(run(f"{tier} (this)", ROOT, tier, args.apps, args.idle, args.memory))
    if args.compare_ref:
        with checkout(args.compare_ref) as tree:
            for tier in tiers:
                label = f"{tier} ({args.compare_ref})"
                results.append(run(label, tree, tier, args.compare_apps, args.idle, args.memory))
    report(results)


if __name__ == "__main__":
    main()
