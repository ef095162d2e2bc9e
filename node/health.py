"""Health checks of an instance: is it ready, is it still alive?

`port`: the port accepts a TCP connection. `http:/path`: a GET of the path answers
2xx within the timeout (default 1 s). `process`: the process being alive is enough
(the supervisor knows that already). A check never raises: it answers True or
False and, when False, why.
"""

from __future__ import annotations

import trio

TIMEOUT = 1.0


async def check(kind: str, host: str, port: int, timeout: float = TIMEOUT) -> tuple[bool, str]:
    """Run one check; (healthy?, reason when not)."""
    if kind == "process":
        return True, ""
    if kind.startswith("http:"):
        return await _http(host, port, kind[len("http:") :] or "/", timeout)
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as e:
            return False, f"port {port} refused connections ({e.strerror or e})"
        await stream.aclose()
        return True, ""
    return False, f"port {port} did not accept a connection within {timeout:.0f} s"


async def _http(host: str, port: int, path: str, timeout: float) -> tuple[bool, str]:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: foundry-health\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(request)
                head = b""
                while b"\r\n" not in head and len(head) < 4096:
                    chunk = await stream.receive_some(1024)
                    if not chunk:
                        break
                    head += chunk
        except OSError as e:
            return False, f"GET {path} failed ({e.strerror or e})"
        line = head.split(b"\r\n", 1)[0]
        status = line.split(b" ")
        if len(status) >= 2 and status[1].isdigit() and 200 <= int(status[1]) < 300:
            return True, ""
        return False, f"GET {path} answered {line.decode(errors='replace')!r}"
    return False, f"GET {path} did not answer within {timeout:.0f} s"
