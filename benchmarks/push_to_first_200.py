"""Seconds from `foundry push examples/hello-python` to the first 200 of the new release
through the edge: cold (a new app, empty build cache) and warm (the same app again),
each the median of N runs; and the resident memory of the three roles when idle.

    python benchmarks/push_to_first_200.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, Foundry, rss_mib

EXAMPLE = str(ROOT / "examples" / "hello-python")


def timed_push(f: Foundry, app: str, marker: str) -> float:
    began = time.monotonic()
    f.cli("push", EXAMPLE, "--name", app, "-e", f"GREETING={marker}")
    while True:
        r = f.get(app)
        if r.status_code == 200 and r.text.startswith(marker):
            return time.monotonic() - began
        if time.monotonic() - began > 120:
            raise RuntimeError(f"{app} never answered with {marker}")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    with Foundry() as f:
        time.sleep(3)
        idle = {role: rss_mib(pid) for role, pid in sorted(f.role_pids().items())}
        cold = [timed_push(f, f"cold-{n}", f"cold{n}") for n in range(runs)]
        warm = [timed_push(f, "cold-0", f"warm{n}") for n in range(runs)]
    print(f"push -> first 200 through the edge, median of {runs}:")
    print(
        f"  cold (new app, empty cache): {statistics.median(cold):.2f} s  "
        f"(runs: {', '.join(f'{x:.2f}' for x in cold)})"
    )
    print(
        f"  warm (same app again):       {statistics.median(warm):.2f} s  "
        f"(runs: {', '.join(f'{x:.2f}' for x in warm)})"
    )
    print("idle resident memory: " + ", ".join(f"{r} {m:.0f} MiB" for r, m in idle.items()))


if __name__ == "__main__":
    main()
