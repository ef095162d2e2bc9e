"""What the jail's seccomp filter costs: the same jail tier with and without it.

    python benchmarks/jail_seccomp.py [--runs N]

Two workloads, each run in the best jail tier here with the default filter and with
none, interleaved so drift hits both alike; medians of N runs:
* start: `python3 -c pass`, start to exit (the filter is loaded by bwrap before exec);
* syscalls: 200,000 `getppid` and 200,000 one-byte `read`s of /dev/zero timed inside the
  jail in CPU time (less noisy than wall time on a shared machine); each call passes the
  whole filter, so the difference is the filter's cost per allowed call.
Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node import seccomp
from node.jail import PLAIN, Jailer, JailSpec, choose_tier, make_jailer, probe

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
CALLS = 200_000
LOOP = f"""
import os, time
fd = os.open("/dev/zero", os.O_RDONLY)
began = time.process_time()
for _ in range({CALLS}):
    os.getppid()
    os.read(fd, 1)
print(time.process_time() - began)
"""
WORKLOADS = {
    "start": ("python3", "-c", "pass"),
    "syscalls": ("python3", "-c", LOOP),
}


async def timed(jailer: Jailer, argv: tuple[str, ...], app: Path) -> float:
    """Wall time from spawn to exit, or the CPU time the workload printed."""
    spec = JailSpec(f"bench-seccomp-{app.name}", argv, ENV, app, 256)
    began = time.perf_counter()
    j = await jailer.spawn(spec)
    assert j.proc.stdout is not None
    out = b""
    async for chunk in j.proc.stdout:
        out += chunk
    code = await j.proc.wait()
    ran = time.perf_counter() - began
    await j.close()
    assert code == 0, f"exit {code}: {out!r}"
    return float(out) if out.strip() else ran


async def main(runs: int) -> None:
    tier = choose_tier(probe()[0]).tier
    if tier == PLAIN:
        sys.exit("needs a jail tier (bubblewrap): the plain tier has no filter")
    with_filter = make_jailer(tier, "benchmark-seccomp")
    if with_filter.seccomp.program is None:
        sys.exit(f"no filter on this machine: {with_filter.seccomp.summary}")
    without = dataclasses.replace(with_filter, seccomp=seccomp.Filter(None, "none: benchmark"))
    variants = {"filter": with_filter, "none": without}
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(runs):
            for work, argv in WORKLOADS.items():
                for name, jailer in variants.items():
                    app = Path(tmp) / f"{work}-{name}-{n}"
                    app.mkdir()
                    times.setdefault((work, name), []).append(await timed(jailer, argv, app))
    print(f"{tier} tier, {with_filter.seccomp.summary}, median of {runs} runs")
    print(f"{'workload':<10}{'no filter':>12}{'filter':>12}{'difference':>13}")
    for work in WORKLOADS:
        bare = statistics.median(times[(work, "none")])
        filt = statistics.median(times[(work, "filter")])
        print(
            f"{work:<10}{bare * 1000:>9.1f} ms{filt * 1000:>9.1f} ms"
            f"{(filt - bare) * 1000:>+10.1f} ms"
        )
    extra = statistics.median(times[("syscalls", "filter")]) - statistics.median(
        times[("syscalls", "none")]
    )
    print(f"per passing syscall: {extra / (2 * CALLS) * 1e9:+.0f} ns")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    logging.getLogger("foundry.node").setLevel(logging.ERROR)
    trio.run(main, parser.parse_args().runs)
