"""Foundry's edge against nginx as a reverse proxy, measured in one run on this machine.

    python benchmarks/edge.py [--duration 5] [--runs 3] [--no-install] [--compare-ref REF]

Starts one backend (nginx, one worker, a tiny 200 answer), then measures with wrk:
direct to the backend, through nginx (`proxy_pass` with upstream keepalive, workers
= cores) and through the edge (workers = cores), at 32 and 256 connections; the
median of `--runs` runs is printed with p50/p99 and the ratio edge/nginx. A fourth
target, `bare`, is the least a trio proxy can do (`edge_support/bare_trio.py`: no
parsing, routing or timeouts, workers = cores): the ceiling trio and the kernel put
on any trio proxy on this machine, so edge/bare says how much of it the edge keeps.
Then the added latency at one connection, and websocket echo messages/s through
both proxies (a raw echo backend and a Python client; the ratio is the point).

With `--compare-ref REF` (any git commit-ish: `main`, a tag, a hash), the edge of REF,
checked out into a temporary git worktree, runs beside this tree's against the same
backend, and both are measured at 1, 32 and 256 connections in alternating order:
req/s and the CPU time the edge's processes spend per request (user + system, from
/proc), with the ratio this tree / REF. CPU per request is the figure to trust on a
shared machine, where req/s moves with whatever else runs; raise `--runs` there.

nginx and wrk come from apt (`apt-get install nginx wrk`) if missing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.edge_support.servers import (
    cpu_seconds,
    free_port,
    process_tree,
    start_bare_trio,
    start_edge,
    start_nginx,
    start_route_server,
    start_ws_echo,
    wait_port,
)

CORES = os.cpu_count() or 1
HOST = "bench.localhost"
ROOT = Path(__file__).resolve().parents[1]


def ensure_tools(install: bool) -> None:
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if missing and install:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)
    elif missing:
        sys.exit(f"missing: {' '.join(missing)}")


def wrk(port: int, connections: int, duration: float) -> dict[str, float]:
    """One wrk run: req/s, p50 and p99 in ms, and how many requests were answered."""
    threads = min(connections, 2)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-H",
            f"Host: {HOST}",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} bad responses on port {port}")
    broken = re.search(r"Socket errors: .*", out)
    if broken:  # refused, reset or timed out connections make every figure meaningless
        raise RuntimeError(f"wrk on port {port}: {broken.group(0)}")
    requests = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {
        "rps": rps,
        "p50": _percentile(out, "50%"),
        "p99": _percentile(out, "99%"),
        "requests": requests,
    }


def _percentile(out: str, name: str) -> float:
    value, unit = re.search(rf"{name}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def median_run(port: int, connections: int, duration: float, runs: int) -> dict[str, float]:
    results = [wrk(port, connections, duration) for _ in range(runs)]
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def ws_rate(port: int, seconds: float) -> float:
    """Websocket echo messages/s through `port`, from the Python client."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.edge_support.wsclient", str(port), HOST, str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    return float(out.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--access-log", action="store_true", help="edge logs every request")
    parser.add_argument(
        "--compare-ref",
        metavar="REF",
        help="also run the edge of git REF and compare it with this tree's",
    )
    args = parser.parse_args()
    ensure_tools(not args.no_install)
    with (
        tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp,
        checkout(args.compare_ref, Path(tmp) / "ref") as ref_root,
    ):
        run_all(Path(tmp), args, ref_root)


@contextlib.contextmanager
def checkout(ref: str | None, path: Path) -> Iterator[Path | None]:
    """`ref` of this repository checked out at `path` (a detached git worktree, removed
    afterwards); None without a ref."""
    if ref is None:
        yield None
        return
    known = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if known.returncode != 0:
        sys.exit(f"--compare-ref: {ref!r} is not a commit of the repository at {ROOT}")
    subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "worktree",
            "add",
            "--detach",
            "--quiet",
            str(path),
            known.stdout.strip(),
        ],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False
        )


def run_all(tmp: Path, args: argparse.Namespace, ref_root: Path | None) -> None:
    backend, proxy, edge_port, bare = free_port(), free_port(), free_port(), free_port()
    ws_backend = free_port()
    procs = [start_nginx(tmp / "backend", backend=backend)]
    procs.append(start_nginx(tmp / "proxy", proxy=proxy, upstream=backend, ws_upstream=ws_backend))
    procs.append(start_ws_echo(ws_backend))
    routes = start_route_server(HOST, backend, ws_backend)
    edge = start_edge(
        edge_port,
        f"http://127.0.0.1:{routes.port}",
        CORES,
        tmp / "edge.log",
        access_log=args.access_log,
    )
    procs += [edge, start_bare_trio(bare, backend, CORES)]
    edges = {"edge": (edge_port, edge.pid)}  # name -> (port, pid)
    if ref_root is not None:
        ref_port = free_port()
        ref = start_edge(
            ref_port,
            f"http://127.0.0.1:{routes.port}",
            CORES,
            tmp / "edge-ref.log",
            access_log=args.access_log,
            root=ref_root,
        )
        procs.append(ref)
        edges[f"edge@{args.compare_ref}"] = (ref_port, ref.pid)
    try:
        for port in (backend, proxy, edge_port, ws_backend, bare, *(p for p, _ in edges.values())):
            wait_port(port)
        time.sleep(0.5)  # the edge's first route poll
        report(backend, proxy, edge_port, bare, args)
        if ref_root is not None:
            compare(edges, args)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)
        routes.shutdown()


def report(backend: int, proxy: int, edge: int, bare: int, args: argparse.Namespace) -> None:
    targets = {"direct": backend, "nginx": proxy, "edge": edge, "bare": bare}
    for port in targets.values():
        wrk(port, 32, 1.0)  # warm up pools and caches
    print(f"cores={CORES} duration={args.duration}s runs={args.runs} (median)")
    print(f"{'conns':>5} {'target':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    results: dict[tuple[int, str], dict[str, float]] = {}
    for connections in (32, 256):
        for name, port in targets.items():
            r = median_run(port, connections, args.duration, args.runs)
            results[(connections, name)] = r
            print(f"{connections:>5} {name:>7} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f}")
        edge_r, nginx_r = results[(connections, "edge")], results[(connections, "nginx")]
        print(
            f"{connections:>5} {'ratio':>7} {edge_r['rps'] / nginx_r['rps']:>9.2f} "
            f"{edge_r['p50'] / nginx_r['p50']:>8.2f} {edge_r['p99'] / nginx_r['p99']:>8.2f}"
            "  (edge/nginx)"
        )
        bare_r = results[(connections, "bare")]
        print(
            f"{connections:>5} {'ratio':>7} {bare_r['rps'] / nginx_r['rps']:>9.2f} "
            f"{'':>8} {'':>8}  (bare/nginx: the trio ceiling)"
        )
        print(
            f"{connections:>5} {'ratio':>7} {edge_r['rps'] / bare_r['rps']:>9.2f} "
            f"{'':>8} {'':>8}  (edge/bare)"
        )
    one = {
        name: median_run(targets[name], 1, args.duration, args.runs)
        for name in ("direct", "nginx", "edge")
    }
    for name in ("nginx", "edge"):
        added = (one[name]["p50"] - one["direct"]["p50"]) * 1000
        print(
            f"added latency at 1 connection, {name}: {added:.0f} us "
            f"(p50 {one[name]['p50']:.3f} ms vs direct {one['direct']['p50']:.3f} ms)"
        )
    ws = {name: ws_rate(targets[name], args.duration) for name in ("nginx", "edge")}
    print(
        f"websocket echo msgs/s: nginx {ws['nginx']:.0f}, edge {ws['edge']:.0f}, "
        f"ratio {ws['edge'] / ws['nginx']:.2f}"
    )


def compare(edges: dict[str, tuple[int, int]], args: argparse.Namespace) -> None:
    """This tree's edge against REF's: runs alternate in order; medians of `--runs`."""
    pids = {name: process_tree(pid) for name, (_, pid) in edges.items()}  # edge + workers
    (this, ref) = edges
    print(
        f"\n{this} vs {ref}: alternating runs, median of {args.runs} (CPU = user+sys of "
        "each edge's processes per request; its ratio is the median of the runs' ratios)"
    )
    print(
        f"{'conns':>5} {'req/s':>9} {'req/s ref':>9} {'ratio':>6} "
        f"{'CPU us':>8} {'CPU ref':>8} {'ratio':>6}"
    )
    for connections in (1, 32, 256):
        got: dict[str, list[tuple[float, float]]] = {name: [] for name in edges}
        for run in range(args.runs):
            for name in (this, ref) if run % 2 == 0 else (ref, this):
                before = cpu_seconds(pids[name])
                r = wrk(edges[name][0], connections, args.duration)
                got[name].append((r["rps"], (cpu_seconds(pids[name]) - before) / r["requests"]))
        rps = {name: statistics.median(g[0] for g in runs) for name, runs in got.items()}
        cpu = {name: statistics.median(g[1] for g in runs) * 1e6 for name, runs in got.items()}
        # Each run measured both back to back, so its ratio shares that moment's noise.
        paired = statistics.median(a[1] / b[1] for a, b in zip(got[this], got[ref], strict=True))
        print(
            f"{connections:>5} {rps[this]:>9.0f} {rps[ref]:>9.0f} {rps[this] / rps[ref]:>6.3f} "
            f"{cpu[this]:>8.1f} {cpu[ref]:>8.1f} {paired:>6.3f}"
        )


if __name__ == "__main__":
    main()
