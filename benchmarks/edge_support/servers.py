"""The processes the edge benchmark runs: nginx (backend and proxy), the edge, a route
server standing in for the control plane, and a raw websocket echo backend."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


NGINX_BACKEND = """
server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    access_log off;
    keepalive_requests 1000000;
    location / {{ return 200 "hello from the backend\\n"; }}
}}
"""

NGINX_PROXY = """
upstream app {{ server 127.0.0.1:{upstream}; keepalive 256; }}
upstream ws {{ server 127.0.0.1:{ws_upstream}; }}
server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    access_log off;
    keepalive_requests 1000000;
    location / {{
        proxy_pass http://app;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
    location /ws {{
        proxy_pass http://ws;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 3600s;
    }}
}}
"""

NGINX_MAIN = """
worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    {server}
}}
"""


def start_nginx(
    prefix: Path, *, backend: int = 0, proxy: int = 0, upstream: int = 0, ws_upstream: int = 0
) -> subprocess.Popen[bytes]:
    """nginx as the one-worker backend (`backend=`) or as a proxy with workers = cores."""
    prefix.mkdir(parents=True)
    if backend:
        server, workers = NGINX_BACKEND.format(port=backend), 1
    else:
        server = NGINX_PROXY.format(port=proxy, upstream=upstream, ws_upstream=ws_upstream)
        workers = os.cpu_count() or 1
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_MAIN.format(workers=workers, prefix=prefix, server=server))
    return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(prefix)])


EDGE_SCRIPT = """
import logging, sys
level = logging.INFO if sys.argv[4] == "1" else logging.WARNING
logging.basicConfig(level=level, filename=sys.argv[3], format="%(message)s")
from edge.main import run
from edge.config import EdgeConfig
run(EdgeConfig(host="127.0.0.1", port=int(sys.argv[1]), control_url=sys.argv[2], token=None,
               workers=int(sys.argv[5])))
"""


def start_edge(
    port: int, control_url: str, workers: int, log: Path, *, access_log: bool, root: Path = ROOT
) -> subprocess.Popen[bytes]:
    """Foundry's edge from the tree at `root` with `workers` processes, its log in `log`."""
    command = [
        sys.executable,
        "-c",
        EDGE_SCRIPT,
        str(port),
        control_url,
        str(log),
        "1" if access_log else "0",
        str(workers),
    ]
    return subprocess.Popen(command, cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin"})


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants now (an edge and its worker processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes `pids` have used so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


class RouteServer(ThreadingHTTPServer):
    daemon_threads = True
    table: bytes = b""
    etag = "bench-1"

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _RouteHandler(BaseHTTPRequestHandler):
    server: RouteServer

    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        if query.get("etag") == [self.server.etag]:
            time.sleep(float(query.get("wait", ["25"])[0]))  # long-poll: nothing changes
        body = self.server.table
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        """The edge's metrics reports (and anything else posted): read and accepted."""
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def start_route_server(host: str, backend: int, ws_backend: int) -> RouteServer:
    """A stand-in control plane serving one route table on GET /v1/routes."""
    server = RouteServer(("127.0.0.1", 0), _RouteHandler)
    routes = [
        {
            "host": host,
            "path": "/",
            "app": "bench",
            "backends": [{"address": f"127.0.0.1:{backend}", "instance": "bench-web-0"}],
        },
        {
            "host": host,
            "path": "/ws",
            "app": "bench",
            "backends": [{"address": f"127.0.0.1:{ws_backend}", "instance": "bench-ws-0"}],
        },
    ]
    server.table = json.dumps({"etag": server.etag, "routes": routes}).encode()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_bare_trio(port: int, backend: int, workers: int) -> subprocess.Popen[bytes]:
    """The bare trio proxy (`edge_support.bare_trio`) in front of `backend`."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.edge_support.bare_trio",
        str(port),
        str(backend),
        str(workers),
    ]
    return subprocess.Popen(command, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})


def start_ws_echo(port: int) -> subprocess.Popen[bytes]:
    """The raw websocket echo backend (`edge_support.wsecho`)."""
    command = [sys.executable, "-m", "benchmarks.edge_support.wsecho", str(port)]
    return subprocess.Popen(command, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
