"""Cold-start latency of a scaled-to-zero app, next to the same request warm.

Starts a real `foundry up`, pushes examples/hello-python, lets it scale to zero
(`--min 0 --max 1 --idle 2s`), then N times: waits until it is at zero (scale.web
== 0 and no instances left), times one request through the edge from sending it
to the first byte of the response (cold), then the same request again (warm).
Prints median and p95 of both, the edge's own X-Foundry-Cold-Start figure (how
long it held the request), and the control plane's last cold start.

    python benchmarks/cold_start.py [--wakes 20]
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, Foundry

APP = "hello-python"
EXAMPLE = str(ROOT / "examples" / APP)


def timed_request(port: int) -> tuple[float, bytes]:
    """Seconds from sending a GET to the first response byte, and the response head."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = f"GET / HTTP/1.1\r\nHost: {APP}.localhost\r\nConnection: close\r\n\r\n"
        began = time.perf_counter()
        sock.sendall(request.encode())
        data = sock.recv(65536)
        first_byte = time.perf_counter() - began
        while b"\r\n\r\n" not in data and (more := sock.recv(65536)):
            data += more
    head = data.partition(b"\r\n\r\n")[0]
    if not head.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"unexpected answer: {head[:200]!r}")
    return first_byte, head


def app_state(f: Foundry) -> dict[str, object]:
    return json.loads(f.cli("app", APP, "--json").stdout)  # type: ignore[no-any-return]


def at_zero(state: dict[str, object]) -> bool:
    scale = state.get("scale") or {}
    assert isinstance(scale, dict)
    return scale.get("web") == 0 and not state.get("instances")


def wait_for_zero(f: Foundry, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not at_zero(app_state(f)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{APP} did not scale to zero within {timeout:.0f} s")
        time.sleep(0.2)
    time.sleep(0.3)  # let the edge's routing table catch up with the stop


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"  {name:<28} median {statistics.median(ms):7.1f} ms   p95 {percentile(ms, 0.95):7.1f} ms"
        f"   min {min(ms):7.1f}   max {max(ms):7.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wakes", type=int, default=20)
    wakes = parser.parse_args().wakes
    cold: list[float] = []
    held: list[float] = []
    warm: list[float] = []
    control_ms: list[float] = []
    with Foundry() as f:
        f.cli("push", EXAMPLE, "--name", APP)
        f.cli("scale", APP, "--min", "0", "--max", "1", "--idle", "2s")
        for n in range(wakes):
            wait_for_zero(f)
            seconds, head = timed_request(f.http_port)
            found = re.search(rb"\r\nX-Foundry-Cold-Start: (\d+)ms", head, re.IGNORECASE)
            if found is None:
                raise RuntimeError("a request at zero got no cold-start header")
            cold.append(seconds)
            held.append(int(found.group(1)) / 1000)
            warm.append(min(timed_request(f.http_port)[0] for _ in range(3)))
            last = app_state(f).get("last_cold_start")
            if isinstance(last, int | float):
                control_ms.append(float(last))
            print(
                f"wake {n + 1:2d}: cold {seconds * 1000:7.1f} ms  (edge held {held[-1] * 1000:.0f}"
                f" ms)  warm {warm[-1] * 1000:5.1f} ms",
                flush=True,
            )
    print(f"\n{APP}, arrival at the edge -> first response byte, {wakes} wakes:")
    print(summary("cold (app at zero)", cold))
    print(summary("  of which held by the edge", held))
    print(summary("warm (best of 3 after)", warm))
    if control_ms:
        print(summary("control: wake -> RUNNING", control_ms))


if __name__ == "__main__":
    main()
