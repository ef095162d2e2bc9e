"""Health checks of an instance: is it ready, is it still alive?

`port`: the port accepts a TCP connection. `http:/path`: a GET of the path answers
2xx within the timeout (default 1 s). `process`: the process being alive is enough
(the supervisor knows that already). A check never raises: it answers True or
False and, when False, why.

The timeout measures the instance, never the node: each check runs as blocking socket
calls in a worker thread of its own, with the deadline on the socket. Measured on the
event loop instead (`move_on_after` around trio's connect), the timeout also counted the
time the loop spent on other work before it came back to the check, so a busy agent
with a hundred instances declared healthy apps dead ("did not accept a connection
within 1 s") and restarted them. A thread costs a few tens of microseconds and a check
runs every few seconds per instance at most; retrying on the loop would only make a
false failure less likely, not impossible. Checks have their own thread limiter, so a
burst of them against silent ports (each holding its thread up to the timeout) never
delays the node's other thread work (watchdog passes, droplet unpacking).
"""

from __future__ import annotations

import socket
import time

import trio

TIMEOUT = 1.0
CONCURRENT = 16  # checks in flight at once; more wait their turn (not counted in the timeout)
_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("health_limiter")


def _limiter() -> trio.CapacityLimiter:
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(CONCURRENT)
        _LIMITER.set(limiter)
        return limiter


async def check(kind: str, host: str, port: int, timeout: float = TIMEOUT) -> tuple[bool, str]:
    """Run one check; (healthy?, reason when not)."""
    if kind == "process":
        return True, ""
    path = (kind[len("http:") :] or "/") if kind.startswith("http:") else None
    # abandon_on_cancel: a stopping instance does not wait for its check; the thread ends
    # by itself within `timeout` and closes its own socket.
    return await trio.to_thread.run_sync(
        probe, host, port, path, timeout, abandon_on_cancel=True, limiter=_limiter()
    )


def probe(host: str, port: int, path: str | None, timeout: float) -> tuple[bool, str]:
    """One blocking check (a worker thread's work): a connect, then a GET when `path`."""
    deadline = time.monotonic() + timeout
    try:
        conn = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        return False, f"port {port} did not accept a connection within {timeout:g} s"
    except OSError as e:
        return False, f"port {port} refused connections ({e.strerror or e})"
    with conn:
        if path is None:
            return True, ""
        return _get(conn, host, port, path, deadline, timeout)


def _get(
    conn: socket.socket, host: str, port: int, path: str, deadline: float, timeout: float
) -> tuple[bool, str]:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: foundry-health\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    head = b""
    try:
        conn.settimeout(max(0.001, deadline - time.monotonic()))
        conn.sendall(request)
        while b"\r\n" not in head and len(head) < 4096:
            conn.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = conn.recv(1024)
            if not chunk:
                break
            head += chunk
    except TimeoutError:
        return False, f"GET {path} did not answer within {timeout:g} s"
    except OSError as e:
        return False, f"GET {path} failed ({e.strerror or e})"
    line = head.split(b"\r\n", 1)[0]
    status = line.split(b" ")
    if len(status) >= 2 and status[1].isdigit() and 200 <= int(status[1]) < 300:
        return True, ""
    return False, f"GET {path} answered {line.decode(errors='replace')!r}"
