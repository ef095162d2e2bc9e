"""Reports over HTTP what a Foundry app can see from inside its jail.

GET /?read=PATH&write=PATH... -> JSON: uid, gid, cwd, the processes visible in /proc
(pid and command line), and for each PATH whether reading / writing it worked;
with &userns=1 also what `unshare -Ur id` printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer


def can_read(path: str) -> bool:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
        return os.path.exists(path)
    except OSError:
        return False


def can_write(path: str) -> bool:
    target = os.path.join(path, ".inspector-probe") if os.path.isdir(path) else path
    try:
        with open(target, "w") as f:
            f.write("x")
        os.unlink(target)
        return True
    except OSError:
        return False


def processes() -> list[list[int | str]]:
    seen: list[list[int | str]] = []
    for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        seen.append([pid, cmd])
    return seen


def userns() -> dict[str, int | str]:
    done = subprocess.run(["unshare", "-Ur", "id", "-u"], capture_output=True, text=True)
    return {"exit": done.returncode, "output": (done.stdout + done.stderr).strip()}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        body = json.dumps(
            {
                "uid": os.getuid(),
                "gid": os.getgid(),
                "cwd": os.getcwd(),
                "home": os.environ.get("HOME"),
                "processes": processes(),
                "read": {p: can_read(p) for p in query.get("read", [])},
                "write": {p: can_write(p) for p in query.get("write", [])},
                "userns": userns() if query.get("userns") else None,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
