"""Time to run `python3 -c pass` in each jail tier against no jail, in one run.

    python benchmarks/jail_start.py [--runs N]

Each round runs every variant once (interleaved, so drift hits all alike); the table
shows medians of N rounds: start-to-exit (jail set-up included) and the clean-up
after (`Jailed.close`: kill, cgroup removal). Tiers this machine cannot offer are
skipped. Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.jail import TIERS, Jailer, JailSpec, choose_tier, make_jailer, probe

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
ARGV = ("python3", "-c", "pass")


async def bare() -> tuple[float, float]:
    began = time.perf_counter()
    proc = await trio.lowlevel.open_process(list(ARGV), env=ENV, stdin=subprocess.DEVNULL)
    await proc.wait()
    return time.perf_counter() - began, 0.0


async def jailed(jailer: Jailer, app: Path, n: int) -> tuple[float, float]:
    spec = JailSpec(f"bench-{jailer.tier}-{n}", ARGV, ENV, app, 256)
    began = time.perf_counter()
    j = await jailer.spawn(spec)
    assert j.proc.stdout is not None
    async for _ in j.proc.stdout:
        pass
    code = await j.proc.wait()
    ran = time.perf_counter() - began
    await j.close()
    assert code == 0, f"{jailer.tier}: exit {code}"
    return ran, time.perf_counter() - began - ran


async def main(runs: int) -> None:
    best = choose_tier(probe()[0]).tier
    tiers = [t for t in TIERS if TIERS.index(t) >= TIERS.index(best)]
    jailers = {t: make_jailer(t, f"benchmark-{t}") for t in tiers}
    times: dict[str, list[tuple[float, float]]] = {"none": [], **{t: [] for t in tiers}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(runs):
            times["none"].append(await bare())
            for t in tiers:
                app = Path(tmp) / f"{t}-{n}"
                app.mkdir()
                times[t].append(await jailed(jailers[t], app, n))
    base = statistics.median(r for r, _ in times["none"])
    print(f"python3 -c pass, median of {runs} runs (best tier here: {best})")
    print(f"{'variant':<10}{'start-to-exit':>15}{'vs none':>10}{'clean-up':>11}")
    for name, samples in times.items():
        ran = statistics.median(r for r, _ in samples)
        clean = statistics.median(c for _, c in samples)
        print(f"{name:<10}{ran * 1000:>12.1f} ms{ran / base:>9.2f}x{clean * 1000:>8.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    logging.getLogger("foundry.node").setLevel(logging.ERROR)  # the tier warnings are expected
    trio.run(main, parser.parse_args().runs)
